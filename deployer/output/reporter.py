"""The events a run tells, and what every rendering of them shares: the
redaction of secrets, and the tally of what ran where."""

import threading
from dataclasses import dataclass
from typing import IO

from deployer import steps
from deployer.connectors.result import CUT_NOTE, Result
from deployer.output.text import MASK, nonblank_lines, printable_lines


@dataclass(frozen=True)
class StepResult:
    result: Result
    seconds: float


class Reporter:
    """Base: keeps the redaction; subclasses render the events."""

    def __init__(self, stream: IO[str], secrets: frozenset[str] = frozenset(), verbose: bool = False):
        self.stream = stream
        self.secrets = tuple(s for s in secrets if s)
        self.tally = Tally()
        # A plan printed for people: every command, or only what changes (see details.brief).
        self.verbose = verbose

    def redact(self, text: str) -> str:
        """`text` with every secret masked, also where two overlap, and the end
        of one that a kept output tail begins with (the cut fell inside it)."""
        if not self.secrets:
            return text
        spans = []
        for secret in self.secrets:
            at = text.find(secret)
            while at != -1:
                spans.append((at, at + len(secret)))
                at = text.find(secret, at + 1)
        for cut in CUT_NOTE.finditer(text):
            start = cut.end()
            part = max((n for s in self.secrets for n in range(1, len(s)) if text.startswith(s[-n:], start)),
                       default=0)
            if part:
                spans.append((start, start + part))
        out, done = [], 0
        for start, end in sorted(spans):
            if end <= done:
                continue
            if start > done:
                out.append(text[done:start])
            if start >= done:
                out.append(MASK)
            done = end
        out.append(text[done:])
        return "".join(out)

    def printable(self, text: str) -> str:
        """`text` as people are shown it: redacted (on the text as it came, so
        a secret with a control character in it still matches), then made
        printable."""
        return printable_lines(self.redact(text))

    def write(self, line: str) -> None:
        self.stream.write(self.printable(line) + "\n")
        self.stream.flush()

    def output_lines(self, r: Result) -> list[str]:
        """A command's output, as people are shown it, split into lines."""
        return nonblank_lines(self.printable(r.stdout + r.stderr))

    def start(self, name: str, hostname: str, release: str, dry_run: bool, action: str = "deploy") -> None: ...
    def stage_started(self, stage: str) -> None: ...
    def stage_finished(self, stage: str, ok: bool) -> None: ...
    def planned(self, stage: str, step: steps.Step) -> None: ...
    def step_started(self, stage: str, step: steps.Step, host: str) -> None: ...
    def step_finished(self, stage: str, step: steps.Step, host: str, r: StepResult) -> None: ...
    def note(self, text: str) -> None: ...

    def section(self, lines: list[str], event: str, **facts) -> None:
        """A part of the output of its own (what a dry run lacks, what a host
        holds): `lines` for people; JSON emits `event` with `facts` instead."""
        for line in lines:
            self.write(line)

    # `summary`: what each host serves now, the run's last line.
    def finished(self, exit_code: int, error: str | None, summary: str = "") -> None: ...


@dataclass
class HostTally:
    stages: list[str]
    seconds: float = 0.0
    failed: str = ""  # the stage of the first step that failed there


class Tally:
    """Per host (and the runner): the stages it took part in, the time its
    steps took, and where it failed; for the summary at the end."""

    def __init__(self):
        self.hosts: dict[str, HostTally] = {}
        self.lock = threading.Lock()

    def add(self, stage: str, host: str, r: "StepResult") -> None:
        with self.lock:
            t = self.hosts.setdefault(host or "runner", HostTally([]))
            if stage not in t.stages:
                t.stages.append(stage)
            t.seconds += r.seconds
            if not r.result.ok and not t.failed:
                t.failed = stage

    def rows(self) -> list[tuple[str, str, str, str]]:
        return [(h, ", ".join(t.stages), f"{t.seconds:.1f}s", f"FAILED in {t.failed}" if t.failed else "ok")
                for h, t in self.hosts.items()]

    def as_json(self) -> dict:
        return {h: {"stages": t.stages, "seconds": round(t.seconds, 3), "failed_in": t.failed or None}
                for h, t in self.hosts.items()}
