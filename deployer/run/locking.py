"""Taking the instance's lock on every host: on the first host first; the
others read "go" on their stdin once it is taken there ("stop" if it is
not), so two runs can never each hold a part and wait for the other."""

import io
import threading

from deployer import steps
from deployer.connectors.result import Result
from deployer.remote import instance
from deployer.run import session


class Locking:
    def __init__(self):
        self.lock = threading.Lock()
        self.asked: set[str] = set()  # the hosts asked to take it: the run's end releases it there
        self.first: bool | None = None  # whether the first host took it; None: not known yet
        self.held_by: list[str] = []  # what hosts said of the run that holds it, if not this one
        self.bell = session.Bell()  # wakes the others once the first host has answered

    def entries(self, step: steps.Lock, host: str, timeout: float) -> list[session.Made]:
        first = host == step.hosts[0]
        with self.lock:
            self.asked.add(host)
        data = None if first else self.bell.deferred(self.input)
        entry = session.Entry(step.command(first).line(), timeout=timeout + step.wait, data=data)
        return [session.Made(entry, then=lambda result: self.taken(first, result))]

    def taken(self, first: bool, result: Result) -> None:
        with self.lock:
            if first:
                self.first = result.ok
            if "locked by " in result.stderr:
                self.held_by.append(result.stderr)
        if first:
            self.bell.ring()  # the others wait on the first host's answer alone

    def input(self) -> session.Piece | None:
        """The lock's stdin on the hosts after the first; None until known."""
        with self.lock:
            go = self.first
        if go is None:
            return None
        data = b"go\n" if go else b"stop\n"
        return session.Piece(len(data), lambda: io.BytesIO(data))

    def ended(self, host: str, first_host: bool) -> None:
        """`host`'s session is over: if it was the first host's and it said
        nothing of the lock, the others stop waiting for it."""
        with self.lock:
            if first_host and self.first is None:
                self.first = False
        if first_host:
            self.bell.ring()

    def close(self) -> None:
        self.bell.close()

    def gone_holder(self) -> str | None:
        """The id of the run that holds the instance's lock, if it ran on this
        machine and is gone (killed): its lock and leftovers can be undone."""
        found = {instance.holder_here(text) for text in self.held_by}
        if len(found) == 1:
            here = found.pop()
            if here is not None and here[1] is None:
                return here[0]
        return None
