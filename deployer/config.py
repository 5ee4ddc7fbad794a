"""targets.yaml: read, merged with its defaults, and validated in full.

Every error names the file, the key path and what is wrong, e.g.
`targets.yaml: targets/alpha/hosts/0/port: expected an integer`, and is
raised before any side effect. Relative paths in the file are relative to
the file's own directory, so a checkout can be deployed from anywhere.
"""

import copy
import ipaddress
import os
import posixpath
import re
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from deployer import names
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
LOCAL_APACHE_CTL = Path(__file__).with_name("local-apache2ctl")


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
        merged = _merge(self.defaults, self.entries[entry])
        reader = _Reader(self.source, self.base, check_environment=True, missing=missing)
        target = reader.target(entry, merged, f"targets/{entry}")
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
    # Every entry's shape is checked now; files and environment variables
    # only for the target being deployed (resolve), since a build agent has
    # the VPN file and secrets of its own target only.
    reader = _Reader(source, path.resolve().parent, check_environment=False)
    top = reader.mapping(doc, "", {"defaults", "targets"})
    defaults = reader.mapping(top.get("defaults") or {}, "defaults", _TARGET_KEYS)
    entries = reader.mapping(top.get("targets"), "targets")
    if not entries:
        raise ConfigError(source, "targets", "expected at least one target")
    named: list[str] = []
    for name, entry in entries.items():
        if name != CATCH_ALL:
            try:
                names.config_name(str(name))
            except UsageError as e:
                raise ConfigError(source, f"targets/{name}", str(e)) from None
        named.extend(_files_named(reader.target(name, _merge(defaults, entry or {}), f"targets/{name}")))
    protected = ((str(path.resolve()), "the targets file"),
                 *((f, f"named in {path.name}") for f in sorted(set(named))))
    return Targets(source, reader.base, {str(k): v or {} for k, v in entries.items()}, defaults, protected)


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


_TARGET_KEYS = {
    "transport", "hosts", "user", "port", "identity_file", "known_hosts",
    "connect_timeout", "step_timeout", "migrate_timeout", "parallel", "relay", "keep_releases", "protected",
    "deploy_root", "vpn", "apache", "migrate", "shared", "health", "package", "template", "vars", "pipeline",
    "stages", "hooks",
}


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


