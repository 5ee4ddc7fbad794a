"""A terminal: colour, spinners for what runs, a table at the end (rich)."""

import threading
import time

from deployer.output.details import failure_lines, where
from deployer.output.plain import PlainReporter
from deployer.run import interrupts


class RichReporter(PlainReporter):
    """A terminal: a live line per running host with its time, colour, and
    a command's output only when it failed."""

    def __init__(self, stream, secrets=frozenset(), verbose=False):
        super().__init__(stream, secrets, verbose)
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
            self.running[(step.title, where(step, host))] = (time.monotonic(), Spinner("dots"))
        if self.live is None:
            self.live = Live(console=self.console, get_renderable=self._running_lines, transient=True,
                             refresh_per_second=8, redirect_stdout=False, redirect_stderr=False)
            # Its refresh thread must not be the one that takes Ctrl-C.
            with interrupts.deferred():
                self.live.start()

    def step_finished(self, stage, step, host, r):
        self.tally.add(stage, host, r)
        with self.running_lock:
            self.running.pop((step.title, where(step, host)), None)
            idle = not self.running
        mark, style = ("✓", "green") if r.result.ok else ("✗", "bold red")
        self._print(f"  {mark} {step.title} [{where(step, host)}] {r.seconds:.1f}s", style)
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
