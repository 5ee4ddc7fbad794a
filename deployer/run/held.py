"""The run's last commands on a host, in the session of its last steps.

What runs on a host once the run is over (what kept changes left for their
undo, old releases pruned, the history line as the lock is released) is
known only then, after the health checks and the later batches: in a
session of its own it would cost each host one more. So the session of a
host's last group of steps ends with an entry (sh/run-end.sh) that reads
those commands on stdin, and waits for them while the run goes on; the
runner sends them at the run's end. Until then the session costs a thread
and an idle channel, and nothing on the host.

A session that ended before its commands were sent (a step failed, the
connection died, its time ran out) has not run them: they run in a session
of their own, as they would have without this.
"""

import io
import os
import threading
from collections.abc import Callable

from deployer.connectors.result import Result
from deployer.remote import hostscripts
from deployer.run import interrupts, session


class Held:
    """One host's session, held at its last entry until `give` sends it the
    run's last commands. `seconds` bounds the wait for them (the rest of the
    run's steps, at their limits); `after` is the time the commands have
    once given."""

    def __init__(self, seconds: float, after: float):
        self.seconds, self.after = seconds, after
        self.lock = threading.Lock()
        self.script: bytes | None = None
        self.sent = False  # whether the session began reading the script
        self.result: Result | None = None  # the last entry's, once it ended
        self.thread: threading.Thread | None = None
        # Readable once the script is there: the transport waits on it (session.Deferred).
        self.wake, self.waker = os.pipe()

    def entry(self, given: Callable[[], None]) -> session.Entry:
        """The session's last entry; `given()` runs once its commands are
        there, in the transport's thread, before they are sent."""
        def piece() -> session.Piece | None:
            with self.lock:
                script = self.script
            if script is None:
                return None
            given()
            return session.Piece(len(script), lambda: self._opened(script))
        return session.Entry(hostscripts.run_end().line(), data=session.Deferred(piece, self.wake),
                             timeout=self.seconds)

    def _opened(self, script: bytes) -> io.BytesIO:
        self.sent = True
        return io.BytesIO(script)

    def start(self, run: Callable[[], object]) -> None:
        """The session, in a thread of its own: it outlives its group's
        steps (the pool's threads are for the steps still to run)."""
        def body() -> None:
            interrupts.block_in_thread()
            try:
                run()
            except BaseException as e:  # noqa: BLE001 - a stop ends it; what it says is the result
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
                self.script = line.encode()
                os.write(self.waker, b"x")

    def wait(self) -> Result | None:
        """The result of the commands given, or None if the session had ended
        before it read them (they did not run: they must run elsewhere).
        Its descriptors go once the session has."""
        if self.thread is not None:
            # Bounded by the session's own limit: `after`, from when it has
            # the script (or less, had it ended already); the margin is for a
            # transport that stops a command past its limit.
            self.thread.join(self.after + 60)
        if self.thread is None or not self.thread.is_alive():
            for fd in (self.wake, self.waker):
                if fd >= 0:
                    os.close(fd)
            self.wake = self.waker = -1
        result = self.result
        return result if self.sent and result is not None else None
