"""`python -m deployer.vpn keep CONFIG BASE ATTEMPT`: the keeper of one shared tunnel."""
import sys

from deployer.vpn import keep

if len(sys.argv) != 5 or sys.argv[1] != "keep":
    sys.exit("usage: python -m deployer.vpn keep CONFIG BASE ATTEMPT_SECONDS")
sys.exit(keep(sys.argv[2], sys.argv[3], float(sys.argv[4])))
