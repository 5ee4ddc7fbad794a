"""What the reporter hears, and in what order: stages one at a time, each
begun and ended once, and every call to it from one thread at a time (host
steps run in threads)."""

import threading

from deployer.output import Reporter
from deployer.run import session


class Progress:
    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.lock = threading.Lock()  # held for every call to the reporter
        self.stage: str | None = None  # the stage the reporter was last told of
        self.ok = True  # whether every step of it has succeeded so far

    def say(self, tell) -> None:
        """`tell(reporter)`, alone."""
        with self.lock:
            tell(self.reporter)

    def note(self, text: str) -> None:
        self.say(lambda r: r.note(text))

    def enter(self, stage: str) -> None:
        with self.lock:
            self._enter(stage)

    def leave(self, ok: bool) -> None:
        with self.lock:
            self._leave(ok)

    def step_finished(self, stage: str, step, host: str, took) -> None:
        with self.lock:
            self._finished(stage, step, host, took)

    def _enter(self, stage: str) -> None:
        """Report `stage` as begun, and the one before it as ended (lock held)."""
        if stage != self.stage:
            self._leave(True)
            self.stage, self.ok = stage, True
            self.reporter.stage_started(stage)

    def _leave(self, ok: bool) -> None:
        if self.stage is not None:
            self.reporter.stage_finished(self.stage, self.ok and ok)
            self.stage = None

    def _finished(self, stage: str, step, host: str, took) -> None:
        if not took.result.ok:
            self.ok = False
        self.reporter.step_finished(stage, step, host, took)


class Gate:
    """A session spanning stages runs ahead on some hosts: what a host does
    in a later stage is held back from the reporter until every host is
    past the earlier one."""

    def __init__(self, progress: Progress, group: session.Group):
        self.progress = progress
        self.names = names = list(dict.fromkeys(stage for stage, _ in group.steps))
        self.stage_of = [names.index(stage) for stage, _ in group.steps]  # per step
        self.last = [max(j for j, at in enumerate(self.stage_of) if at == k) for k in range(len(names))]
        self.open = 0  # the stage reported as running
        self.held: list[tuple[int, object]] = []
        self.position = dict.fromkeys(group.hosts, 0)  # per host: steps it is past
        progress.enter(names[0])

    def event(self, j: int, report) -> None:
        """`report(reporter)` for step `j`, now or once its stage is open."""
        with self.progress.lock:
            if self.stage_of[j] == self.open:
                report()
            else:
                self.held.append((self.stage_of[j], report))

    def started(self, j: int, stage: str, step, host: str) -> None:
        self.event(j, lambda: self.progress.reporter.step_started(stage, step, host))

    def finished(self, j: int, stage: str, step, host: str, took) -> None:
        self.event(j, lambda: self.progress._finished(stage, step, host, took))

    def progressed(self, host: str, position: int) -> None:
        with self.progress.lock:
            self.position[host] = max(self.position[host], position)
            while (self.open + 1 < len(self.names)
                   and all(p > self.last[self.open] for p in self.position.values())):
                self.open += 1
                self.progress._enter(self.names[self.open])
                now = [r for at, r in self.held if at == self.open]
                self.held = [(at, r) for at, r in self.held if at != self.open]
                for report in now:
                    report()
