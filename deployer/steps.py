"""The steps a plan is made of: frozen data, printed by dry-run, run by the executor.

A step never carries an answer from a remote host; anything that must be
checked remotely (`apache2ctl configtest`) is itself a step. `hosts` empty
means the step runs on this machine (the runner).
"""

from dataclasses import dataclass, field
from typing import ClassVar

from deployer.artifact import packaging
from deployer.config.model import VPN_LINGER, ArtifactStore, Python
from deployer.quoting import Command
from deployer.remote import hostscripts


@dataclass(frozen=True)
class Step:
    title: str
    hosts: tuple[str, ...] = ()
    # Starts only once every step before it has ended on every host. A step
    # that does not wait runs in the same SSH session as the one before it
    # (see run/session.py): right for a change the undo log can take back, or
    # a check; not for a command whose effects nothing undoes (migrate, a
    # hook), which must not start while another host may still fail.
    waits: bool = True
    # Of the kind, not a field: whether a run that began it changed a host.
    changes: ClassVar[bool] = True


@dataclass(frozen=True)
class Build(Step):
    """Make the release tarball of `source` at `dest` (on the runner)."""

    source: str = ""
    rules: packaging.Rules = field(default_factory=packaging.Rules)
    dest: str = ""
    # What the plan saw (the release id is its digest); the build fails if
    # the tree differs by then.
    manifest: packaging.Manifest | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CopySource(Step):
    """Copy `source` into the new folder `dest` (on the runner) for the
    build to run in: everything but what the safe defaults of `rules`
    withhold, which must never reach a build's output either."""

    source: str = ""
    dest: str = ""
    rules: packaging.Rules = field(default_factory=packaging.Rules)


@dataclass(frozen=True)
class Wheels(Step):
    """Resolve the app's requirements for the hosts' interpreter and download
    a wheel of each, on the runner, into the set `dest` (see
    artifact/wheels.py); a whole set already there is kept as it is."""

    python: Python | None = None
    dest: str = ""
    timeout: float | None = None


@dataclass(frozen=True)
class OpenVpn(Step):
    """The tunnel of `config` up (see deployer/vpn: shared with every deploy on this
    machine that uses it) until the deploy ends, however it ends, and `linger`
    seconds more if no other run uses it by then. A tunnel to `probe` (the
    first host) already up, and not ours, is used as it is."""

    config: str = ""
    timeout: float = 30.0
    probe: str = ""
    linger: float = VPN_LINGER


@dataclass(frozen=True)
class Run(Step):
    """Run a command; if the run fails later, run `undo`."""

    command: Command = field(default_factory=Command)
    undo: Command | None = None
    keep: Command | None = None  # once the run has succeeded: what `undo` would have needed goes
    # Bytes of its stdout kept (the end), None for the default: a read whose
    # whole answer matters (a vhost, a file list) keeps more than a log's tail.
    output_limit: int | None = None
    timeout: float | None = None  # seconds; None: the target's step_timeout
    # If the run is undone after this step began on a host, what runs there
    # once the undo is done: a reload then reads back what was.
    after_undo: "Run | None" = None
    # `undo` is safe whatever point `command` stopped at (it finds what the
    # command made, if anything): recorded before the command starts, so a
    # command that fails half way is undone too.
    undo_safe: bool = False
    # A command of the user's (migrate, a hook) whose effects no undo
    # reverts: a run undone after it began says so in its last line.
    lasting: bool = False


# On a host other than the first, a lock is taken only once the first
# host's is: a run that holds it there has released the others already, but
# for a release the runner stopped waiting for (see remote/sh/lock.sh), so
# waiting this long for it is enough. A run that was killed holds it for
# good: a re-run waits this long before it takes that run's lock over.
OTHER_HOSTS_WAIT = 5


@dataclass(frozen=True)
class Lock(Step):
    """The instance's lock on every host, before anything changes there: on
    the first host first, waiting up to `wait` seconds for another run to
    release it, then on the others. It is released when the run ends,
    however it ends, with a line (`finish`) in the instance's history."""

    state: str = ""
    run_id: str = ""
    owner: str = ""  # who holds it, for people: shown to a run that finds it held
    wait: int = 0
    hint: str = ""  # what to do about a lock that is held
    takes_over: str = ""  # the id of a run that is gone, whose lock this one takes over
    changes: ClassVar[bool] = False
    # The run removes the instance: if it succeeds and these paths are gone
    # (its code, its shared files unless kept), its state (history
    # included) goes with the lock, and no trace of the instance is left.
    forgets: tuple[str, ...] = ()

    def command(self, first: bool) -> Command:
        wait = self.wait if first else max(self.wait, OTHER_HOSTS_WAIT)
        return hostscripts.lock(self.state, self.run_id, self.owner, wait, not first, self.hint, self.takes_over)

    def finish(self, line: str, done: bool) -> Command:
        return hostscripts.finish(self.state, self.run_id, line, forget=self.forgets if done else ())


