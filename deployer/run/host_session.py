"""One host's part of a group of steps: their entries in one session, and
each entry's start and end told to the step's handler, the reporter (in
stage order, through the Gate) and the executor."""

import threading
import time
from collections.abc import Callable

from deployer import steps
from deployer.connectors.base import Transport
from deployer.connectors.result import Result
from deployer.connectors.ssh import ERRORS
from deployer.errors import StepFailed
from deployer.output import StepResult
from deployer.run import session
from deployer.run.connections import UNDO_TIMEOUT
from deployer.run.failures import describe_error
from deployer.run.held import Held
from deployer.run.progress import Gate, Progress

HELD = -1  # the owner of a held session's last entry (see held.py)


class HostSession:
    """`started(step)` is the executor's: told as each step starts on the
    host (besides the reporter, and the step handler's own callbacks)."""

    def __init__(self, group: session.Group, host: str, gate: Gate, progress: Progress, tidying: list[str],
                 started: Callable[[steps.Step], None], held: Held | None = None):
        self.group, self.host, self.gate, self.progress = group, host, gate, progress
        self.on_start = started
        self.held = held
        self.done = False
        self.reached = False  # whether a held session got to its wait
        self.steps_over = threading.Event()  # set once every step's result is in
        self.entries: list[session.Entry] = []
        # Per entry: the index of its step in group.steps (None for the
        # tidying entry), whether it is the step's last, and the handler's
        # callbacks.
        self.owners: list[tuple[int | None, bool, session.Made | None]] = []
        self.results: list[Result | None] = [None] * len(group.steps)
        self.began: dict[int, float] = {}
        if tidying:
            # What the undo log of a kept change needed: gone before the next
            # step, in its session (its result only matters if it failed).
            self.entries.append(session.Entry(" ; ".join(tidying) + " ; true", timeout=UNDO_TIMEOUT))
            self.owners.append((None, True, None))

    def add(self, j: int, made: list[session.Made]) -> None:
        """Step `j`'s entries, as its kind's handler made them."""
        for k, m in enumerate(made):
            self.entries.append(m.entry)
            self.owners.append((j, k == len(made) - 1, m))

    def run(self, on: Transport, run_id: str, over: Callable[[], None]) -> list[Result | None]:
        """The session, to the end of its steps: every step that did not end
        has the session's own result (a time limit, a lost connection, a
        stop). `over()` runs as soon as the host is done, before that is
        said. A held session goes on in a thread of its own."""
        self.over = over
        if self.held is None:
            return self._session(on, run_id)
        held, index = self.held, len(self.entries)
        self.entries.append(held.entry(lambda: split.limit(index, held.after)))
        self.owners.append((HELD, True, None))
        split = session.Split(self.entries, self._started, self._ended)
        error: list[BaseException] = []

        def body() -> None:
            try:
                self._session(on, run_id, split)
            except BaseException as e:
                if not self.reached:
                    error.append(e)  # of the steps: raised where they were run from
                raise
            finally:
                self.steps_over.set()
        held.start(body)
        self.steps_over.wait()
        if error:
            raise error[0]
        return self.results

    def _session(self, on: Transport, run_id: str, split: session.Split | None = None) -> list[Result | None]:
        split = split or session.Split(self.entries, self._started, self._ended)
        stdin = session.Input(split.token, self.entries)
        try:
            result = on.run(session.command(run_id, self.entries).line(), stdin=stdin, timeout=split,
                            out=split.out, err=split.err)
        except (StepFailed, *ERRORS) as e:
            result = Result(1, "", describe_error(e))
        except BaseException:
            split.finish(Result(1, "", "stopped"))
            raise
        finally:
            stdin.end()
            self._over()
        split.finish(result)
        return self.results

    def _over(self) -> None:
        """The host is done with the group's steps (a held entry may wait on)."""
        if not self.done:
            self.done = True
            self.gate.progressed(self.host, len(self.group.steps))
            self.over()

    def _started(self, i: int) -> None:
        j, _, made = self.owners[i]
        if j == HELD:
            # The last step has ended (and said so): the run may go on.
            self.reached = True
            self._over()
            self.steps_over.set()
        if j is None or j == HELD or j in self.began:
            return
        self.began[j] = time.monotonic()
        stage, step = self.group.steps[j]
        self.on_start(step)
        if made.started is not None:
            made.started()
        self.gate.started(j, stage, step, self.host)

    def _ended(self, i: int, result: Result) -> None:
        j, last, made = self.owners[i]
        if j == HELD:
            self.held.ended(result)
            return
        if j is None:
            if result.stderr.strip():
                self.progress.note(f"{self.host}: could not tidy after the deploy: {result.stderr.strip()}")
            return
        if made.then is not None:
            made.then(result)
        if not last and result.ok:
            return
        stage, step = self.group.steps[j]
        self.results[j] = result
        self.gate.finished(j, stage, step, self.host, StepResult(result, time.monotonic() - self.began[j]))
        self.gate.progressed(self.host, j + 1)
