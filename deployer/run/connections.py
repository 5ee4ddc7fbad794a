"""The run's connections to its hosts: opened all at once before the first
remote step changes anything, and a host whose connection died connected
to again, once, for what must still run there (the rollback, tidying)."""

from deployer.config import LOCAL_HOST, Target
from deployer.connectors.base import Transport
from deployer.connectors.local import LocalTransport
from deployer.connectors.result import Result
from deployer.connectors.ssh import ERRORS, SshTransport, read_known_hosts
from deployer.errors import StepFailed
from deployer.run.failures import describe_error
from deployer.run.fanout import Fanout

UNDO_TIMEOUT = 120.0  # seconds for one undo or tidying command on one host


class Connections:
    def __init__(self, target: Target, local: LocalTransport, fanout: Fanout, every_host: bool):
        self.target = target
        self.local = local
        self.fanout = fanout
        # Read-only commands (check, preview) run on every host that answers,
        # and fail only on those that do not; a run that changes hosts runs
        # nowhere unless every host answers.
        self.every_host = every_host
        # How many hosts, the first one never, may fail to connect: they
        # are left out of the run (its max_failed, set by the executor).
        self.budget = 0
        self.transports: dict[str, Transport] = {}
        self.opened: list[SshTransport] = []

    def __getitem__(self, host: str) -> Transport:
        return self.transports[host]

    def connect(self) -> dict[str, str]:
        """Every host connected to, all at once; those that did not answer,
        with why, when the run may go on without them (else it fails)."""
        if self.transports:
            return {}
        if self.target.transport == "local":
            self.transports[LOCAL_HOST.name] = self.local
            return {}

        keys = read_known_hosts(self.target.known_hosts)

        def open_one(host) -> str | None:
            t = SshTransport(host, self.target.known_hosts, self.target.connect_timeout, self.fanout.stop, keys)
            try:
                t.open()
            except StepFailed as e:
                return str(e)
            self.opened.append(t)  # list.append: one bytecode, safe across threads
            return None

        found = self.fanout.map(self.target.hosts, open_one)
        missing = {h.name: e for h, e in zip(self.target.hosts, found, strict=True) if e}
        if missing and not self.every_host and (found[0] or len(missing) > self.budget):
            raise StepFailed("cannot connect to every host; nothing was changed on any host:\n  "
                             + "\n  ".join(missing.values()))
        self.transports.update({t.host.name: t for t in self.opened})
        self.transports.update({h: Unreachable(e) for h, e in missing.items()})
        # Why, without the host's name, which each reason starts with.
        return {} if self.every_host else {h: e.removeprefix(f"{h}: ") for h, e in missing.items()}

    def run_quietly(self, host: str, line: str) -> Result:
        """For rollback and tidying, which go on past a host that fails; a host
        whose connection died is connected to again, once."""
        t = self.transports[host]
        try:
            return t.run(line, timeout=UNDO_TIMEOUT)
        except (StepFailed, *ERRORS) as e:
            if not t.reconnect():
                return Result(1, "", describe_error(e))
        try:
            return t.run(line, timeout=UNDO_TIMEOUT)
        except (StepFailed, *ERRORS) as e:
            return Result(1, "", describe_error(e))

    def close(self) -> None:
        for t in self.opened:
            t.close()


class Unreachable:
    """The transport of a host that did not answer when an every-host run
    connected: each command on it fails with the reason, so that host's
    step fails while the others' results stand."""

    def __init__(self, reason: str):
        self.reason = reason

    def run(self, line, stdin=b"", timeout=None, out=None, err=None) -> Result:
        raise StepFailed(self.reason)

    def reconnect(self) -> bool:
        return False

    def close(self) -> None:
        pass
