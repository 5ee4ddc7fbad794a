"""`python -m deployer.config > deployer/config/targets.schema.json`: the schema, from the models."""
from deployer.config import schema_text

print(schema_text(), end="")
