"""The reference of targets.yaml, in Markdown, made from its JSON Schema
(which the models make): every key, its type, its default and what it
means, so the reference cannot say other than the code.
docs/reference/targets.md is this text; a test keeps it current:

    python -m deployer.config reference > docs/reference/targets.md
"""

import json
from typing import Any

# The order a reader meets them in: the file, an entry, then what an entry holds.
_ORDER = ("TargetSpec", "HostSpec", "VpnSpec", "ApacheSpec", "PackageSpec", "SharedSpec", "HealthSpec",
          "BuildSpec", "PythonSpec", "FileSpec", "VarSpec", "HookSpec", "HooksSpec", "ArtifactStoreSpec")
_NAMES = {"TargetSpec": "A target", "HostSpec": "hosts: an item", "VpnSpec": "vpn", "ApacheSpec": "apache",
          "PackageSpec": "package", "SharedSpec": "shared", "HealthSpec": "health", "VarSpec": "vars: a value",
          "HookSpec": "A hook, or a shell stage", "HooksSpec": "hooks", "BuildSpec": "build",
          "PythonSpec": "python", "FileSpec": "files: an item", "ArtifactStoreSpec": "artifact_store"}


def markdown(schema: dict) -> str:
    out = ["# Reference: targets.yaml", "",
           "Made from the models that check the file (`python -m deployer.config reference`);"
           " [How to write targets.yaml](../howto/targets.md) tells how to use them.", "",
           "## The file", "", _text(schema["description"]), "", *_table(schema), ""]
    for name in _ORDER:
        d = schema["definitions"][name]
        out += [f"## {_NAMES[name]}", "", _text(d.get("description", "")), "", *_table(d), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _table(d: dict) -> list[str]:
    required = set(d.get("required", ()))
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, p in d["properties"].items():
        default = "required" if key in required else _default(p)
        rows.append(f"| `{key}` | {_type(p)} | {default} | {_cell(p.get('description', ''))} |")
    return rows


def _type(p: dict) -> str:
    if "allOf" in p:
        return " and ".join(_type(x) for x in p["allOf"])
    if "$ref" in p:
        name = p["$ref"].rsplit("/", 1)[1]
        return f"[{_NAMES[name]}](#{_anchor(_NAMES[name])})"
    if "anyOf" in p:
        return " or ".join(dict.fromkeys(_type(x) for x in p["anyOf"]))
    if "enum" in p:
        return "one of " + ", ".join(f"`{v}`" for v in p["enum"])
    kind = p.get("type")
    if kind == "array":
        return f"list of {_type(p.get('items', {}))}"
    if kind == "object":
        return f"mapping of name to {_type(p.get('additionalProperties', {}))}"
    if kind == "integer" and "maximum" in p:
        return f"integer, {p.get('minimum', '')} to {p['maximum']}"
    if kind == "integer" and "minimum" in p:
        return f"integer, {p['minimum']} or more"
    if kind == "string" and str(p.get("pattern", "")).endswith("%)$"):
        return "percentage (25%)"
    return {"string": "string", "integer": "integer", "number": "number", "boolean": "true or false",
            "null": "null", None: "any"}.get(kind, str(kind))


def _default(p: dict) -> str:
    if "default" not in p:
        return "see meaning"
    value = p["default"]
    if value in ({}, []):
        return "empty"
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    # A table cell: `|` would end it, and <deploy_root> would read as an HTML tag.
    return _text(text).replace("|", "\\|").replace("<", "&lt;")


def _text(text: Any) -> str:
    return " ".join(str(text).split())


def _anchor(title: str) -> str:
    return "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")
