"""targets.yaml: read, merged with its defaults, and validated in full.

Every error names the file, the key path and what is wrong, e.g.
`targets.yaml: targets/alpha/hosts/0/port: expected an integer`, and is
raised before any side effect. Relative paths in the file are relative to
the file's own directory, so a checkout can be deployed from anywhere.

The file's shape is defined once, by the pydantic models in _models(): they
check every entry as merged with the defaults (a mistake written under
defaults: is named there), and they give the JSON Schema editors read
(json_schema(), committed as deployer/config/targets.schema.json). What a model
cannot know is checked after, while the frozen Target is built: paths on
this machine or on the hosts, rules that depend on the transport, and, for
the one target being deployed, files and environment variables.
"""

import copy
import functools
import ipaddress
import json
import os
import posixpath
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import yaml

from deployer.config import names
from deployer.errors import ConfigError, UsageError
from deployer.quoting import words

CATCH_ALL = "*"
# Hosts at once, by default. Each host costs the runner a thread, an SSH
# connection and paramiko's own reader thread, and its CPU encrypts every
# byte for every session: past a few dozen, more at once only adds
# contention on a build agent's cores (README: "Hosts at once").
MAX_PARALLEL = 32
DEFAULT_PIPELINE = ("package", "vpn", "upload", "render", "migrate", "restart")
HOOK_PLACES = ("all", "first", "local")
BUILTIN_TOKENS = ("HOSTNAME", "DEPLOY_PATH", "CONFIG_NAME", "HTTP_PORT")
# `apache: {ctl: builtin}`: an Apache of the local target's own, on loopback
# (the script says how); run with sh, so a wheel's file mode does not matter.
LOCAL_APACHE_CTL = Path(__file__).parent.parent / "remote" / "local-apache2ctl"
# The committed JSON Schema of targets.yaml; tests/config/test_config.py keeps it
# equal to json_schema(), and `python -m deployer.config` prints that.
SCHEMA_FILE = Path(__file__).with_name("targets.schema.json")


@dataclass(frozen=True)
class Host:
    address: str
    port: int = 22
    user: str | None = None
    identity_file: str | None = None

    @property
    def name(self) -> str:
        return self.address if self.port == 22 else f"{self.address}:{self.port}"


LOCAL_HOST = Host("local")


@dataclass(frozen=True)
class Vpn:
    kind: str = "none"
    config: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class Apache:
    dir: str = "/etc/apache2"
    ctl: tuple[str, ...] = ("apache2ctl",)
    # Apache reads its configuration as root, and a vhost may hold secrets
    # (SetEnv DB_PASSWORD ...): nobody else needs to read it.
    vhost_mode: int = 0o640
    vhost_owner: str = ""
    vhost_group: str = ""
    port: int = 80  # <<HTTP_PORT>> in the template: the vhost's port, and the health check's

    @property
    def vhost_chown(self) -> str:
        """The argument to chown, or "" to leave the writing user's."""
        if self.vhost_group:
            return f"{self.vhost_owner}:{self.vhost_group}"
        return self.vhost_owner


@dataclass(frozen=True)
class Package:
    source: str = "."
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()  # paths packaged although the safe defaults withhold them
    # (path, why): the targets file and every file it names, in any target;
    # never packaged unless included by name.
    protected: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Shared:
    """What outlives a release (uploads, a SQLite file, a settings file with
    secrets): kept in <root>/<CONFIG_NAME>.shared/ on each host and linked
    into every new release at the same relative path."""

    root: str = ""  # "" until resolved: the target's deploy_root
    dirs: tuple[str, ...] = ()  # made if missing
    files: tuple[str, ...] = ()  # must exist: deployer never writes them
    group: str = ""  # the group of the directories it makes (group-writable, setgid)


@dataclass(frozen=True)
class Health:
    """Asked of every host after the reload: GET `path` with the instance's
    Host header must answer `status` within `timeout` seconds."""

    path: str
    status: int = 200
    timeout: float = 30.0
    port: int = 80


@dataclass(frozen=True)
class Var:
    value: str
    secret: bool = False
    source: str = ""  # the environment variable it was read from


@dataclass(frozen=True)
class Hook:
    """A shell snippet from targets.yaml and where it runs."""

    run: str
    on: str = "all"


@dataclass(frozen=True)
class Target:
    entry: str
    transport: str
    hosts: tuple[Host, ...]
    known_hosts: str | None
    connect_timeout: float
    step_timeout: float
    migrate_timeout: float
    parallel: int
    relay: bool
    keep_releases: int
    protected: bool  # `deployer destroy` refuses it (alpha, production)
    deploy_root: str
    vpn: Vpn
    apache: Apache
    migrate: str | None
    package: Package
    shared: Shared
    health: Health | None
    template: str
    vars: dict[str, Var] = field(hash=False)
    pipeline: tuple[str, ...]
    stages: dict[str, Hook] = field(hash=False)
    before: dict[str, tuple[Hook, ...]] = field(hash=False)
    after: dict[str, tuple[Hook, ...]] = field(hash=False)


