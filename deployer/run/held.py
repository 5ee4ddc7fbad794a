"""The run's last commands on a host, in the session of its last steps.

What runs on a host once the run is over (what kept changes left for their
undo, old releases pruned, the history line as the lock is released) is
known only then, after the health checks and the later batches: in a
session of its own it would cost each host one more. So the session of a
host's last group of steps ends with an entry (sh/run-end.sh) that reads
those commands on stdin, and waits for them while the run goes on; the
runner sends them at the run's end. Until then the session costs the
runner a thread and an idle channel, and the host an sshd session and a
shell that wait on a read. An interrupt does not stop it: the rollback runs
in sessions of its own, and the run's end then comes as always.

Commands that did not run there (the session had ended: a step failed, its
limit ran out; or they came cut short) run in a session of their own, as
they would have without this. The host echoes a random mark once it has
read them whole, so the runner knows which.
"""

import io
import secrets
import threading
from collections.abc import Callable
from dataclasses import replace

from deployer.connectors.base import ANSWER_TIMEOUT, GRACE
from deployer.connectors.result import Result
from deployer.remote import hostscripts
from deployer.run import interrupts, session

# Past the plan's own limits, how long a session waits for the run's end
# (a rollback on many hosts, hosts in waves of `parallel`): past it, it ends
# and the run's end takes a session of its own.
HOLD_MARGIN = 3600.0


class Held:
    """One host's session, held at its last entry until `give` sends it the
    run's last commands. `seconds` bounds the wait for them; `after` is the
    time they have once given."""

    def __init__(self, seconds: float, after: float):
        self.seconds, self.after = seconds, after
        self.mark = secrets.token_hex(16)
        self.lock = threading.Lock()
        self.script: bytes | None = None
        self.taken = False  # whether the session began reading the script
        self.revoked = False  # given up on: the script must never be taken now
        self.result: Result | None = None  # the last entry's, once it ended
        self.thread: threading.Thread | None = None
        self.bell = session.Bell()  # rung once the script is there: the transport waits on it

    def entry(self, given: Callable[[], None]) -> session.Entry:
        """The session's last entry; `given()` runs once its commands are
        there, in the transport's thread, before they are sent."""
        def piece() -> session.Piece | None:
            with self.lock:
                if self.script is None or self.revoked:
                    return None
                script, self.taken = self.script, True
            given()
            return session.Piece(len(script), lambda: io.BytesIO(script))
        return session.Entry(hostscripts.run_end(self.mark).line(), data=self.bell.deferred(piece),
                             timeout=self.seconds, held=True)

    def start(self, run: Callable[[], object]) -> None:
        """The session, in a thread of its own: it outlives its group's
        steps (the pool's threads are for the steps still to run). What it
        raises is `run`'s to report; here it only ends the thread."""
        def body() -> None:
            interrupts.block_in_thread()
            try:
                run()
            except BaseException as e:  # noqa: BLE001 - reported by `run` (HostSession)
                if self.result is None:
                    self.result = Result(1, "", f"the session ended: {e or type(e).__name__}")
        self.thread = threading.Thread(target=body, name="held", daemon=True)
        self.thread.start()

    def ended(self, result: Result) -> None:
        self.result = result

    def give(self, line: str) -> None:
        """The commands to run (may be "": nothing), once."""
        with self.lock:
            if self.script is None:
                self.script = f"{line}\n# {self.mark}".encode()
        self.bell.ring()

    def wait(self, seconds: float | None = None) -> Result | None:
        """The result of the commands given, or None if they did not run
        there (they must run elsewhere)."""
        if self.thread is not None:
            # Bounded by the session's own limit, `after` from when it has the
            # script, and by what the transport takes to stop a command past it.
            self.thread.join(self.after + 2 * GRACE + 2 * ANSWER_TIMEOUT + 5 if seconds is None else seconds)
        with self.lock:
            alive = self.thread is not None and self.thread.is_alive()
            self.revoked = alive
            taken = self.taken
        result, ack = self.result, f"{self.mark}\n"
        if alive:
            # Still going: whether they run is not known, so they must not run again.
            return Result(1, "", "the run's last commands did not end in time") if taken else None
        if result is None or not result.stdout.startswith(ack):
            return None
        return replace(result, stdout=result.stdout[len(ack):])