class _Reader:
    """Typed access to parsed YAML that knows where in the file it is."""

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

    def mapping(self, value: Any, path: str, allowed: set[str] | None = None) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"keys must be strings, got {key!r}")
            if allowed is not None and key not in allowed:
                raise self.fail(_join(path, key), f"unknown key; expected one of: {', '.join(sorted(allowed))}")
        return value

    def string(self, value: Any, path: str, choices: tuple[str, ...] = ()) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected a non-empty string, got {_kind(value)}")
        if choices and value not in choices:
            raise self.fail(path, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, value: Any, path: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, "expected an integer")
        if not low <= value <= high:
            raise self.fail(path, f"expected an integer from {low} to {high}, got {value}")
        return int(value)  # a plain int: getaddrinfo refuses the subclass that remembers its text

    def number(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise self.fail(path, "expected a positive number of seconds")
        return float(value)

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, "expected true or false")
        return value

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list of strings, got {_kind(value)}")
        return tuple(self.string(v, f"{path}/{i}") for i, v in enumerate(value))

    def file(self, value: Any, path: str, kind: str) -> str:
        resolved = self.path(self.string(value, path))
        if self.check_environment and not os.path.isfile(resolved):
            self.lacks(path, f"file not found: {resolved}", kind)
        return resolved

    def target(self, entry: str, raw: Any, path: str) -> Target:
        t = self.mapping(raw, path, _TARGET_KEYS)
        transport = self.string(t.get("transport", "ssh"), f"{path}/transport", ("ssh", "local"))
        hosts = self.hosts(t, path) if transport == "ssh" else (LOCAL_HOST,)
        known_hosts = None
        if transport == "ssh":
            known_hosts = self.file(t.get("known_hosts", "~/.ssh/known_hosts"), f"{path}/known_hosts", "connect")
        pipeline = self.strings(t.get("pipeline", list(DEFAULT_PIPELINE)), f"{path}/pipeline")
        stages = {
            name: self.hook(spec, f"{path}/stages/{name}")
            for name, spec in self.mapping(t.get("stages", {}), f"{path}/stages").items()
        }
        for name in stages:
            if name in DEFAULT_PIPELINE:
                raise self.fail(f"{path}/stages/{name}", "a built-in stage has this name; use hooks"
                                " to run commands before or after it")
        hooks = self.mapping(t.get("hooks", {}), f"{path}/hooks", {"before", "after"})
        before, after = (
            self.hooks(hooks.get(when, {}), f"{path}/hooks/{when}") for when in ("before", "after")
        )
        migrate = t.get("migrate", "python manage.py migrate --noinput")
        apache = self.apache(t.get("apache", {}), f"{path}/apache", transport)
        return Target(
            entry=entry,
            transport=transport,
            hosts=hosts,
            known_hosts=known_hosts,
            connect_timeout=self.number(t.get("connect_timeout", 10), f"{path}/connect_timeout"),
            step_timeout=self.number(t.get("step_timeout", 600), f"{path}/step_timeout"),
            migrate_timeout=self.number(t.get("migrate_timeout", 3600), f"{path}/migrate_timeout"),
            parallel=self.integer(t.get("parallel", MAX_PARALLEL), f"{path}/parallel", 1, 1000),
            relay=self.boolean(t.get("relay", True), f"{path}/relay"),
            # Two at least: the live release and the one a rollback goes back to.
            keep_releases=self.integer(t.get("keep_releases", 5), f"{path}/keep_releases", 2, 1000),
            protected=self.boolean(t.get("protected", False), f"{path}/protected"),
            deploy_root=self.deploy_root(t.get("deploy_root", "/var/www"), f"{path}/deploy_root", transport),
            vpn=self.vpn(t.get("vpn", {"kind": "none"}), f"{path}/vpn"),
            apache=apache,
            migrate=None if migrate is None else self.string(migrate, f"{path}/migrate"),
            package=self.package(t.get("package", {}), f"{path}/package"),
            health=self.health(t.get("health"), f"{path}/health", apache.port),
            shared=self.shared(t.get("shared", {}), f"{path}/shared", transport, t.get("deploy_root", "/var/www")),
            template=self.file(t.get("template", "templates/default_template"), f"{path}/template", "template"),
            vars=self.vars(t.get("vars", {}), f"{path}/vars"),
            pipeline=self.pipeline(pipeline, before, after, path),
            stages=stages,
            before=before,
            after=after,
        )

    def absolute(self, value: Any, path: str) -> str:
        text = self.string(value, path)
        return os.path.normpath(self.path(text)).rstrip("/") or "/"

    def host_path(self, value: Any, path: str, transport: str) -> str:
        """A path on the hosts. For the local target the hosts are this machine,
        so it may be relative to this file; for SSH it is never resolved here
        (`~/www` would become the runner's home, `www` a folder on the runner)."""
        if transport == "local":
            return self.absolute(value, path)
        text = self.string(value, path)
        if not text.startswith("/"):
            raise self.fail(path, f"expected an absolute path on the hosts (starting with /), got {text!r}")
        return posixpath.normpath(text).rstrip("/") or "/"

    def deploy_root(self, value: Any, path: str, transport: str) -> str:
        root = self.host_path(value, path, transport)
        # DEPLOY_PATH goes into the vhost unquoted (<<DEPLOY_PATH>>/static).
        problem = names.value_problem(root) or (
            "contains white space, which would split it in the vhost" if re.search(r"\s", root) else None)
        if problem:
            raise self.fail(path, f"{root!r} {problem}")
        return root

    def hosts(self, t: dict, path: str) -> tuple[Host, ...]:
        raw = t.get("hosts")
        if not isinstance(raw, list) or not raw:
            raise self.fail(f"{path}/hosts", "expected a non-empty list of hosts")
        user = t.get("user")
        if user is not None:
            user = self.string(user, f"{path}/user")
        port = self.integer(t.get("port", 22), f"{path}/port", 1, 65535)
        key = t.get("identity_file")
        hosts = []
        for i, item in enumerate(raw):
            hpath = f"{path}/hosts/{i}"
            if isinstance(item, str):
                item = {"address": item}
            h = self.mapping(item, hpath, {"address", "user", "port", "identity_file"})
            address = self.string(h.get("address"), f"{hpath}/address")
            try:
                names.hostname(address)
            except UsageError:
                if not _is_ip(address):
                    raise self.fail(f"{hpath}/address", f"not a host name or IP address: {address!r}") from None
            host_key = h.get("identity_file", key)
            hosts.append(Host(
                address=address,
                port=self.integer(h.get("port", port), f"{hpath}/port", 1, 65535),
                user=self.string(h["user"], f"{hpath}/user") if "user" in h else user,
                identity_file=None if host_key is None else self.file(host_key, f"{hpath}/identity_file",
                                                                      "connect"),
            ))
        seen = set()
        for i, h in enumerate(hosts):
            if h.name in seen:
                raise self.fail(f"{path}/hosts/{i}", f"duplicate host {h.name}")
            seen.add(h.name)
        return tuple(hosts)

    def vpn(self, raw: Any, path: str) -> Vpn:
        v = self.mapping(raw, path, {"kind", "config", "timeout"})
        kind = self.string(v.get("kind", "none"), f"{path}/kind", ("none", "openvpn"))
        if kind == "none":
            return Vpn()
        return Vpn(
            kind=kind,
            config=self.file(v.get("config"), f"{path}/config", "connect"),
            timeout=self.number(v.get("timeout", 30), f"{path}/timeout"),
        )

    def apache(self, raw: Any, path: str, transport: str) -> Apache:
        a = self.mapping(raw, path, {"dir", "ctl", "port", "vhost_mode", "vhost_owner", "vhost_group"})
        ctl = words(self.string(a.get("ctl", "apache2ctl"), f"{path}/ctl"))
        apache_dir = self.host_path(a.get("dir", "/etc/apache2"), f"{path}/dir", transport)
        if ctl == ("builtin",):
            if transport != "local":
                raise self.fail(f"{path}/ctl", "builtin is deployer's own Apache on this machine: only for"
                                " transport: local")
            ctl = ("/bin/sh", str(LOCAL_APACHE_CTL), apache_dir)
        elif "/" in ctl[0]:
            # A path, e.g. tools/local-apache2ctl beside targets.yaml; a bare
            # name (apache2ctl, sudo) is looked up on the host's PATH.
            ctl = (self.host_path(ctl[0], f"{path}/ctl", transport), *ctl[1:])
        return Apache(
            dir=apache_dir, ctl=ctl, port=self.integer(a.get("port", 80), f"{path}/port", 1, 65535),
            vhost_mode=self.private_mode(a.get("vhost_mode", "0640"), f"{path}/vhost_mode"),
            vhost_owner=self.account(a.get("vhost_owner"), f"{path}/vhost_owner"),
            vhost_group=self.account(a.get("vhost_group"), f"{path}/vhost_group"),
        )

    def private_mode(self, value: Any, path: str) -> int:
        # Written as in chmod; an unquoted 0640 is read as YAML wrote it.
        text = value.text if isinstance(value, _Int) else value
        if not isinstance(text, str) or not re.fullmatch(r"0?[0-7]{3}", text):
            got = repr(text) if isinstance(text, str) else _kind(value)
            raise self.fail(path, f"expected an octal mode such as \"0640\", got {got}")
        mode = int(text, 8)
        if mode & ~0o660 or not mode & 0o400:
            raise self.fail(path, f"{text}: the owner must read it, and nobody else but the group may"
                            " (no execute bits): e.g. 0600 or 0640")
        return mode

    def account(self, value: Any, path: str) -> str:
        if value is None:
            return ""
        text = value.text if isinstance(value, _Int) else value
        if not isinstance(text, str) or not re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?|[0-9]+", text):
            raise self.fail(path, f"expected a user or group name or number, got {_kind(value)}")
        return text

    def health(self, raw: Any, path: str, port: int) -> Health | None:
        if raw is None:
            return None
        h = self.mapping(raw, path, {"path", "status", "timeout", "port"})
        url_path = self.string(h.get("path"), f"{path}/path")
        if not re.fullmatch(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*", url_path):
            raise self.fail(f"{path}/path", f"expected a URL path such as /health, got {url_path!r}")
        return Health(path=url_path, status=self.integer(h.get("status", 200), f"{path}/status", 100, 599),
                      timeout=self.number(h.get("timeout", 30), f"{path}/timeout"),
                      port=self.integer(h.get("port", port), f"{path}/port", 1, 65535))

    def shared(self, raw: Any, path: str, transport: str, deploy_root: Any) -> Shared:
        s = self.mapping(raw, path, {"root", "dirs", "files", "group"})
        dirs, files = (tuple(self.shared_path(v, f"{path}/{kind}/{i}")
                             for i, v in enumerate(self.strings(s.get(kind, []), f"{path}/{kind}")))
                       for kind in ("dirs", "files"))
        every = dirs + files
        if len(set(every)) != len(every):
            raise self.fail(path, "a path is named twice")
        for a in every:
            for b in every:
                if b.startswith(a + "/"):
                    raise self.fail(path, f"{b!r} is inside {a!r}: name only the outer one")
        return Shared(root=self.deploy_root(s.get("root", deploy_root), f"{path}/root", transport),
                      dirs=dirs, files=files, group=self.account(s.get("group"), f"{path}/group"))

    def shared_path(self, value: str, path: str) -> str:
        """A path inside every release: relative, plain, not one deployer keeps there."""
        norm = posixpath.normpath(value)
        problem = names.value_problem(value)
        if problem:
            raise self.fail(path, f"{value!r} {problem}")
        if value.startswith("/") or norm == "." or norm.startswith("../") or norm == ".." or "/../" in value:
            raise self.fail(path, f"expected a path inside the release, such as media or var/db, got {value!r}")
        if norm.split("/")[0].startswith(".deployer"):
            raise self.fail(path, f"{value!r} is a name deployer keeps in every release")
        return norm

    def package(self, raw: Any, path: str) -> Package:
        p = self.mapping(raw, path, {"source", "exclude", "include"})
        source = self.absolute(p.get("source", "."), f"{path}/source")
        if self.check_environment and not os.path.isdir(source):
            self.lacks(f"{path}/source", f"directory not found: {source}", "source")
        return Package(source=source, exclude=self.strings(p.get("exclude", []), f"{path}/exclude"),
                       include=self.strings(p.get("include", []), f"{path}/include"))

    def vars(self, raw: Any, path: str) -> dict[str, Var]:
        out = {}
        for key, value in self.mapping(raw, path).items():
            vpath = f"{path}/{key}"
            try:
                names.token_name(key)
            except UsageError as e:
                raise self.fail(vpath, str(e)) from None
            if key in BUILTIN_TOKENS:
                raise self.fail(vpath, f"{key} is set by deployer and cannot be overridden")
            out[key] = self.var(value, vpath, key)
        return out

    def var(self, value: Any, path: str, name: str) -> Var:
        if isinstance(value, bool) or value is None:
            raise self.fail(path, f"{_kind(value)} is not a value for a template; quote it")
        if isinstance(value, (_Int, _Float)):
            return Var(self.value(value.text, path))
        if isinstance(value, (str, int, float)):
            return Var(self.value(str(value), path))
        v = self.mapping(value, path, {"value", "env", "secret"})
        secret = self.boolean(v.get("secret", False), f"{path}/secret")
        if ("value" in v) == ("env" in v):
            raise self.fail(path, "expected exactly one of value or env")
        if "env" in v:
            env = self.string(v["env"], f"{path}/env")
            value = os.environ.get(env)
            if value is None and self.check_environment:
                self.lacks(f"{path}/env", f"environment variable {env} is not set", "value", name)
                # Only a dry run gets here: it shows where the value would go.
                value = f"<{env}: not set here>"
            value = self.value(value or "", f"{path}/env", f"environment variable {env}")
            return Var(value, secret)
        return Var(self.var(v["value"], f"{path}/value", name).value, secret)

    def value(self, text: str, path: str, what: str = "value") -> str:
        problem = names.value_problem(text)
        if problem:
            raise self.fail(path, f"{what} {problem}")
        return text

    def hook(self, raw: Any, path: str) -> Hook:
        if isinstance(raw, str):
            raw = {"run": raw}
        h = self.mapping(raw, path, {"run", "on"})
        return Hook(
            run=self.string(h.get("run"), f"{path}/run"),
            on=self.string(h.get("on", "all"), f"{path}/on", HOOK_PLACES),
        )

    def hooks(self, raw: Any, path: str) -> dict[str, tuple[Hook, ...]]:
        out = {}
        for stage, items in self.mapping(raw, path).items():
            if not isinstance(items, list):
                items = [items]
            out[stage] = tuple(self.hook(item, f"{path}/{stage}/{i}") for i, item in enumerate(items))
        return out

    def pipeline(self, pipeline, before, after, path) -> tuple[str, ...]:
        # Entry-point stages are checked when the plan is built; here only
        # duplicates and hooks on stages that will not run are caught.
        seen = set()
        for i, name in enumerate(pipeline):
            if name in seen:
                raise self.fail(f"{path}/pipeline/{i}", f"stage {name!r} listed twice")
            seen.add(name)
        for when, hooks in (("before", before), ("after", after)):
            for stage in hooks:
                if stage not in seen:
                    raise self.fail(f"{path}/hooks/{when}/{stage}", "no such stage in the pipeline")
        return pipeline


def _join(path: str, key: str) -> str:
    return f"{path}/{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if value == "":
        return "an empty string"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