@dataclass(frozen=True)
class Missing:
    """Something a real run needs that this machine lacks: a file, or an
    environment variable. A real run fails on the first one (exit 2); a dry
    run lists them all. `kind` says what a dry run can do without it:
    "connect" (a key, known_hosts, the VPN file: needed to reach the hosts),
    "template", "source" (the package source), "value" (of the var `var`)."""

    key: str  # the key path, as errors name it: targets/alpha/vpn/config
    problem: str
    kind: str
    var: str = ""

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


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
        spec = _validated(self.source, {"targets": {entry: self.entries[entry]}}, self.defaults).targets[entry]
        builder = _Builder(self.source, self.base, check_environment=True, missing=missing)
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


class _Int(int):
    """An integer that remembers how it was written: under vars:, `0755`,
    `12:30` and `0x1F` are the strings a template means, not 493, 750, 31."""

    text: str


class _Float(float):
    text: str


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


_Loader.add_constructor("tag:yaml.org,2002:int", _as_written(_Int, yaml.SafeLoader.construct_yaml_int))
_Loader.add_constructor("tag:yaml.org,2002:float", _as_written(_Float, yaml.SafeLoader.construct_yaml_float))
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
    spec = _validated(source, doc, defaults)
    # Every entry's shape is checked now, and what its transport allows;
    # files and environment variables only for the target being deployed
    # (resolve), since a build agent has the VPN file and secrets of its own
    # target only.
    builder = _Builder(source, path.resolve().parent, check_environment=False)
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


def _merge(base: dict, over: dict) -> dict:
    """Defaults under an entry: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    if not isinstance(over, dict):
        return over
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# -- the shape of targets.yaml ---------------------------------------------------------
#
# Each rule is written once, in _models(); where JSON Schema can say it, the
# schema says it too, made from the same models. Errors are in our words: a
# check raises _problem(...), and a type pydantic checks is wrapped in
# says(...), which rewords the errors of that value (not of its items).
#
# pydantic is imported, and the models made, on first use: that costs more
# than the rest of this module, and `deploy --help` needs none of it.


def _problem(message: str, *below: str | int) -> Exception:
    """An error in our words; `below`: the keys under the value checked that it is about."""
    from pydantic_core import PydanticCustomError

    return PydanticCustomError("deployer", message, {"below": below} if below else None)


def _anchored(pattern: str) -> str:
    # pydantic and JSON Schema both search for a pattern anywhere in the text.
    return f"^(?:{pattern})$"


def _as_written_text(value: Any) -> Any:
    """A number as YAML wrote it (0640, not 416); anything else as it is."""
    return value.text if isinstance(value, (_Int, _Float)) else value


def _non_empty(value: Any) -> str:
    return f"expected a non-empty string, got {_kind(value)}"


def _config_name(name: str) -> None:
    if name != CATCH_ALL:
        names.config_name(name)


def _var_name(name: str) -> None:
    names.token_name(name)
    if name in BUILTIN_TOKENS:
        raise UsageError(f"{name} is set by deployer and cannot be overridden")


def _stage_name(name: str) -> None:
    if name in DEFAULT_PIPELINE:
        raise UsageError("a built-in stage has this name; use hooks to run commands before or after it")


def _host_address(address: str) -> str:
    try:
        names.hostname(address)
    except UsageError:
        if not _is_ip(address):
            raise _problem(f"not a host name or IP address: {address!r}") from None
    return address


_MODE = r"0?[0-7]{3}"
_ACCOUNT = r"[a-z_][a-z0-9_.-]*\$?|[0-9]+"
_URL_PATH = r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*"


def _private_mode(value: Any) -> int:
    # Written as in chmod; an unquoted 0640 is read as YAML wrote it.
    text = _as_written_text(value)
    if not isinstance(text, str) or not re.fullmatch(_MODE, text):
        got = repr(text) if isinstance(text, str) else _kind(value)
        raise _problem(f"expected an octal mode such as \"0640\", got {got}")
    mode = int(text, 8)
    if mode & ~0o660 or not mode & 0o400:
        raise _problem(f"{text}: the owner must read it, and nobody else but the group may"
                       " (no execute bits): e.g. 0600 or 0640")
    return mode


def _release_path(value: str) -> str:
    """A path inside every release: relative, plain, not one deployer keeps there."""
    norm = posixpath.normpath(value)
    problem = names.value_problem(value)
    if problem:
        raise _problem(f"{value!r} {problem}")
    if value.startswith("/") or norm == "." or norm.startswith("../") or norm == ".." or "/../" in value:
        raise _problem(f"expected a path inside the release, such as media or var/db, got {value!r}")
    if norm.split("/")[0].startswith(".deployer"):
        raise _problem(f"{value!r} is a name deployer keeps in every release")
    return norm


def _template_value(value: Any) -> str:
    """A var's value as a template gets it: numbers as written (0755 stays "0755"), one line."""
    if isinstance(value, bool) or value is None:
        raise _problem(f"{_kind(value)} is not a value for a template; quote it")
    value = _as_written_text(value)
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise _problem(f"expected a string or a number, got {_kind(value)}")
    problem = names.value_problem(value)
    if problem:
        raise _problem(f"value {problem}")
    return value


