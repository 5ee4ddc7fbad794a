import sys

from deployer.cli.deploy import main

sys.exit(main())
