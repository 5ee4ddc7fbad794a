"""What a deploy tells the person or the build server watching it.

One event interface, four renderings: rich (a terminal), plain (a log file),
teamcity (service messages, escaped by the teamcity-messages library and
written raw: rich would read their `[...]` as markup) and json (one object a
line). Every text goes through `redact` first, so a secret never reaches any
of them; then, in the three for people, through `printable_lines`, so no
text a host wrote can drive the terminal or the build log (JSON escapes
control characters itself and keeps the exact text).
"""

import hashlib
import json
import os
import threading
import time
import unicodedata
from dataclasses import dataclass
from typing import IO

from teamcity.messages import TeamcityServiceMessages

from deployer import steps
from deployer.connectors.result import CUT_NOTE, Result
from deployer.run import interrupts

MASK = "********"


@dataclass(frozen=True)
class StepResult:
    result: Result
    seconds: float


def details(step: steps.Step, redact=lambda text: text) -> list[str]:
    """The lines that say exactly what a step does: dry-run and logs show them.

    Free text (a command, a file's content) is redacted whole before it is
    split into lines, so no secret can be cut in two by a line break.
    """
    if isinstance(step, steps.Build):
        excl = f" (excluding {', '.join(step.rules.exclude)})" if step.rules.exclude else ""
        lines = [f"tar -czf {step.dest} -C {step.source} .{excl}"]
        m = step.manifest
        if m is not None:
            lines.append(f"{len(m.files)} files, {human_size(m.size)}")
            lines.extend(f"left out: {_shown(path)}: {why}" for path, why in m.withheld)
            lines.extend(f"packaged because package/include names it: {_shown(path)} ({why})"
                         for path, why in m.included)
        return lines
    if isinstance(step, steps.OpenVpn):
        return [f"openvpn --config {step.config} in the background, up within {step.timeout:g}s"
                " or fail; shared with the other deploys on this machine that use this config, and stopped"
                f" by the last one; a tunnel to {step.probe} that is already up and not deployer's is used"
                " as it is"]
    if isinstance(step, steps.Run):
        lines = [f"$ {line}" for line in redact(step.command.line()).splitlines()]
        if step.undo is not None:
            lines.extend(f"on failure: $ {line}" for line in redact(step.undo.line()).splitlines())
        return lines
    if isinstance(step, steps.Upload):
        return [f"on {step.hosts[0]}, which also sends the list of files its live release holds:",
                *(f"$ {line}" for line in step.state_first.line().splitlines()),
                "on the other hosts:",
                *(f"$ {line}" for line in step.state.line().splitlines()),
                "then, in the same session, on every host:",
                *(f"$ {line}" for line in step.command.line().splitlines()),
                f"reading the files that differ from the host's live release (all of {step.local} if it has"
                " none) and the changes to the file list, on its standard input",
                *_relay_details(step.relay),
                *(f"on failure: $ {line}" for line in step.undo.line().splitlines())]
    if isinstance(step, steps.Install) and step.source:
        return [f"copy {step.source} to {step.path} (mode {step.mode:04o}; as below):",
                *(f"$ {line}" for line in step.command().line().splitlines())]
    if isinstance(step, steps.Install):
        owner = f", chown {step.owner}" if step.owner else ""
        return [f"write {step.path} (mode {step.mode:04o}{owner}; only over a file whose first line is"
                " the mark below; the previous file is kept until the deploy ends and put back on failure):",
                *(f"$ {line}" for line in step.command().line().splitlines()),
                "with this on its standard input:",
                *(f"| {line}" for line in redact(step.content).splitlines())]
    if isinstance(step, steps.HealthCheck):
        return [f"from this machine: GET http://{a}:{step.port}{step.path} with Host: {step.host_header}, until it"
                f" answers {step.status}, for at most {step.timeout:g} s; on failure, every host is put back"
                for a in step.addresses]
    if isinstance(step, steps.Link):
        note = " (commit point)" if step.commit else ""
        return [f"point {step.path} at {step.target}, atomically{note}:",
                *(f"$ {line}" for line in step.command().line().splitlines())]
    return []


def _relay_details(r: steps.Relay | None) -> list[str]:
    if r is None:
        return []
    return [f"{r.source} keeps a copy of that tarball if it is 1 MiB or more, and lets a one-time key read it;"
            " every other host that needs the same tarball reads it from there instead, before it unpacks"
            " (else it is sent as above):",
            *(f"$ {line}" for line in r.fetch.line().splitlines()),
            f"then the key and the copy are removed from {r.source} in its next session, and on failure:",
            *(f"$ {line}" for line in r.close.line().splitlines())]


