"""Reading targets.yaml: safe YAML 1.2, every entry merged with the defaults
and checked in full (schema.py, then build.py) before anything runs."""

import copy
import os
import re
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from deployer.config.build import Builder
from deployer.config.model import CATCH_ALL, Missing, Target, YamlFloat, YamlInt
from deployer.errors import ConfigError, UsageError


@dataclass(frozen=True)
class Targets:
    source: str
    base: Path
    entries: dict[str, dict] = field(hash=False)
    defaults: dict = field(hash=False)
    protected: tuple[tuple[str, str], ...] = ()

    def names(self) -> list[str]:
        return sorted(self.entries)

    def resolve(self, name: str) -> Target:
        """The target for a config name: its own entry or the catch-all."""
        return self._resolve(name, None)

    def resolve_for_dry_run(self, name: str) -> tuple[Target, tuple[Missing, ...]]:
        """The target as `resolve` reads it, and what this machine lacks that a
        real run would need, all of it instead of failing on the first. A
        variable that is not set stands in as `<VARIABLE: not set here>` (a
        secret's stand-in is masked like the secret); a missing file or
        source directory keeps its path, for the caller to do without."""
        missing: list[Missing] = []
        return self._resolve(name, missing), tuple(missing)

    def _resolve(self, name: str, missing: list[Missing] | None) -> Target:
        entry = name if name in self.entries else CATCH_ALL
        if entry not in self.entries:
            raise UsageError(
                f"{self.source}: no target named {name!r} and no catch-all"
                f" entry {CATCH_ALL!r}; known: {', '.join(self.names()) or 'none'}"
            )
        # Checked again (a millisecond), so that Targets holds the file's own
        # entries and defaults, as `deployer list` and `destroy` read them.
        from deployer.config.schema import validated

        spec = validated(self.source, {"targets": {entry: self.entries[entry]}}, self.defaults).targets[entry]
        builder = Builder(self.source, self.base, check_environment=True, missing=missing)
        target = builder.target(entry, spec, f"targets/{entry}")
        return replace(target, package=replace(target.package, protected=self.protected))


class _Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 booleans: only true and false.

    PyYAML follows YAML 1.1, where `on`, `off`, `yes`, `no`, `y` and `n` are
    booleans: a hook's `on: local` key would become `True:` and a var
    `COUNTRY: no` would render as False.
    """

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# YAML 1.2 has no timestamps either: `RELEASE_DATE: 2026-01-01` stays a string.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}


def _as_written(kind, construct):
    def construct_as_written(loader: yaml.SafeLoader, node: yaml.ScalarNode):
        number = kind(construct(loader, node))
        number.text = node.value
        return number
    return construct_as_written


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    # PyYAML keeps the last of two equal keys: a second `alpha:` would
    # silently replace the first target. Keys merged in with `<<: *anchor`
    # may be overridden, as YAML means them to be.
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(None, None, "a key must be a plain value", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key].start_mark.line + 1})",
                key_node.start_mark)
        seen[key] = key_node
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node))


_Loader.add_constructor("tag:yaml.org,2002:int", _as_written(YamlInt, yaml.SafeLoader.construct_yaml_int))
_Loader.add_constructor("tag:yaml.org,2002:float", _as_written(YamlFloat, yaml.SafeLoader.construct_yaml_float))
_Loader.add_constructor("tag:yaml.org,2002:map", _unique_mapping)


def load(path: str | os.PathLike) -> Targets:
    """Read and validate every entry, so a typo in one fails every deploy."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{source}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise ConfigError(source, "", f"not UTF-8 (line {line})") from None
    try:
        doc = yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise ConfigError(source, "", "not valid YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(source, "", f"not valid YAML{where}: {problem}") from None
    defaults = (doc.get("defaults") if isinstance(doc, dict) else None) or {}
    from deployer.config.schema import validated  # pydantic: only once a file is read

    spec = validated(source, doc, defaults)
    # Every entry's shape is checked now, and what its transport allows;
    # files and environment variables only for the target being deployed
    # (resolve), since a build agent has the VPN file and secrets of its own
    # target only.
    builder = Builder(source, path.resolve().parent, check_environment=False)
    named = [f for name, entry in spec.targets.items()
             for f in _files_named(builder.target(name, entry, f"targets/{name}"))]
    protected = ((str(path.resolve()), "the targets file"),
                 *((f, f"named in {path.name}") for f in sorted(set(named))))
    entries = {str(k): v or {} for k, v in doc["targets"].items()}
    return Targets(source, builder.base, entries, defaults, protected)


def _files_named(t: Target) -> list[str]:
    """The runner's files a target names: whatever it is, never packaged by default."""
    files = [t.template, *(h.identity_file for h in t.hosts if h.identity_file)]
    if t.vpn.config:
        files += [t.vpn.config, *_vpn_secret_files(t.vpn.config)]
    return files + ([t.known_hosts] if t.known_hosts else [])


# OpenVPN options that name a file holding a key or a password.
_VPN_SECRET_OPTIONS = {"auth-user-pass", "askpass", "key", "pkcs12", "secret", "tls-auth", "tls-crypt",
                       "tls-crypt-v2", "http-proxy-user-pass"}


def _vpn_secret_files(config: str) -> list[str]:
    """Files an OpenVPN config reads secrets from; a relative one may mean the
    config's folder or the directory deploy runs in, so both are listed."""
    try:
        with open(config, encoding="utf-8", errors="replace") as f:
            lines = f.read(1024 * 1024).splitlines()
    except OSError:
        return []  # this runner may not hold that target's VPN file: nothing to withhold
    out = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] in _VPN_SECRET_OPTIONS:
            name = words[1].strip("'\"")
            out += [os.path.join(os.path.dirname(config), name), os.path.abspath(name)]
    return out


def merge(base: dict, over: dict) -> dict:
    """Defaults under an entry: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    if not isinstance(over, dict):
        return over
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
