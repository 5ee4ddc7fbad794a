"""targets.yaml: read, merged with its defaults, and validated in full.

Every error names the file, the key path and what is wrong, e.g.
`targets.yaml: targets/alpha/hosts/0/port: expected an integer`, and is
raised before any side effect. Relative paths in the file are relative to
the file's own directory, so a checkout can be deployed from anywhere.

Its rooms: model (the frozen dataclasses the rest of deployer reads),
loader (YAML in, a Targets out), schema (the pydantic models that define
the file's shape and its JSON Schema; imported only once a file is read),
build (what the models cannot know: paths, the transport, this machine),
names (the words that come from outside).
"""

from deployer.config.loader import Targets, load
from deployer.config.model import (
    BUILTIN_TOKENS,
    CATCH_ALL,
    DEFAULT_PIPELINE,
    HOOK_PLACES,
    LOCAL_APACHE_CTL,
    LOCAL_HOST,
    MAX_PARALLEL,
    SCHEMA_FILE,
    Apache,
    Health,
    Hook,
    Host,
    Missing,
    Package,
    Shared,
    Target,
    Var,
    Vpn,
)

__all__ = ["BUILTIN_TOKENS", "CATCH_ALL", "DEFAULT_PIPELINE", "HOOK_PLACES", "LOCAL_APACHE_CTL", "LOCAL_HOST",
           "MAX_PARALLEL", "SCHEMA_FILE", "Apache", "Health", "Hook", "Host", "Missing", "Package", "Shared",
           "Target", "Targets", "Var", "Vpn", "json_schema", "load", "schema_text"]


def json_schema() -> dict:
    """targets.yaml's JSON Schema (schema.json_schema)."""
    from deployer.config import schema

    return schema.json_schema()


def schema_text() -> str:
    """json_schema() as the committed file holds it."""
    from deployer.config import schema

    return schema.schema_text()
