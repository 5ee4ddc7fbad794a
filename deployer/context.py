"""Everything a stage needs to make its plan, passed explicitly (no globals)."""

import getpass
import os
import posixpath
import re
import secrets
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from deployer.artifact import packaging, wheels
from deployer.config import Target
from deployer.quoting import quoted


@dataclass(frozen=True)
class Context:
    name: str
    hostname: str
    target: Target
    release: str
    workdir: str
    values: dict[str, str] = field(hash=False)  # vars: and --var, merged
    secrets: frozenset[str] = frozenset()
    stages: tuple[str, ...] = ()
    # Random per run: the names deployer creates beside live files on hosts
    # cannot be guessed, so nobody can plant a file or link there first.
    run_id: str = ""
    manifest: packaging.Manifest | None = field(default=None, hash=False)
    action: str = "deploy"  # or "rollback": what the lock and the history say
    lock_wait: int = 0  # seconds to wait for another run's lock on the instance
    # Who runs it, for the lock and the history: user@machine (pid), the
    # CI build if any, and the source's git commit if it is a checkout.
    who: str = ""
    ci: str = ""
    revision: str = ""
    # With `python:`: the hosts' virtualenv for this release (wheels.venv_name),
    # and the set of wheels on this machine that the release carries.
    venv: str = ""
    wheels: str = ""

    @property
    def package_rules(self) -> packaging.Rules:
        return _rules(self.target, self.wheels)

    @property
    def vars(self) -> dict[str, str]:
        """Every template token: the user's values and those deployer sets."""
        python = {"VENV": f"{self.deploy_path}/{VENV_LINK}",
                  "PYTHON": f"{self.deploy_path}/{VENV_LINK}/bin/python"} if self.target.python else {}
        return {**self.values, "CONFIG_NAME": self.name, "HOSTNAME": self.hostname,
                "DEPLOY_PATH": self.deploy_path, "HTTP_PORT": str(self.target.apache.port), **python}

    @property
    def exported(self) -> dict[str, str]:
        """The vars exported to migrate and hooks, with their values."""
        return {k: self.values[k] for k, v in self.target.vars.items() if v.export and k in self.values}

    @property
    def venvs_dir(self) -> str:
        """The hosts' virtualenvs, shared by every instance under the deploy root."""
        return posixpath.join(self.target.deploy_root, ".deployer-venvs")

    @property
    def uploads(self) -> bool:
        """Whether this run brings a new release (else commands run in the live one)."""
        return "upload" in self.stages

    @property
    def switches(self) -> bool:
        """Whether the run points the live path at `release`."""
        return self.uploads or self.action == "rollback"

    @property
    def code_path(self) -> str:
        return self.release_path if self.uploads else self.deploy_path

    @property
    def deploy_path(self) -> str:
        """The live code of this instance: a symlink to the current release."""
        return posixpath.join(self.target.deploy_root, self.name)

    @property
    def releases_dir(self) -> str:
        # Beside the live path; a dot cannot occur in a config name, so no
        # other instance's DEPLOY_PATH can collide with it.
        return f"{self.deploy_path}.releases"

    @property
    def shared_dir(self) -> str:
        """What outlives a release (see config.Shared)."""
        return posixpath.join(self.target.shared.root, f"{self.name}.shared")

    @property
    def state_dir(self) -> str:
        """The instance's lock and history, beside its releases."""
        return f"{self.deploy_path}.deployer"

    @property
    def release_path(self) -> str:
        return posixpath.join(self.releases_dir, self.release)

    @property
    def tarball(self) -> str:
        return os.path.join(self.workdir, f"{self.name}-{self.release}.tar.gz")

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.target.hosts)

    def environment(self) -> dict[str, str]:
        """Exported to migrate, hooks and shell stages."""
        return {
            "CONFIG_NAME": self.name,
            "HOSTNAME": self.hostname,
            "DEPLOY_PATH": self.deploy_path,
            "RELEASE": self.release,
            "RELEASE_PATH": self.code_path,
            "SHARED_PATH": self.shared_dir,
            **({"VIRTUAL_ENV": posixpath.join(self.code_path, VENV_LINK)} if self.target.python else {}),
        }


# In every release of a target with `python:`: the link to its virtualenv.
VENV_LINK = ".venv"
# In every release, if a var is exported: what migrate and hooks read first.
ENV_FILE = ".deployer-env"


def history_line(ctx: Context, outcome: str, now: datetime | None = None) -> str:
    """One line of the instance's history on each host, tab-separated:
    time (UTC), action, outcome, release, hostname, who, CI build, revision,
    run id. The values are made single-line and tab-free here."""
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    # The release only of a run that makes it live: prune and rollback read
    # the history for the release that was live before the current one.
    release = ctx.release if ctx.switches or ctx.action == "unlock" else "-"
    fields = (when, ctx.action, outcome, release, ctx.hostname, ctx.who, ctx.ci or "-",
              ctx.revision or "-", ctx.run_id)
    return "\t".join(_one_line(f) for f in fields)


def lock_owner(ctx: Context) -> str:
    """Who holds the lock, for the person who finds it held."""
    ci = f", {ctx.ci}" if ctx.ci else ""
    return _one_line(f"{ctx.action} of release {ctx.release} by {ctx.who}{ci} (run {ctx.run_id})")


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() and c != "\t" else " " for c in text)[:300]