def printable_lines(text: str) -> str:
    """Text as a terminal or a build log may show it, line breaks kept: what
    hosts wrote in it (a command's output, a lock's owner, a history line)
    cannot move the cursor, erase or overwrite a line, set the title or the
    clipboard, reorder what follows, or forge a line. LF and CR LF are line
    breaks; a tab or another space is a space; anything else that is not
    printable (a lone CR, ESC, BEL, the other C0 and C1 controls, DEL,
    format characters such as U+202E, U+2028 and U+2029) is a `?`."""
    return "\n".join(line if line.isprintable() else "".join(map(_stand_in, line))
                     for line in text.replace("\r\n", "\n").split("\n"))


def _stand_in(c: str) -> str:
    if c.isprintable():
        return c
    return " " if c == "\t" or unicodedata.category(c) == "Zs" else "?"


def _shown(path: str) -> str:
    """A file name as it can be printed: one with a line break or another
    control character in it is shown quoted, so it cannot forge a line."""
    return path if path.isprintable() else repr(path)


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


class Reporter:
    """Base: keeps the redaction; subclasses render the events."""

    def __init__(self, stream: IO[str], secrets: frozenset[str] = frozenset()):
        self.stream = stream
        self.secrets = tuple(s for s in secrets if s)
        self.tally = Tally()

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
        return _lines(self.printable(r.stdout + r.stderr))

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


def failure_lines(step: steps.Step, r: Result, printable) -> list[str]:
    """What a person needs of a step that failed on a host: the command, and
    the end of what it printed (stderr last, where the error is). `printable`
    is the reporter's: the text is redacted whole, and cut into lines only
    where a terminal would show a line break."""
    lines = []
    if isinstance(step, steps.Run):
        # A command from targets.yaml as written there; one of deployer's, its start.
        c = step.command
        command = printable(f"{c.shell}  (in {c.cwd})" if c.shell is not None and c.cwd else c.shell or c.line())
        lines.append(f"$ {command if len(command) <= 300 else command[:300] + ' ...'}")
    return lines + _lines(printable(r.stdout + r.stderr))[-40:]


def _lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]


def _where(step: steps.Step, host: str | None = None) -> str:
    if host is not None:
        return host or "runner"
    return ", ".join(step.hosts) if step.hosts else "runner"




class PlainReporter(Reporter):
    """Plain lines, for logs and pipes: everything, in order, no colour."""

    def start(self, name, hostname, release, dry_run, action="deploy"):
        if action == "destroy":
            self.write(f"{'dry run: would destroy' if dry_run else 'destroying'} {name}")
            return
        what = {"deploy": ("deploying", "dry run: would deploy"),
                "rollback": ("rolling back", "dry run: would roll back"),
                "unlock": ("unlocking", "dry run: would unlock")}[action][dry_run]
        to = {"deploy": "release", "rollback": "to release", "unlock": "undoing what was left by"}[action]
        self.write(f"{what} {name} ({hostname or 'hostname as deployed'}), {to} {release}")

    def stage_started(self, stage):
        self.write(f"== {stage}")

    def planned(self, stage, step):
        self.write(f"  - {step.title} [{_where(step)}]")
        for line in details(step, self.redact):
            self.write(f"      {line}")

    def step_finished(self, stage, step, host, r):
        self.tally.add(stage, host, r)
        status = "ok" if r.result.ok else f"FAILED (exit {r.result.exit_code})"
        self.write(f"  {step.title} [{_where(step, host)}]: {status} in {r.seconds:.1f}s")
        lines = self.output_lines(r.result)[-40:] if r.result.ok else failure_lines(step, r.result, self.printable)
        for line in lines:
            self.write(f"      {line}")

    def note(self, text):
        self.write(f"!! {text}")

    def summary_table(self) -> None:
        rows = self.tally.rows()
        if not rows:
            return
        rows = [("host", "stages", "time", "result"), *rows]
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        for r in rows:
            self.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())

    def finished(self, exit_code, error, summary=""):
        self.summary_table()
        if error:
            self.write(f"error: {error}")
        if summary or not error:
            self.write(f"{'' if error else 'done: '}{summary}" if summary else "done")


class QuietReporter(PlainReporter):
    """Only what went wrong, and notes: for reading the hosts before a
    command prints its own answer."""

    def stage_started(self, stage):
        pass

    def step_finished(self, stage, step, host, r):
        if not r.result.ok:
            super().step_finished(stage, step, host, r)

    def summary_table(self):
        pass

    def finished(self, exit_code, error, summary=""):
        if error:
            super().finished(exit_code, error, summary)


