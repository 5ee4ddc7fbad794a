"""What every command shares: the run wrapper that turns every way a
command can end into an exit code and a last line, the start of a main(),
and --var's parsing."""

import argparse
import sys
import traceback
from collections.abc import Sequence

from deployer.cli import completion
from deployer.config import BUILTIN_TOKENS, names
from deployer.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    DeployError,
    PartlyDone,
    UndoIncomplete,
    UsageError,
)
from deployer.output import Reporter, choose
from deployer.output.stream import Unbroken
from deployer.run import interrupts
from deployer.run.interrupts import Interrupted


def parsed(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """The arguments, or the exit code when argparse ended it (--help, a usage
    error); a shell asking for completions gets its answer first."""
    try:
        completion.answer(parser)
        return parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK


def output_options(c: argparse.ArgumentParser) -> None:
    """--output, as every command of deploy and deployer takes it, and --json for --output json."""
    c.add_argument("--output", choices=("auto", "rich", "plain", "teamcity", "json"), default="auto",
                   help="auto: teamcity if TEAMCITY_VERSION is set, rich on a terminal, else plain; json: JSON"
                   " (an object a line, for a run)")
    c.add_argument("--json", dest="output", action="store_const", const="json", help="the same as --output json")


def verbose_option(c: argparse.ArgumentParser) -> None:
    c.add_argument("-v", "--verbose", action="store_true",
                   help="with --dry-run: every command in full, not only the steps and what they write")


def parse_vars(pairs: list[str]) -> dict[str, str]:
    """--var KEY=VALUE, each: a token deployer does not set, one line of text."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--var {pair!r}: expected KEY=VALUE")
        names.token_name(key)
        if key in BUILTIN_TOKENS:
            raise UsageError(f"--var {key}: set by deployer from the command line and config")
        # TeamCity build parameters arrive here: whoever may start a build
        # with custom parameters must not be able to write Apache directives.
        out[key] = names.token_value(key, value, "--var")
    return out


class Run:
    """What a command has set up so far, for its last line: the reporter,
    once the secrets are known, and the executor, once it has started."""

    def __init__(self, output: str, stdout, verbose: bool = False):
        self.output, self.stdout, self.verbose = output, Unbroken(stdout), verbose
        self.reporter: Reporter | None = None
        self.executor = None

    def report_to(self, secrets: frozenset[str]) -> Reporter:
        # From here on every message may quote a secret: all go through it.
        self.reporter = choose(self.output, self.stdout, secrets, self.verbose)
        return self.reporter


def guarded(output: str, stdout, body, verbose: bool = False) -> int:
    """Run `body(run)`, which returns the summary of a run that succeeded;
    every way it can end becomes an exit code and a last line."""
    run = Run(output, stdout, verbose)

    def on_repeat():
        if run.reporter is not None:
            run.reporter.note("already stopping: undoing changes and closing the VPN")

    previous = interrupts.install(on_repeat)
    try:
        try:
            summary = body(run)
        except DeployError as e:
            return _finish(run, e.exit_code, str(e), _serving(run.executor, e))
        except (Interrupted, KeyboardInterrupt) as e:
            return _finish(run, EXIT_INTERRUPTED, f"interrupted ({e or 'SIGINT'})", _serving(run.executor, e))
        except Exception as e:  # noqa: BLE001 - reported, with its traceback, below
            # A bug: still end the output properly (TeamCity's build problem, the
            # JSON "finished" event), then show the traceback, redacted like the
            # rest: an exception's text can quote a secret (a vhost, a value).
            code = _finish(run, EXIT_FAILED, f"internal error: {type(e).__name__}: {e}")
            trace = "".join(traceback.format_exception(e))
            sys.stderr.write(run.reporter.redact(trace) if run.reporter else trace)
            return code
        return _finish(run, EXIT_OK, None, summary)
    finally:
        interrupts.restore(previous)


def _serving(executor, e: BaseException) -> str:
    """The last line of a failed run: what the hosts serve (the message of an
    incomplete undo already names the hosts that need a person)."""
    if executor is None or isinstance(e, UndoIncomplete):
        return ""
    return executor.serving(isinstance(e, PartlyDone))


def _finish(run: Run, code: int, error: str | None, summary: str = "") -> int:
    # Failed before the plan existed, so nothing ran and no secret is
    # known yet: a usage error names keys and paths only.
    reporter = run.reporter or choose(run.output, run.stdout, frozenset())
    reporter.finished(code, error, summary)
    return code