def who() -> str:
    """user@machine (pid N, process ID): ID (see process_id) tells a later run
    on this machine whether this one is gone."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} (pid {os.getpid()}, process {process_id(os.getpid())})"


def process_id(pid: int) -> str:
    """The kernel's boot, the pid namespace and the process's start time: a
    pid names the same process only with all three the same (two containers
    can share a host name and reuse each other's pids). "" if unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()[:8]
        namespace = os.readlink(f"/proc/{pid}/ns/pid").strip("pid:[]")
        with open(f"/proc/{pid}/stat") as f:
            started = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
    return f"{boot}-{namespace}-{started}"


def ci_build(env: Mapping[str, str]) -> str:
    """The CI build that runs deployer, from what TeamCity (or another CI) sets."""
    if env.get("TEAMCITY_VERSION"):
        name = env.get("TEAMCITY_BUILDCONF_NAME", "")
        return f"TeamCity build {name} #{env.get('BUILD_NUMBER', '?')}".replace("  ", " ")
    if env.get("BUILD_URL"):
        return env["BUILD_URL"]
    if env.get("BUILD_NUMBER"):
        return f"build #{env['BUILD_NUMBER']}"
    return ""


def git_revision(source: str) -> str:
    """The commit the source is checked out at, if it is a git checkout."""
    try:
        r = subprocess.run(["git", "-C", source, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                           text=True, timeout=5, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def _rules(target: Target, wheel_set: str) -> packaging.Rules:
    p = target.package
    # A shared path of the release is a link to the shared directory: what
    # the source holds there is never packaged (it would hide nothing, and
    # linking it from the live release would reach into the shared one).
    # And the files deployer renders into it: a copy of the source's would only be replaced.
    shared = tuple("/" + re.sub(r"([\\*?\[\]!# ])", r"\\\1", path)
                   for path in (*target.shared.paths, *(f.path for f in target.files)))
    if any(v.export for v in target.vars.values()):
        shared += (f"/{ENV_FILE}",)
    if target.python is None:
        return packaging.Rules(exclude=p.exclude + shared, include=p.include, protected=p.protected)
    # The release's own: its link to the virtualenv, and the wheels (from
    # this machine's set, not from the source: a local .venv is never packaged).
    ours = (f"/{VENV_LINK}", f"/{wheels.SET_DIR}")
    return packaging.Rules(exclude=p.exclude + shared + ours, include=p.include, protected=p.protected,
                           extra=((wheels.SET_DIR, wheel_set),) if wheel_set else ())


# The end of the release id of a dry run on a machine without the package
# source: there is no tree to hash, and this cannot be taken for a digest.
NO_SOURCE_DIGEST = "?" * 12


def make(name: str, hostname: str, target: Target, overrides: dict[str, str],
         stages: tuple[str, ...], now: datetime | None = None,
         workdir: str | None = None, lock_wait: int = 0, scan: bool = True) -> Context:
    """Build the context: hashes the source tree (read-only) for the release id.
    Without `scan` (a dry run on a machine that lacks the source) there is no
    manifest, and the id ends in NO_SOURCE_DIGEST."""
    now = now or datetime.now(UTC)
    wheel_set, venv = _python(target)
    manifest = packaging.scan(target.package.source, _rules(target, wheel_set)) if scan else None
    release = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{manifest.digest[:12] if manifest else NO_SOURCE_DIGEST}"
    values = values_of(target, overrides)
    return Context(
        name=name,
        hostname=hostname,
        target=target,
        release=release,
        # The executor creates it with mkdir (never exist_ok), so a directory
        # planted at this path makes the deploy fail rather than write into it.
        workdir=workdir or os.path.join(
            tempfile.gettempdir(), f"deployer-{name}-{release}-{os.getpid()}"),
        values=values,
        secrets=secret_values(target, overrides),
        stages=stages,
        run_id=secrets.token_hex(8),
        manifest=manifest,
        lock_wait=lock_wait,
        who=who(),
        ci=ci_build(os.environ),
        revision=git_revision(target.package.source),
        venv=venv,
        wheels=wheel_set,
    )


def values_of(target: Target, overrides: dict[str, str]) -> dict[str, str]:
    """Every var's value: vars: in targets.yaml, then --var."""
    return {**{k: v.value for k, v in target.vars.items()}, **overrides}


def secret_values(target: Target, overrides: dict[str, str]) -> frozenset[str]:
    """What every output masks. Secret by name: a value given with --var
    for a secret var is masked too."""
    values = values_of(target, overrides)
    plain = {values[k] for k, v in target.vars.items() if v.secret and values[k]}
    # And as the shell reads it back (.deployer-env): a quote in it splits it there.
    return frozenset(plain | {quoted(s) for s in plain})


def _python(target: Target) -> tuple[str, str]:
    """The set of wheels the release carries (made by the build: see
    artifact/wheels.py), and the name of the hosts' virtualenv for it; for
    a dry run before the set is made, no set and a name of question marks."""
    python = target.python
    if python is None:
        return "", ""
    try:
        made = wheels.set_path(python)
        if wheels.is_whole(made):
            with open(os.path.join(made, "requirements.txt"), "rb") as f:
                return made, wheels.venv_name(python, f.read())
    except OSError:
        pass
    return "", f"{python.version}-{'?' * 16}"


def for_instance(name: str, target: Target, action: str, release: str = "", hostname: str = "",
                 lock_wait: int = 0, run_id: str | None = None) -> Context:
    """The context of a command on an instance's hosts that deploys nothing
    (a rollback, reading its releases): no source tree is read."""
    return Context(
        name=name, hostname=hostname, target=target, release=release,
        workdir=os.path.join(tempfile.gettempdir(),
                             f"deployer-{name}-{action}-{secrets.token_hex(4)}-{os.getpid()}"),
        values={}, action=action, stages=(), run_id=run_id or secrets.token_hex(8), lock_wait=lock_wait,
        who=who(), ci=ci_build(os.environ),
    )