class TeamCityReporter(PlainReporter):
    """Service messages for TeamCity: a block per stage, a build problem on failure."""

    def __init__(self, stream, secrets=frozenset()):
        super().__init__(stream, secrets)
        # Values are redacted before the library escapes them: a secret
        # containing ' or | would no longer match once escaped.
        self.tc = TeamcityServiceMessages(output=_TextStream(stream), encoding="utf-8")

    def write(self, line):
        # Text from hosts and file names is not ours: a line holding a
        # service message (a compromised host printing publishArtifacts of
        # the agent's key) goes out escaped, inside a message of our own.
        for part in self.printable(line).split("\n"):
            if "##teamcity[" in part.lower():
                self.tc.message("message", text=part)
            else:
                self.stream.write(part + "\n")
        self.stream.flush()

    def start(self, name, hostname, release, dry_run, action="deploy"):
        self.started = time.monotonic()
        self.problems = 0
        super().start(name, hostname, release, dry_run, action)

    def stage_started(self, stage):
        self.stage_began = time.monotonic()
        self.tc.blockOpened(stage)
        self.tc.progressMessage(f"deployer: {stage}")

    def stage_finished(self, stage, ok):
        self.tc.blockClosed(stage)
        if not ok:
            return
        # TeamCity charts each key across builds: how long each stage takes (when it succeeds).
        self.tc.message("buildStatisticValue", key=f"deployer.{stage}.seconds",
                        value=f"{time.monotonic() - self.stage_began:.3f}")

    def step_finished(self, stage, step, host, r):
        super().step_finished(stage, step, host, r)
        if not r.result.ok:
            # One problem per stage and host, under an identity that stays the
            # same from build to build, so TeamCity can tell a new failure
            # from a known one (and mute it).
            self.problems += 1
            last = (failure_lines(step, r.result, self.printable) or [""])[-1]
            where = _where(step, host)
            self.tc.buildProblem(description=self.printable(f"{stage} failed on {where}: {last}")[:4000],
                                 identity=problem_identity(stage, where))

    def note(self, text):
        self.tc.message("message", text=self.printable(text), status="WARNING")

    def finished(self, exit_code, error, summary=""):
        if hasattr(self, "started"):
            self.tc.message("buildStatisticValue", key="deployer.total.seconds",
                            value=f"{time.monotonic() - self.started:.3f}")
        # An undo that did not complete (3), or an interrupt (130), is a problem
        # of its own, beside any step's: a person must look at the hosts.
        if error and (exit_code in (3, 130) or not getattr(self, "problems", 0)):
            # TeamCity shows the description in the build overview: one line.
            self.tc.buildProblem(description=self.printable(error).split("\n")[0][:4000],
                                 identity=f"deployer-exit-{exit_code}")
        super().finished(exit_code, error, summary)


def problem_identity(stage: str, host: str) -> str:
    """A build problem's identity: TeamCity takes at most 60 characters."""
    identity = f"deployer:{stage}:{host}"
    if len(identity) <= 60:
        return identity
    return f"deployer:{hashlib.sha256(identity.encode()).hexdigest()[:40]}"