@dataclass(frozen=True)
class Relay:
    """The artifact crosses the tunnel once: `source` keeps a copy of it as
    it unpacks and lets a one-time key read that copy; every other host
    that would be sent the same tarball runs `fetch`, which reads it from
    `source` over SSH inside the private network, and unpacks that instead.
    `close` withdraws the key and the copy, in the source's next session
    and on failure."""

    source: str
    fetch: Command = field(default_factory=Command)
    close: Command = field(default_factory=Command)
    limit: int = 8  # hosts reading from `source` at once


@dataclass(frozen=True)
class Store:
    """The tunnel crossed once, through an object store: the runner puts the
    artifact in `store` once, and every host runs `fetch`, which reads it
    with a presigned URL (see run/stored.py and sh/fetch-url.sh)."""

    store: ArtifactStore = field(default_factory=lambda: ArtifactStore(""))
    fetch: Command = field(default_factory=Command)


@dataclass(frozen=True)
class Upload(Step):
    """Make a new release on the host from the artifact `build` makes, in one
    session: `state` says what the live release holds (`state_first` on the
    first host, which also sends its file list), then `command` reads only
    what differs from it on stdin, checks its sha256 and links the rest from
    the live release. `undo` removes what this run made, whatever point the
    upload reached. With `relay`, most hosts read the artifact from the
    first one instead of from the runner; with `store`, every host reads it
    from an object store."""

    waits: bool = False
    build: Build = field(default_factory=Build)
    state_first: Command = field(default_factory=Command)
    state: Command = field(default_factory=Command)
    command: Command = field(default_factory=Command)
    undo: Command = field(default_factory=Command)
    relay: Relay | None = None
    store: Store | None = None  # instead of a relay

    @property
    def local(self) -> str:
        return self.build.dest


@dataclass(frozen=True)
class Install(Step):
    """Write `content` to `path` atomically, with its mode and owner; on a later
    failure, put back what was there (the same file: content, mode, owner).

    A file already at `path` is replaced only if its first line is `mark`,
    the line deployer writes first: never a file it did not write. `work`
    is a directory beside `path`, random per run, holding what the undo
    needs until the deploy keeps the change.
    """

    waits: bool = False
    path: str = ""
    content: str = field(default="", repr=False)
    mark: str = ""
    mode: int = 0o640
    owner: str = ""  # for chown: "user", "user:group", ":group" or "" to leave it
    work: str = ""
    # A file on the host to copy instead of `content` (a rollback installs
    # the vhost a release was deployed with); it must begin with `mark` too.
    source: str = ""

    def command(self) -> Command:
        return hostscripts.install(self.path, self.mark, self.mode, self.owner, self.work,
                                   len(self.content.encode()), self.source)

    def undo(self) -> Command:
        return hostscripts.restore(self.path, self.work)

    def keep(self) -> Command:
        return hostscripts.forget(self.work)


@dataclass(frozen=True)
class Link(Step):
    """Point the symlink `path` at `target` atomically; on a later failure,
    point it back (or remove it, if there was none). `work` is a directory
    beside `path`, random per run, holding what the undo needs.

    `commit` marks the switch to the new release (the dry run says so).
    Until the run ends it is undone like any other change.
    """

    waits: bool = False
    path: str = ""
    target: str = ""
    work: str = ""
    commit: bool = False

    def command(self) -> Command:
        return hostscripts.relink(self.path, self.target, self.work)

    def undo(self) -> Command:
        return hostscripts.restore_link(self.path, self.work)

    def keep(self) -> Command:
        return hostscripts.forget(self.work)


@dataclass(frozen=True)
class HealthCheck(Step):
    """From the runner, through the VPN: GET `path` on each host (at the
    address in `addresses`, same order as `hosts`) with Host: `host_header`
    and `headers`, until it answers one of `statuses`, for at most `timeout`
    seconds per host; another 3xx or 4xx that lasts (health.SETTLED) fails sooner."""

    addresses: tuple[str, ...] = ()
    port: int = 80
    path: str = "/"
    host_header: str = ""
    statuses: tuple[int, ...] = (200,)
    timeout: float = 30.0
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def expects(self) -> str:
        return " or ".join(map(str, self.statuses))


@dataclass(frozen=True)
class Pause(Step):
    """Wait `seconds` on this machine (between two batches of hosts); an
    interrupt ends it at once."""

    seconds: float = 0.0
    changes: ClassVar[bool] = False


@dataclass(frozen=True)
class Plan:
    """A deploy: stages in order, each a tuple of steps; the instance's
    `lock`, taken before the first step on a host; what runs only once the
    run has succeeded (`after`: pruning old releases), whose failure is
    reported but undoes nothing; and how many hosts may fail
    (`max_failed`): within it, a host that fails a step is put back and
    left out of the rest of the run, the lock's first host never."""

    stages: tuple[tuple[str, tuple[Step, ...]], ...]
    lock: Lock | None = None
    after: tuple[Run, ...] = ()
    max_failed: int = 0

    def steps(self):
        for stage, steps in self.stages:
            for step in steps:
                yield stage, step


def of_kind(table: dict, step: Step):
    """`table`'s entry for the kind of `step`: its class, or the nearest base
    class listed (a plugin's subclass of Run runs as a Run); None if none is.
    The executor and the printers find how to run and show a step so: a new
    kind adds an entry to each table, and no `isinstance` chain."""
    return next((table[cls] for cls in type(step).__mro__ if cls in table), None)