def _unique(stages: list[str]) -> list[str]:
    # Entry-point stages are checked when the plan is built; here only
    # duplicates (and, in TargetSpec, hooks on stages that will not run).
    for i, name in enumerate(stages):
        if name in stages[:i]:
            raise _problem(f"stage {name!r} listed twice", i)
    return stages


# The short forms: `- web1` is {address: web1}, `KEY: 1.10` is {value: "1.10"},
# `restart: ./x` is {run: ./x}, and a hook alone is a list of one.
def _host_shorthand(value: Any) -> Any:
    return {"address": value} if isinstance(value, str) else value


def _var_shorthand(value: Any) -> Any:
    if isinstance(value, (str, int, float)) or value is None:  # bool is an int
        return {"value": _template_value(value)}
    return value


def _hook_shorthand(value: Any) -> Any:
    return {"run": value} if isinstance(value, str) else value


def _one_or_more(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


@functools.cache
def _models() -> SimpleNamespace:
    """The models of targets.yaml: TargetsFile and the *Spec classes it is made of."""
    from pydantic import (
        AfterValidator,
        BaseModel,
        BeforeValidator,
        ConfigDict,
        Field,
        ValidationError,
        WithJsonSchema,
        WrapValidator,
        model_validator,
    )
    from pydantic.json_schema import GenerateJsonSchema

    def says(message: Callable[[Any], str | None]) -> WrapValidator:
        """Errors of the value itself read message(value) (None: keep pydantic's);
        errors inside it (an item of a list, a key of a mapping) keep their own."""

        def reword(value: Any, handler: Callable[[Any], Any]) -> Any:
            try:
                return handler(value)
            except ValidationError as e:
                text = message(value) if all(not err["loc"] for err in e.errors()) else None
                if text is None:
                    raise
                raise _problem(text) from None

        return WrapValidator(reword)

    def between(low: int, high: int) -> Any:
        def reword(value: Any) -> str:
            if isinstance(value, int) and not isinstance(value, bool):
                return f"expected an integer from {low} to {high}, got {value}"
            return "expected an integer"

        # A plain int: getaddrinfo refuses the subclass that remembers its text.
        return Annotated[int, Field(ge=low, le=high), says(reword), AfterValidator(lambda v: int(v))]

    def one_of(*choices: str) -> Any:
        def reword(value: Any) -> str:
            if isinstance(value, str) and value.strip():
                return f"expected one of {', '.join(choices)}, got {value!r}"
            return _non_empty(value)

        return Annotated[Literal[choices], says(reword)]

    def checked_key(check: Callable[[str], None], schema: dict) -> Any:
        """A key that `check` accepts (it raises UsageError, as deployer.config.names does);
        `schema` says the same to an editor, from the same regex and names."""

        def validate(value: str) -> str:
            try:
                check(value)
            except UsageError as e:
                raise _problem(str(e)) from None
            return value

        return Annotated[str, AfterValidator(validate), WithJsonSchema({"type": "string", **schema})]

    def matching(pattern: str) -> Any:
        return Annotated[str, Field(pattern=_anchored(pattern))]

    Text = Annotated[str, Field(pattern=r"\S"), says(_non_empty)]
    Texts = Annotated[list[Text], says(lambda v: f"expected a list of strings, got {_kind(v)}")]
    Flag = Annotated[bool, says(lambda v: "expected true or false")]
    Seconds = Annotated[float, Field(gt=0.0), says(lambda v: "expected a positive number of seconds")]
    Port = between(1, 65535)
    # deployer.config.names' own regexes: the schema says what its checks check.
    TargetName = checked_key(_config_name, {"pattern": _anchored(rf"\*|{names._LABEL.pattern}")})
    VarName = checked_key(_var_name, {"pattern": _anchored(names._TOKEN.pattern),
                                      "not": {"enum": list(BUILTIN_TOKENS)}})
    StageName = checked_key(_stage_name, {"not": {"enum": list(DEFAULT_PIPELINE)}})
    Mode = Annotated[int, BeforeValidator(_private_mode, json_schema_input_type=matching(_MODE) | int)]
    Account = Annotated[
        str, Field(pattern=_anchored(_ACCOUNT)),
        says(lambda v: f"expected a user or group name or number, got {_kind(v)}"),
        # A uid or gid may be written unquoted.
        BeforeValidator(_as_written_text, json_schema_input_type=matching(_ACCOUNT) | int),
    ]
    UrlPath = Annotated[str, Field(pattern=_anchored(_URL_PATH)),
                        says(lambda v: f"expected a URL path such as /health, got {v!r}" if isinstance(v, str)
                              else _non_empty(v))]
    ReleasePaths = Annotated[list[Annotated[Text, AfterValidator(_release_path)]],
                             says(lambda v: f"expected a list of strings, got {_kind(v)}")]

    class _Spec(BaseModel):
        # Strict: YAML already typed every value, and "22" for a port is a
        # mistake to point at, not to convert. Frozen: a spec is read, never
        # changed. Deferred: one validator, TargetsFile's, made on first use,
        # rather than one for every class here (a fifth of the models' cost).
        model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)

        @model_validator(mode="before")
        @classmethod
        def _known_keys(cls, data: Any) -> Any:
            # extra="forbid" says so too, and gives the schema its
            # additionalProperties: false; this says which keys there are.
            if isinstance(data, dict):
                for key in data:
                    if not isinstance(key, str):
                        raise _problem(f"keys must be strings, got {key!r}")
                    if key not in cls.model_fields:
                        raise _problem(f"unknown key; expected one of: {', '.join(sorted(cls.model_fields))}", key)
            return data

    class HostSpec(_Spec):
        """A host, and what differs on it from the target's user, port and key."""

        address: Annotated[Text, AfterValidator(_host_address)] = Field(
            description="Host name or IP address, as this machine reaches it (through the VPN).")
        user: Text = Field(None, description="SSH user; default: the target's `user`.")
        port: Port = Field(None, description="SSH port; default: the target's `port`.")
        identity_file: Text | None = Field(
            None, description="SSH private key file on this machine; default: the target's `identity_file`;"
            " null for none.")

    class VpnSpec(_Spec):
        """The VPN this machine opens to reach the hosts, and closes after the run."""

        kind: one_of("none", "openvpn") = Field("none", description="`none`, or `openvpn` (needs `config`).")
        config: Text = Field(
            None, description="The OpenVPN config file (.ovpn) on this machine, for kind openvpn; never packaged,"
            " nor the key files it names.")
        timeout: Seconds = Field(30, description="Seconds to wait for the tunnel to come up.")

        @model_validator(mode="after")
        def _config_for_openvpn(self) -> "VpnSpec":
            if self.kind == "openvpn" and self.config is None:
                raise _problem("missing; kind openvpn needs its config file (.ovpn)", "config")
            return self

    class ApacheSpec(_Spec):
        """Apache on the hosts: where the vhost goes, how it is reloaded."""

        dir: Text = Field(
            "/etc/apache2", description="Apache's configuration directory on the hosts (its sites-available/ and"
            " sites-enabled/): an absolute path, unless transport is local.")
        ctl: Text = Field(
            "apache2ctl", description="The apache2ctl command, or a command prefix such as `sudo apache2ctl`;"
            " `builtin` (transport local only) is deployer's own Apache on this machine, on 127.0.0.1, run as"
            " you.")
        port: Port = Field(
            80, description="The vhost's port: <<HTTP_PORT>> in the template, and the health check's.")
        vhost_mode: Mode = Field(
            "0640", validate_default=True, description="The vhost file's mode, as in chmod: the owner reads it,"
            " nobody else but the group may (0600, 0640, ...).")
        vhost_owner: Account | None = Field(
            None, description="The vhost file's owner (chown needs root); default: the SSH user.")
        vhost_group: Account | None = Field(None, description="The vhost file's group; default: the SSH user's.")

    class PackageSpec(_Spec):
        """What goes into the release tarball."""

        source: Text = Field(".", description="The folder to package (the folder of manage.py), on this machine.")
        exclude: Texts = Field(
            [], description="Lines as in .gitignore (git's own rules): a pattern without / matches a name at any"
            " depth (*.pyc, media/), one with / a path from the source root (static/*.map), ** any depth"
            " (**/*.map).")
        include: Texts = Field(
            [], description="Exact paths packaged although the safe defaults withhold them (keys, .env files, the"
            " files targets.yaml names).")

    class SharedSpec(_Spec):
        """What outlives a release (uploads, a SQLite file, a settings file with secrets): kept in
        <root>/<CONFIG_NAME>.shared/ on each host and linked into every release at the same relative path."""

        root: Text = Field(
            None, description="Where the .shared/ folders are, on the hosts; default: `deploy_root`; or storage"
            " every host mounts (NFS).")
        dirs: ReleasePaths = Field(
            [], description="Folders, relative to the release (media, var/db): made if missing.")
        files: ReleasePaths = Field(
            [], description="Files, relative to the release (local_settings.py): must be there already; deployer"
            " never writes them.")
        group: Account | None = Field(
            None, description="The group of the folders it makes, group-writable (setgid), if the app writes there"
            " (www-data).")

        @model_validator(mode="after")
        def _each_path_once(self) -> "SharedSpec":
            every = self.dirs + self.files
            if len(set(every)) != len(every):
                raise _problem("a path is named twice")
            for a in every:
                for b in every:
                    if b.startswith(a + "/"):
                        raise _problem(f"{b!r} is inside {a!r}: name only the outer one")
            return self

    class HealthSpec(_Spec):
        """Asked of every host after the reload: GET `path` with the instance's Host header must
        answer `status` within `timeout` seconds, or every host is put back."""

        path: UrlPath = Field(description="The URL path to ask for, e.g. /health.")
        status: between(100, 599) = Field(200, description="The HTTP status it must answer.")
        timeout: Seconds = Field(30, description="Seconds to wait for that answer.")
        port: Port = Field(None, description="The port to ask on; default: apache's `port`.")

    class VarSpec(_Spec):
        """A template token's value: written here (`value`) or read from the environment (`env`)."""

        value: Annotated[str, BeforeValidator(_template_value, json_schema_input_type=str | int | float)] = Field(
            None, description="The value: one line of text, kept as written (0755 stays 0755).")
        env: Text = Field(None, description="The environment variable to read the value from, when deploying.")
        secret: Flag = Field(False, description="Mask the value in all output.")

        @model_validator(mode="after")
        def _one_source(self) -> "VarSpec":
            if (self.value is None) == (self.env is None):
                raise _problem("expected exactly one of value or env")
            return self

    class HookSpec(_Spec):
        """A shell command, run by /bin/sh in the new release."""

        run: Text = Field(description="The command.")
        on: one_of(*HOOK_PLACES) = Field(
            "all", description="Where it runs: `all` hosts, the `first` host only, or `local`: this machine.")

    Hook = Annotated[HookSpec, BeforeValidator(_hook_shorthand, json_schema_input_type=Text | HookSpec)]
    Hooks = Annotated[list[Hook], BeforeValidator(_one_or_more, json_schema_input_type=Hook | list[Hook])]

    class HooksSpec(_Spec):
        """Commands before or after a stage of the pipeline, by stage name."""

        before: dict[str, Hooks] = Field(
            {}, description="Stage name: a command, or a list of them, run before it.")
        after: dict[str, Hooks] = Field({}, description="Stage name: a command, or a list of them, run after it.")

    HostItem = Annotated[HostSpec, BeforeValidator(_host_shorthand, json_schema_input_type=Text | HostSpec)]
    Var = Annotated[VarSpec, BeforeValidator(_var_shorthand, json_schema_input_type=str | int | float | VarSpec)]

    class TargetSpec(_Spec):
        """A target: where and how `deploy CONFIG_NAME HOSTNAME` deploys. Every key is optional; under
        `defaults:` they are what every target starts from. Paths on this machine may be relative to
        targets.yaml."""

        transport: one_of("ssh", "local") = Field(
            "ssh", description="`ssh`, or `local`: this machine, no SSH, no VPN.")
        hosts: Annotated[list[HostItem], Field(min_length=1),
                         says(lambda v: "expected a non-empty list of hosts")] = Field(
            None, description="The hosts, for transport ssh: each an address (host name or IP), or {address, user,"
            " port, identity_file}.")
        user: Text | None = Field(None, description="SSH user on the hosts; default: the current user.")
        port: Port = Field(22, description="SSH port of the hosts.")
        identity_file: Text | None = Field(
            None, description="SSH private key file on this machine; default: the SSH agent's and the default"
            " keys.")
        known_hosts: Text = Field(
            "~/.ssh/known_hosts", description="Host keys are checked against this file only: an unknown or changed"
            " key refuses the host.")
        connect_timeout: Seconds = Field(10, description="Seconds to wait for a host's SSH connection.")
        step_timeout: Seconds = Field(
            600, description="Seconds a remote command may run before it is stopped and its step fails.")
        migrate_timeout: Seconds = Field(
            3600, description="Seconds migrate may run before it is stopped and its step fails.")
        parallel: between(1, 1000) = Field(
            MAX_PARALLEL, description="Hosts at once, at most (fewer when the target has fewer).")
        relay: Flag = Field(
            True, description="The other hosts read the artifact from the first one: it crosses the tunnel once.")
        keep_releases: between(2, 1000) = Field(
            5, description="Releases kept per host after a run that succeeded; the live one and the one before it"
            " are always kept.")
        protected: Flag = Field(False, description="`deployer destroy` refuses this target.")
        deploy_root: Text = Field(
            "/var/www", description="DEPLOY_PATH is <deploy_root>/<CONFIG_NAME>: an absolute path on the hosts,"
            " without white space (relative to targets.yaml only for transport local).")
        vpn: VpnSpec = Field(
            {"kind": "none"}, validate_default=True,
            description="The VPN: {kind: none}, or {kind: openvpn, config: FILE, timeout: 30}.")
        apache: ApacheSpec = Field({}, validate_default=True, description="Apache on the hosts.")
        migrate: Text | None = Field(
            "python manage.py migrate --noinput", description="A shell command run in the new release; null for"
            " none.")
        shared: SharedSpec = Field({}, validate_default=True, description="What outlives a release.")
        health: HealthSpec | None = Field(
            None, description="A request every host must answer after the reload; default: none.")
        package: PackageSpec = Field({}, validate_default=True, description="What goes into the release.")
        template: Text = Field("templates/default_template", description="The vhost template, on this machine.")
        vars: dict[VarName, Var] = Field(
            {}, description="Template tokens, besides HOSTNAME, DEPLOY_PATH, CONFIG_NAME and HTTP_PORT:"
            " `KEY: value`, or `KEY: {env: VAR, secret: true}` to read it from the environment and mask it in all"
            " output.")
        pipeline: Annotated[list[Text], says(lambda v: f"expected a list of strings, got {_kind(v)}"),
                            AfterValidator(_unique)] = Field(
            list(DEFAULT_PIPELINE), json_schema_extra={"uniqueItems": True},
            description="The stages, in order: built-in ones, shell stages named in `stages`, plugin stages.")
        stages: dict[StageName, Hook] = Field(
            {}, description="Shell stages to name in `pipeline`: `name: command` or {run: command, on:"
            " all|first|local}.")
        hooks: HooksSpec = Field({}, validate_default=True, description="Commands before or after a stage.")

        @model_validator(mode="after")
        def _hooks_on_stages_that_run(self) -> "TargetSpec":
            for when in ("before", "after"):
                for stage in getattr(self.hooks, when):
                    if stage not in self.pipeline:
                        raise _problem("no such stage in the pipeline", "hooks", when, stage)
            return self

    Entry = Annotated[TargetSpec, BeforeValidator(lambda v: {} if v is None else v,
                                                  json_schema_input_type=TargetSpec | None)]

    class TargetsFile(_Spec):
        """targets.yaml: the targets of `deploy CONFIG_NAME HOSTNAME`, and the defaults they share."""

        model_config = ConfigDict(title="deployer targets.yaml")

        defaults: TargetSpec = Field(
            {}, validate_default=True, description="What every target starts from: an entry overrides it key by"
            " key (mappings merge, lists and strings replace).")
        targets: Annotated[dict[TargetName, Entry], Field(min_length=1),
                           says(lambda v: "expected at least one target" if v == {} else None)] = Field(
            description="The targets by config name (a DNS label, e.g. demo-acme); the entry \"*\" is used for any"
            " config name not listed.")

    class SchemaGenerator(GenerateJsonSchema):
        """The schema as editors read it: hover text from the descriptions, no
        titles made up from class and field names, and the same from every
        pydantic 2 (the committed file is compared with what this one makes)."""

        def field_title_should_be_set(self, schema) -> bool:
            return False

        def default_schema(self, schema) -> dict:
            # A field that is None by default means "see the description"
            # (the target's port, deploy_root): null is no value to offer.
            if schema.get("default", ...) is None and schema["schema"]["type"] != "nullable":
                return self.generate_inner(schema["schema"])
            return super().default_schema(schema)

        def dict_schema(self, schema) -> dict:
            # The keys' pattern as propertyNames, so that a key matching none is
            # an error too (patternProperties alone would let it through).
            keys = self.generate_inner(schema["keys_schema"]) if "keys_schema" in schema else {}
            out = {"type": "object", "additionalProperties": self.generate_inner(schema["values_schema"])}
            if any(k != "type" for k in keys):
                out["propertyNames"] = {k: v for k, v in keys.items() if k != "type"}
            self.update_with_validations(out, schema, self.ValidationsMapping.object)
            return out

    return SimpleNamespace(TargetsFile=TargetsFile, ValidationError=ValidationError,
                           SchemaGenerator=SchemaGenerator)


