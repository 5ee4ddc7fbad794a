"""`python -m deployer.config > deployer/config/targets.schema.json`: the
schema, from the models; `python -m deployer.config reference >
docs/reference/targets.md`: the reference, from the schema."""
import sys

from deployer.config import json_schema, schema_text
from deployer.config.reference import markdown

if sys.argv[1:] == ["reference"]:
    print(markdown(json_schema()), end="")
elif sys.argv[1:]:
    sys.exit("usage: python -m deployer.config [reference]")
else:
    print(schema_text(), end="")