class _TextStream:
    """teamcity-messages writes encoded bytes; our stream takes text, as it is."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode("utf-8"))

    def flush(self) -> None:
        self.stream.flush()


class JsonReporter(Reporter):
    """One JSON object per event, for tools: `jq` or a dashboard."""

    def emit(self, event: str, **fields) -> None:
        # Redacted before encoding: once JSON-escaped, a secret with a quote,
        # a backslash or a non-ASCII letter would no longer match.
        fields = {"event": event, "time": round(time.time(), 3), **self._redacted(fields)}
        self.stream.write(json.dumps(fields, sort_keys=True) + "\n")
        self.stream.flush()

    def _redacted(self, value):
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self._redacted(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._redacted(v) for v in value]
        return value

    def start(self, name, hostname, release, dry_run, action="deploy"):
        self.emit("start", config=name, hostname=hostname, release=release, dry_run=dry_run, action=action)

    def stage_started(self, stage):
        self.emit("stage_started", stage=stage)

    def stage_finished(self, stage, ok):
        self.emit("stage_finished", stage=stage, ok=ok)

    def planned(self, stage, step):
        self.emit("planned", stage=stage, step=step.title, kind=type(step).__name__.lower(),
                  hosts=list(step.hosts), details=details(step, self.redact))

    def step_started(self, stage, step, host):
        self.emit("step_started", stage=stage, step=step.title, host=host)

    def step_finished(self, stage, step, host, r):
        self.tally.add(stage, host, r)
        self.emit("step_finished", stage=stage, step=step.title, host=host, ok=r.result.ok,
                  exit_code=r.result.exit_code, seconds=round(r.seconds, 3),
                  stdout=r.result.stdout, stderr=r.result.stderr)

    def note(self, text):
        self.emit("note", text=text)

    def section(self, lines, event, **facts):
        self.emit(event, **facts)

    def finished(self, exit_code, error, summary=""):
        self.emit("finished", exit_code=exit_code, ok=exit_code == 0, error=error, summary=summary,
                  hosts=self.tally.as_json())


class RichReporter(PlainReporter):
    """A terminal: a live line per running host with its time, colour, and
    a command's output only when it failed."""

    def __init__(self, stream, secrets=frozenset()):
        super().__init__(stream, secrets)
        from rich.console import Console

        self.console = Console(file=stream, highlight=False)
        # (title, host) -> (started, spinner); drawn by rich's refresh thread.
        self.running: dict[tuple[str, str], tuple[float, object]] = {}
        self.running_lock = threading.Lock()
        self.live = None

    def _text(self, text: str, style: str = ""):
        """What rich draws: Text, not a string (rich would read `[/]` in a
        hook's title as markup), made printable (rich drops BEL and CR but
        passes ESC through)."""
        from rich.text import Text

        return Text(self.printable(text), style=style)

    def _print(self, text: str, style: str = "") -> None:
        self.console.print(self._text(text, style))

    def _running_lines(self):
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        now = time.monotonic()
        with self.running_lock:
            rows = list(self.running.items())
        for (title, host), (started, spinner) in rows:
            grid.add_row(spinner, self._text(f"{title} [{host}]"), Text(f"{now - started:.0f}s", "dim"))
        return grid

    def write(self, line: str) -> None:
        self._print(line)

    def stage_started(self, stage):
        self._print(f"━━ {stage}", "bold cyan")

    def step_started(self, stage, step, host):
        from rich.live import Live
        from rich.spinner import Spinner

        with self.running_lock:
            self.running[(step.title, _where(step, host))] = (time.monotonic(), Spinner("dots"))
        if self.live is None:
            self.live = Live(console=self.console, get_renderable=self._running_lines, transient=True,
                             refresh_per_second=8, redirect_stdout=False, redirect_stderr=False)
            # Its refresh thread must not be the one that takes Ctrl-C.
            with interrupts.deferred():
                self.live.start()

    def step_finished(self, stage, step, host, r):
        self.tally.add(stage, host, r)
        with self.running_lock:
            self.running.pop((step.title, _where(step, host)), None)
            idle = not self.running
        mark, style = ("✓", "green") if r.result.ok else ("✗", "bold red")
        self._print(f"  {mark} {step.title} [{_where(step, host)}] {r.seconds:.1f}s", style)
        if not r.result.ok:
            for line in failure_lines(step, r.result, self.printable):
                self._print(f"      {line}", "red")
        if idle and self.live is not None:
            self.live.stop()
            self.live = None

    def note(self, text):
        self._print(f"! {text}", "yellow")

    def summary_table(self):
        from rich.table import Table

        rows = self.tally.rows()
        if not rows:
            return
        table = Table(box=None, padding=(0, 2), header_style="bold")
        for column in ("host", "stages", "time", "result"):
            table.add_column(column)
        for host, stages, seconds, result in rows:
            table.add_row(*map(self._text, (host, stages, seconds, result)), style="red" if result != "ok" else "")
        self.console.print(table)

    def finished(self, exit_code, error, summary=""):
        self.summary_table()
        if error:
            self._print(f"error: {error}", "bold red")
            if summary:
                self._print(summary, "bold")
        else:
            self._print(f"done: {summary}" if summary else "done", "bold green")


def choose(kind: str, stream: IO[str], secrets: frozenset[str]) -> Reporter:
    if kind == "auto":
        if os.environ.get("TEAMCITY_VERSION"):
            kind = "teamcity"
        elif stream.isatty():
            kind = "rich"
        else:
            kind = "plain"
    cls = {"plain": PlainReporter, "rich": RichReporter, "teamcity": TeamCityReporter,
           "json": JsonReporter, "quiet": QuietReporter}[kind]
    return cls(stream, secrets)