def _validated(source: str, doc: Any, defaults: Any) -> Any:
    """`doc` checked by the models (a TargetsFile), each entry as merged with `defaults`."""
    models = _models()
    checked = doc
    if isinstance(doc, dict):
        checked = dict(doc)
        entries = doc.get("targets")
        if isinstance(defaults, dict):
            # The defaults are checked under each entry, as merged: alone, a
            # mapping in them may lack what every entry adds to it.
            checked["defaults"] = {}
            if isinstance(entries, dict):
                checked["targets"] = {name: _merge(defaults, {} if e is None else e)
                                      for name, e in entries.items()}
    try:
        return models.TargetsFile.model_validate(checked)
    except models.ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(source, _key_path(err, doc, defaults), _wording(err)) from None


def _key_path(err: dict, doc: Any, defaults: Any) -> str:
    keys = list(err["loc"])
    if keys and keys[-1] == "[key]":  # the key itself is wrong
        keys.pop()
        if err["type"] == "string_type":
            keys.pop()  # not a string: named by the mapping it is in
    if err["type"] == "deployer":
        keys += (err.get("ctx") or {}).get("below", ())
    if keys[:1] == ["targets"] and len(keys) > 1 and _from_defaults(doc["targets"][keys[1]], defaults, keys[2:]):
        keys = ["defaults", *keys[2:]]  # said where it is written
    return "/".join(str(k) for k in keys)


