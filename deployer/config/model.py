"""targets.yaml as the rest of deployer sees it: frozen dataclasses, made by
the loader (loader.py) once the file has passed its checks (schema.py,
build.py), and the names every part shares."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CATCH_ALL = "*"
# Hosts at once, by default. Each host costs the runner a thread, an SSH
# connection and paramiko's own reader thread, and its CPU encrypts every
# byte for every session: past a few dozen, more at once only adds
# contention on a build agent's cores (docs/explanation/speed.md: "Hosts at once").
MAX_PARALLEL = 32
DEFAULT_PIPELINE = ("package", "vpn", "upload", "render", "migrate", "restart")
HOOK_PLACES = ("all", "first", "local")
# VENV and PYTHON (the release's virtualenv and its python) only when the
# target has `python:`.
BUILTIN_TOKENS = ("HOSTNAME", "DEPLOY_PATH", "CONFIG_NAME", "HTTP_PORT", "VENV", "PYTHON")
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


# Seconds a tunnel stays up after the last run that used it, for a next run
# on this machine (as ssh's ControlPersist): enough for the next deploy of a
# script, a build chain or a queue that starts at once, and for two deploys
# started together, to find it up (no new start, no new session on the
# server); short enough that the VPN is closed within seconds of the last
# run whatever happens, and that a point-to-point server's one peer slot
# is free again soon for another machine.
VPN_LINGER = 10.0
VPN_LINGER_MAX = 3600.0


@dataclass(frozen=True)
class Vpn:
    kind: str = "none"
    config: str | None = None
    timeout: float = 30.0
    linger: float = VPN_LINGER


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
    create: tuple[str, ...] = ()  # made empty if missing (a SQLite database)
    group: str = ""  # the group of the directories it makes (group-writable, setgid)
    writable: tuple[str, ...] = ()  # directories kept writable for `group`, all of them

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path of a release that is a link into the shared directory."""
        return self.dirs + self.writable + self.files + self.create


@dataclass(frozen=True)
class ArtifactStore:
    """An S3 (or S3-compatible) bucket of the private network: objects
    `prefix` + sha256; `endpoint` None is AWS's own, `region` None the
    AWS configuration's."""

    bucket: str
    prefix: str = ""  # empty, or ending in /
    endpoint: str | None = None
    region: str | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class Health:
    """Asked of every host after the reload: GET `path` with the instance's
    Host header (and `headers`) must answer one of `statuses` within
    `timeout` seconds."""

    path: str
    statuses: tuple[int, ...] = (200,)
    timeout: float = 30.0
    port: int = 80
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Build:
    """Commands run on this machine before the source is hashed and
    packaged: what they make goes into the release. With `copy_source`, they run in
    a copy of the source (without what the safe defaults withhold), which
    is packaged instead, and the source is left as it was."""

    run: tuple[str, ...]
    copy_source: bool = False
    timeout: float = 1800.0


@dataclass(frozen=True)
class Python:
    """The app's Python packages: resolved and downloaded as wheels on this
    machine for the hosts' interpreter (`version` on `platform`), shipped
    with the release, and installed on each host into a virtualenv of
    `interpreter` with no index, kept by what it was built from."""

    requirements: str  # on this machine: a requirements file, or uv.lock
    version: str  # the hosts' interpreter's, exactly: 3.11.2
    interpreter: str = "/usr/bin/python3"  # on the hosts
    platform: str = "manylinux_2_28_x86_64"  # the newest wheel platform the hosts run
    index_url: str = ""  # "": the resolver's default (PyPI)
    find_links: tuple[str, ...] = ()
    no_index: bool = False

    @property
    def abi(self) -> str:
        """cp311 for 3.11.2: CPython's tag for wheels built for that version."""
        major, minor = self.version.split(".")[:2]
        return f"cp{major}{minor}"


@dataclass(frozen=True)
class RenderedFile:
    """A file of settings or secrets (.env, local_settings.py) rendered from
    `template` (on this machine) with the vars, into every new release at
    `path` (or, `shared`, the shared folder, linked from there); written
    with `mode` and, if set, `owner` and `group`."""

    template: str
    path: str
    mode: int = 0o640
    owner: str = ""
    group: str = ""
    shared: bool = False  # in the shared folder, linked into the release

    @property
    def chown(self) -> str:
        return f"{self.owner}:{self.group}" if self.group else self.owner


@dataclass(frozen=True)
class Var:
    value: str
    secret: bool = False
    source: str = ""  # the environment variable it was read from
    export: bool = False  # in the environment of migrate and hooks


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
    # The switch and reload go in batches of these sizes (a number of hosts
    # or "N%"; see plan/rollout.py); at most `max_failed` hosts may fail.
    batches: tuple[int | str, ...]
    batch_pause: float
    max_failed: int | str
    relay: bool
    relay_limit: int  # hosts reading the artifact from the first one at once
    link_from_other_instances: bool  # a new instance starts from another's live release
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
    build: Build | None
    python: Python | None
    files: tuple[RenderedFile, ...]
    vars: dict[str, Var] = field(hash=False)
    pipeline: tuple[str, ...]
    stages: dict[str, Hook] = field(hash=False)
    before: dict[str, tuple[Hook, ...]] = field(hash=False)
    after: dict[str, tuple[Hook, ...]] = field(hash=False)
    first_deploy: tuple[Hook, ...] = ()  # where the instance has no live release yet, before migrate
    artifact_store: ArtifactStore | None = None  # where the hosts read the artifact, if not from the runner
    on_destroy: tuple[Hook, ...] = ()  # by `deployer destroy`, once the site is no longer served


@dataclass(frozen=True)
class Missing:
    """Something a real run needs that this machine lacks: a file, or an
    environment variable. A real run fails on the first one (exit 2); a dry
    run lists them all. `kind` says what a dry run can do without it:
    "connect" (a key, known_hosts, the VPN file: needed to reach the hosts),
    "template", "source" (the package source), "value" (of the var `var`),
    "library" (a Python package a feature needs: botocore for artifact_store)."""

    key: str  # the key path, as errors name it: targets/alpha/vpn/config
    problem: str
    kind: str
    var: str = ""

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


class YamlInt(int):
    """An integer that remembers how it was written: under vars:, `0755`,
    `12:30` and `0x1F` are the strings a template means, not 493, 750, 31."""

    text: str


class YamlFloat(float):
    text: str


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    if value == "":
        return "an empty string"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", YamlInt: "an integer", YamlFloat: "a number"}.get(
        type(value), type(value).__name__)
