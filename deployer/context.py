"""Everything a stage needs to make its plan, passed explicitly (no globals)."""

import os
import posixpath
import secrets
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime

from deployer import packaging
from deployer.config import Target


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

    @property
    def package_rules(self) -> packaging.Rules:
        return _rules(self.target)

    @property
    def vars(self) -> dict[str, str]:
        """Every template token: the user's values and the three deployer sets."""
        return {**self.values, "CONFIG_NAME": self.name, "HOSTNAME": self.hostname,
                "DEPLOY_PATH": self.deploy_path}

    @property
    def uploads(self) -> bool:
        """Whether this run brings a new release (else commands run in the live one)."""
        return "upload" in self.stages

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
        }


def _rules(target: Target) -> packaging.Rules:
    p = target.package
    return packaging.Rules(exclude=p.exclude, include=p.include, protected=p.protected)


def make(name: str, hostname: str, target: Target, overrides: dict[str, str],
         stages: tuple[str, ...], now: datetime | None = None,
         workdir: str | None = None) -> Context:
    """Build the context: hashes the source tree (read-only) for the release id."""
    now = now or datetime.now(UTC)
    manifest = packaging.scan(target.package.source, _rules(target))
    release = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{manifest.digest[:12]}"
    values = {k: v.value for k, v in target.vars.items()}
    values.update(overrides)
    # Secret by name: a value given with --var for a secret var is masked too.
    masked = frozenset(values[k] for k, v in target.vars.items() if v.secret and values[k])
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
        secrets=masked,
        stages=stages,
        run_id=secrets.token_hex(8),
        manifest=manifest,
    )