def _from_defaults(entry: Any, defaults: Any, keys: list) -> bool:
    """Whether the value at `keys` of an entry merged with the defaults is the defaults' alone."""
    entry = {} if entry is None else entry  # `alpha:` alone: the defaults, all of it
    for key in keys:
        if not isinstance(entry, dict) or not isinstance(defaults, dict):
            return False  # replaced by the entry's, or made from it (`- web1` is {address: web1})
        if key not in entry:
            return key in defaults
        entry, defaults = entry[key], defaults.get(key)
    return False


def _wording(err: dict) -> str:
    kind, value = err["type"], err.get("input")
    if kind == "deployer":
        return err["msg"]
    if kind == "string_type" and err["loc"][-1:] == ("[key]",):
        return f"keys must be strings, got {value!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {_kind(value)}"
    if kind == "missing":
        return "missing; this key is required"
    known = {"list_type": f"expected a list, got {_kind(value)}", "string_type": _non_empty(value),
             "int_type": "expected an integer", "float_type": "expected a number",
             "bool_type": "expected true or false", "extra_forbidden": "unknown key"}
    if kind in known:
        return known[kind]
    message = err["msg"]
    return message[:1].lower() + message[1:]


def json_schema() -> dict:
    """targets.yaml's JSON Schema, from the models: what deployer/config/targets.schema.json holds.

    Draft 7, the newest that yaml-language-server (VS Code, Neovim, ...) validates with."""
    models = _models()
    schema = models.TargetsFile.model_json_schema(ref_template="#/definitions/{model}",
                                                  schema_generator=models.SchemaGenerator)
    definitions = schema.pop("$defs")
    return {"$schema": "http://json-schema.org/draft-07/schema#", **_for_editors(schema),
            "definitions": {name: _for_editors(d, title=False) for name, d in sorted(definitions.items())}}


