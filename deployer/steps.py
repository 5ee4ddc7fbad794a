"""The steps a plan is made of: frozen data, printed by dry-run, run by the executor.

A step never carries an answer from a remote host; anything that must be
checked remotely (`apache2ctl configtest`) is itself a step. `hosts` empty
means the step runs on this machine (the runner).
"""

from dataclasses import dataclass, field

from deployer.quoting import Command


@dataclass(frozen=True)
class Step:
    title: str
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Build(Step):
    """Make the release tarball of `source` at `dest` (on the runner)."""

    source: str = ""
    exclude: tuple[str, ...] = ()
    dest: str = ""


@dataclass(frozen=True)
class OpenVpn(Step):
    """Start OpenVPN from `config`; it stays up until the deploy ends, however it ends."""

    config: str = ""
    workdir: str = ""
    timeout: float = 30.0


@dataclass(frozen=True)
class Run(Step):
    """Run a command; if a later step fails before the commit point, run `undo`."""

    command: Command = field(default_factory=Command)
    undo: Command | None = None


@dataclass(frozen=True)
class Upload(Step):
    """Copy a file from the runner; `undo` removes it, even if the copy broke off."""

    local: str = ""
    remote: str = ""
    undo: Command = field(default_factory=Command)


@dataclass(frozen=True)
class Install(Step):
    """Write `content` to `path` atomically; on a later failure, put back what was there."""

    path: str = ""
    content: str = field(default="", repr=False)
    mode: int = 0o644


@dataclass(frozen=True)
class Link(Step):
    """Point the symlink `path` at `target` atomically (rename over it).

    `commit` marks the point of no return: once it has run on every host,
    undo information is dropped, since the new release is live.
    """

    path: str = ""
    target: str = ""
    commit: bool = False


@dataclass(frozen=True)
class Plan:
    """A deploy: stages in order, each a tuple of steps."""

    stages: tuple[tuple[str, tuple[Step, ...]], ...]

    def steps(self):
        for stage, steps in self.stages:
            for step in steps:
                yield stage, step