def _for_editors(node: Any, title: bool = True) -> Any:
    if isinstance(node, list):
        return [_for_editors(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _for_editors(v) for k, v in node.items() if title or k != "title"}
    if isinstance(node.get("description"), str):
        node["description"] = " ".join(node["description"].split())  # a docstring's lines, as one
    if "$ref" in node and len(node) > 1:
        # Draft 7 ignores whatever stands beside a $ref: the field's
        # description and default would be lost to the hover.
        node = {"allOf": [{"$ref": node.pop("$ref")}], **node}
    return node


def schema_text() -> str:
    """json_schema() as the committed file holds it."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# -- what the models cannot know ---------------------------------------------------------


class _Builder:
    """A checked entry made a Target: paths resolved, and checked against the
    transport and, when one target is resolved, against this machine."""

    def __init__(self, source: str, base: Path, check_environment: bool, missing: list[Missing] | None = None):
        self.source = source
        self.base = base
        self.check_environment = check_environment
        # None: what this machine lacks fails the read, as any other error.
        self.missing = missing

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(self.source, path, problem)

    def lacks(self, path: str, problem: str, kind: str, var: str = "") -> None:
        """This machine lacks something a real run needs: fail, or note it."""
        if self.missing is None:
            raise self.fail(path, problem)
        # Every host of a target names the same key file: listed once.
        if all((m.kind, m.problem) != (kind, problem) for m in self.missing):
            self.missing.append(Missing(path, problem, kind, var))

    def path(self, value: str) -> str:
        return str(self.base / os.path.expanduser(value))

    def file(self, value: str, path: str, kind: str) -> str:
        resolved = self.path(value)
        if self.check_environment and not os.path.isfile(resolved):
            self.lacks(path, f"file not found: {resolved}", kind)
        return resolved

    def absolute(self, value: str) -> str:
        return os.path.normpath(self.path(value)).rstrip("/") or "/"

    def target(self, entry: str, t: Any, path: str) -> Target:  # t: a TargetSpec
        # In the order of the file's README table: a dry run lists what
        # this machine lacks in this order.
        transport = t.transport
        hosts = self.hosts(t, path) if transport == "ssh" else (LOCAL_HOST,)
        known_hosts = self.file(t.known_hosts, f"{path}/known_hosts", "connect") if transport == "ssh" else None
        apache = self.apache(t.apache, f"{path}/apache", transport)
        deploy_root = self.deploy_root(t.deploy_root, f"{path}/deploy_root", transport)
        return Target(
            entry=entry,
            transport=transport,
            hosts=hosts,
            known_hosts=known_hosts,
            connect_timeout=float(t.connect_timeout),
            step_timeout=float(t.step_timeout),
            migrate_timeout=float(t.migrate_timeout),
            parallel=t.parallel,
            relay=t.relay,
            keep_releases=t.keep_releases,
            protected=t.protected,
            deploy_root=deploy_root,
            vpn=self.vpn(t.vpn, f"{path}/vpn"),
            apache=apache,
            migrate=t.migrate,
            package=self.package(t.package, f"{path}/package"),
            health=None if t.health is None else Health(
                path=t.health.path, status=t.health.status, timeout=float(t.health.timeout),
                port=apache.port if t.health.port is None else t.health.port),
            shared=Shared(
                root=self.deploy_root(t.shared.root or t.deploy_root, f"{path}/shared/root", transport),
                dirs=tuple(t.shared.dirs), files=tuple(t.shared.files), group=t.shared.group or ""),
            template=self.file(t.template, f"{path}/template", "template"),
            vars={key: self.var(v, f"{path}/vars/{key}", key) for key, v in t.vars.items()},
            pipeline=tuple(t.pipeline),
            stages={name: Hook(h.run, h.on) for name, h in t.stages.items()},
            before={stage: tuple(Hook(h.run, h.on) for h in hooks) for stage, hooks in t.hooks.before.items()},
            after={stage: tuple(Hook(h.run, h.on) for h in hooks) for stage, hooks in t.hooks.after.items()},
        )

    def host_path(self, value: str, path: str, transport: str) -> str:
        """A path on the hosts. For the local target the hosts are this machine,
        so it may be relative to this file; for SSH it is never resolved here
        (`~/www` would become the runner's home, `www` a folder on the runner)."""
        if transport == "local":
            return self.absolute(value)
        if not value.startswith("/"):
            raise self.fail(path, f"expected an absolute path on the hosts (starting with /), got {value!r}")
        return posixpath.normpath(value).rstrip("/") or "/"

    def deploy_root(self, value: str, path: str, transport: str) -> str:
        root = self.host_path(value, path, transport)
        # DEPLOY_PATH goes into the vhost unquoted (<<DEPLOY_PATH>>/static).
        problem = names.value_problem(root) or (
            "contains white space, which would split it in the vhost" if re.search(r"\s", root) else None)
        if problem:
            raise self.fail(path, f"{root!r} {problem}")
        return root

    def hosts(self, t: Any, path: str) -> tuple[Host, ...]:
        if t.hosts is None:
            raise self.fail(f"{path}/hosts", "expected a non-empty list of hosts")
        hosts = []
        for i, h in enumerate(t.hosts):
            # `identity_file: null` on a host: none for it, whatever the target's.
            key = h.identity_file if "identity_file" in h.model_fields_set else t.identity_file
            hosts.append(Host(
                address=h.address,
                port=t.port if h.port is None else h.port,
                user=t.user if h.user is None else h.user,
                identity_file=None if key is None else self.file(key, f"{path}/hosts/{i}/identity_file",
                                                                  "connect"),
            ))
        seen = set()
        for i, h in enumerate(hosts):
            if h.name in seen:
                raise self.fail(f"{path}/hosts/{i}", f"duplicate host {h.name}")
            seen.add(h.name)
        return tuple(hosts)

    def vpn(self, v: Any, path: str) -> Vpn:
        if v.kind == "none":
            return Vpn()
        return Vpn(kind=v.kind, config=self.file(v.config, f"{path}/config", "connect"), timeout=float(v.timeout))

    def apache(self, a: Any, path: str, transport: str) -> Apache:
        try:
            ctl = words(a.ctl)
        except ValueError as e:  # an unclosed quote
            raise self.fail(f"{path}/ctl", f"cannot be split into words: {e}") from None
        apache_dir = self.host_path(a.dir, f"{path}/dir", transport)
        if ctl == ("builtin",):
            if transport != "local":
                raise self.fail(f"{path}/ctl", "builtin is deployer's own Apache on this machine: only for"
                                " transport: local")
            # It writes its own config into that folder: never the system's.
            if os.path.realpath(apache_dir) == os.path.realpath("/etc/apache2") or not re.fullmatch(
                    r"[A-Za-z0-9_./+-]+", apache_dir):
                raise self.fail(f"{path}/dir", f"builtin needs a folder of its own for its config, such as"
                                f" .deployer-local/apache2 (letters, digits, . _ - + / only), not {apache_dir!r}")
            ctl = ("/bin/sh", str(LOCAL_APACHE_CTL), apache_dir)
        elif "/" in ctl[0]:
            # A path, e.g. tools/local-apache2ctl beside targets.yaml; a bare
            # name (apache2ctl, sudo) is looked up on the host's PATH.
            ctl = (self.host_path(ctl[0], f"{path}/ctl", transport), *ctl[1:])
        return Apache(dir=apache_dir, ctl=ctl, port=a.port, vhost_mode=a.vhost_mode,
                      vhost_owner=a.vhost_owner or "", vhost_group=a.vhost_group or "")

    def package(self, p: Any, path: str) -> Package:
        source = self.absolute(p.source)
        if self.check_environment and not os.path.isdir(source):
            self.lacks(f"{path}/source", f"directory not found: {source}", "source")
        return Package(source=source, exclude=tuple(p.exclude), include=tuple(p.include))

    def var(self, v: Any, path: str, name: str) -> Var:
        if v.env is None:
            return Var(v.value, v.secret)
        value = os.environ.get(v.env)
        if value is None and self.check_environment:
            self.lacks(f"{path}/env", f"environment variable {v.env} is not set", "value", name)
            # Only a dry run gets here: it shows where the value would go.
            value = f"<{v.env}: not set here>"
        problem = names.value_problem(value or "")
        if problem:
            raise self.fail(f"{path}/env", f"environment variable {v.env} {problem}")
        return Var(value or "", v.secret, v.env)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if value == "":
        return "an empty string"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", _Int: "an integer", _Float: "a number"}.get(
        type(value), type(value).__name__)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True

