"""`deployer check CONFIG_NAME [HOSTNAME]`: would a deploy of this target
get past its first steps? Read-only: the check changes nothing on any host
(no mkdir, no lock, no history line), and is one SSH session per host.

Checked here: targets.yaml and the target, the template with the target's
vars, the VPN (up, then closed by the Executor's teardown). Checked on each
host, by one host script that prints a line per check and always exits 0,
so that every result comes back: that it answers over SSH with a known host
key, that deploy_root and Apache's sites-available and sites-enabled are
writable (or can be made), that the tools a deploy runs are there, that
nobody holds the instance's lock, that Apache runs, and `<ctl> configtest`;
then the app's side (sh/check-app.sh, in the same session): the Python
the wheels are for, the shared files and writable folders, and Django's
`manage.py check --deploy --database default` in the live release, run as
migrate runs (its virtualenv, its exported vars), which imports the
project and asks its database.
"""

import argparse
import json
import re
import sys
from dataclasses import dataclass, replace

from deployer import context, steps
from deployer.cli import completion
from deployer.cli.guard import Run, guarded, output_options, parse_vars
from deployer.config import Target, load, names
from deployer.connectors.result import Result
from deployer.errors import EXIT_FAILED, EXIT_OK, StepFailed, UsageError
from deployer.output import Reporter, printable_lines
from deployer.plan import stages, vhost
from deployer.quoting import Command
from deployer.remote import hostscripts, instance

OK, FAILED, NOT_RUN = "ok", "failed", "not run"

# The checks on each host, in the order the host script prints them (the
# slow configtest last: a session stopped at its time limit has still said
# the rest). "ssh" is not printed: the script ran, or it did not.
HOST_CHECKS = ("ssh", "deploy_root", "sites-available", "sites-enabled", "tools", "lock", "apache", "configtest")
# Then the app's side (sh/check-app.sh), as far as the target has one.
APP_CHECKS = ("python", "shared", "django")
# The Python of `migrate: PYTHON manage.py migrate ...`, which asks Django's checks too.
_MANAGE = re.compile(r"([A-Za-z0-9_./+-]+) manage\.py migrate(\s|$)")


def host_checks(target: Target) -> tuple[str, ...]:
    """The rows of a host in the order printed: HOST_CHECKS, then those of
    APP_CHECKS that the target has."""
    has = {"python": target.python is not None, "shared": bool(target.shared.files or target.shared.writable),
           "django": True}
    return HOST_CHECKS + tuple(k for k in APP_CHECKS if has[k])


@dataclass(frozen=True)
class Outcome:
    status: str  # OK, FAILED or NOT_RUN
    detail: str = ""


@dataclass(frozen=True)
class Report:
    name: str
    hostname: str
    runner: dict[str, Outcome]  # targets.yaml, template, vpn (if the target has one)
    hosts: dict[str, dict[str, Outcome]]  # per host, per HOST_CHECKS
    notes: tuple[str, ...] = ()

    def outcomes(self) -> list[Outcome]:
        return [*self.runner.values(), *(o for checks in self.hosts.values() for o in checks.values())]

    @property
    def ok(self) -> bool:
        # A check that did not run has not passed.
        return all(o.status == OK for o in self.outcomes())


def add_parser(sub) -> argparse.ArgumentParser:
    """`check` in the subcommands `sub` of `deployer` (commands.parser)."""
    about = ("check a target before deploying: targets.yaml, the template, the VPN, and on each host SSH and"
             " its host key, deploy_root and Apache's dirs writable, the tools, the lock, configtest, the"
             " Python the wheels are for, the shared files, and Django's own checks (--deploy, the database)"
             " in the live release; changes nothing")
    c = sub.add_parser("check", help=about, description=about[0].upper() + about[1:] + ". Exit 0 when every"
                       " check passes, 1 when one fails or could not run, 2 when targets.yaml or an argument"
                       " is wrong.", allow_abbrev=False)
    completion.names(c.add_argument("config_name", metavar="CONFIG_NAME",
                                    help="the instance, as given to deploy"))
    c.add_argument("hostname", metavar="HOSTNAME", nargs="?", default=None,
                   help="<<HOSTNAME>> for rendering the template (default: CONFIG_NAME.check.invalid)")
    c.add_argument("--targets", default="targets.yaml", metavar="PATH",
                   help="the targets file (default: ./targets.yaml)")
    # As deploy takes it: a token a CI build sets must not fail the template check.
    c.add_argument("--var", action="append", default=[], metavar="KEY=VALUE",
                   help="a template token, over vars: in targets.yaml (repeatable), as for deploy")
    output_options(c)
    return c


def main(args: argparse.Namespace, stdout) -> int:
    """Run the check: 0 when every check passed, 1 when one failed or did not
    run, 2 for a wrong argument or targets.yaml (the error on stderr), 130
    when interrupted."""
    verdict: list[int] = []

    def body(run: Run) -> str:
        verdict.append(_check(args, run, stdout))
        return ""

    code = guarded("quiet", sys.stderr, body)
    return verdict[0] if code == EXIT_OK and verdict else code


def _check(args: argparse.Namespace, run: Run, stdout) -> int:
    # A bad argument or targets.yaml raises UsageError: exit 2, as everywhere.
    name = names.config_name(args.config_name)
    hostname = names.hostname(args.hostname or f"{name}.check.invalid")
    overrides = parse_vars(args.var)
    target = load(args.targets).resolve(name)
    ctx = _context(name, hostname, target, overrides)
    # From here on every text may quote a secret: an internal error's traceback is masked too.
    redactor = run.report_to(ctx.secrets)
    as_json = args.output == "json"
    if not as_json:
        stdout.write(_heading(ctx) + "\n")
        stdout.flush()
    resolved = Outcome(OK, f"{args.targets}: {name} is entry {target.entry!r}, {_hosts(len(target.hosts))}")
    template, rendered = _template(ctx)
    runner = {"targets.yaml": resolved, "template": template}
    vpn, hosts, notes = _on_hosts(ctx)
    notes = [*vhost.reload_notes(rendered), *notes] if rendered else notes
    if vpn is not None:
        runner["vpn"] = vpn
    report = _redacted(Report(name, hostname, runner, hosts, tuple(notes)), redactor)
    # What hosts wrote (a lock's owner, configtest's output) cannot drive the terminal.
    stdout.write((_json(report) if as_json else printable_lines(_table(report, _marks(stdout)))) + "\n")
    return EXIT_OK if report.ok else EXIT_FAILED


def _context(name: str, hostname: str, target: Target, overrides: dict[str, str]) -> context.Context:
    """A context with the target's vars, as a deploy's has them (context.make,
    without hashing the source tree: nothing is packaged)."""
    ctx = context.for_instance(name, target, "check", hostname=hostname)
    return replace(ctx, values=context.values_of(target, overrides),
                   secrets=context.secret_values(target, overrides))


def _hosts(n: int) -> str:
    return f"{n} host{'' if n == 1 else 's'}"


def _heading(ctx: context.Context) -> str:
    t = ctx.target
    via = "" if t.vpn.kind == "none" else f" through the VPN of {t.vpn.config}"
    return f"checking {ctx.name} on {_hosts(len(t.hosts))}{via}; nothing is changed"


def _template(ctx: context.Context) -> tuple[Outcome, str]:
    """The vhost rendered exactly as the render stage does it, and its text ("" if it is not)."""
    try:
        made = stages.render(ctx)
    except UsageError as e:
        return Outcome(FAILED, str(e)), ""
    content = next(s for s in made if isinstance(s, steps.Install)).content
    lines = len(content.splitlines())
    return Outcome(OK, f"{ctx.target.template} renders ({lines} lines) for {ctx.hostname}"), content


def _plan(ctx: context.Context) -> tuple[steps.Plan, steps.Run]:
    t = ctx.target
    relay = t.transport == "ssh" and t.relay and len(t.hosts) > 1
    # The scripts are constant; every value is a positional argument. The
    # environment is migrate's, which the project's settings may read.
    manage = _MANAGE.match(t.migrate or "")
    app = hostscripts.check_app(ctx.deploy_path, ctx.shared_dir, t.shared, manage[1] if manage else "",
                                any(v.export for v in t.vars.values()), t.python)
    host = hostscripts.program("check", t.deploy_root, f"{t.apache.dir}/sites-available",
                               f"{t.apache.dir}/sites-enabled", ctx.state_dir, "01"[relay], *t.apache.ctl)
    command = Command(argvs=host.argvs + app.argvs, env=tuple(sorted(ctx.environment().items())))
    step = steps.Run("check the host for a deploy", ctx.host_names, command=command)
    return steps.Plan((("vpn", stages.vpn(ctx)), ("check", (step,)))), step


def _on_hosts(ctx: context.Context) -> tuple[Outcome | None, dict[str, dict[str, Outcome]], list[str]]:
    """The VPN's outcome (None without one), each host's, and notes."""
    the_plan, step = _plan(ctx)
    collector = _Collector(ctx.secrets)
    executor = _executor(ctx, collector)
    stopped = ""
    try:
        executor.run(the_plan)
    except StepFailed as e:
        # A host that failed to connect or to run the script fails the step;
        # the others' results are in outputs(). Only when no host ran (the
        # VPN did not come up) does the reason say why they did not.
        stopped = str(e)
    vpn = _vpn(ctx, the_plan, collector)
    why_not = "the VPN did not come up" if vpn is not None and vpn.status != OK else stopped
    found = executor.outputs(step)
    hosts = {h: _host_outcomes(ctx, h, found.get(h), why_not or "the check stopped first") for h in ctx.host_names}
    notes = [f"{h}: {note}" for h, checks in hosts.items() for note in _notes(checks)]
    return vpn, hosts, notes + collector.notes


def _vpn(ctx: context.Context, the_plan: steps.Plan, collector: "_Collector") -> Outcome | None:
    opened = [s for _, s in the_plan.steps() if isinstance(s, steps.OpenVpn)]
    if not opened:
        return None
    result = collector.runner.get(id(opened[0]))
    if result is None:
        return Outcome(NOT_RUN, "the check stopped before it")
    if not result.ok:
        return Outcome(FAILED, _said(result))
    closing = [n for n in collector.notes if n.startswith("close VPN")]
    if closing:
        return Outcome(FAILED, f"{result.stdout.strip()}; but then {closing[0]}")
    return Outcome(OK, f"{result.stdout.strip()}; let go when the check ended")


def _host_outcomes(ctx: context.Context, host: str, result: Result | None, why_not: str) -> dict[str, Outcome]:
    """One host's checks from its script's output; a host that did not answer
    has run none after ssh."""
    keys = host_checks(ctx.target)
    if result is None:
        return dict.fromkeys(keys, Outcome(NOT_RUN, why_not))
    rows = _rows(result.stdout, keys)
    if not rows and not result.ok:
        # The transport's message names the host; the table does already.
        return {"ssh": Outcome(FAILED, _said(result).removeprefix(f"{host}: ")),
                **dict.fromkeys(keys[1:], Outcome(NOT_RUN, "no SSH session"))}
    local = ctx.target.transport == "local"
    out = {"ssh": Outcome(OK, "this machine (transport: local)" if local else "answers, with a known host key")}
    # Rows missing from an answer: the session ended early (its time limit).
    cut = Outcome(NOT_RUN, _said(result) if not result.ok else "the host script said nothing of it")
    for key in keys[1:]:
        out[key] = rows.get(key, cut)
    if rows.get("lock", cut).status == "held":
        out["lock"] = _lock(ctx, result.stdout)
    return out


def _rows(stdout: str, keys: tuple[str, ...]) -> dict[str, Outcome]:
    """The script's "check KEY STATUS DETAIL" lines, and their "+" lines.
    Split at newlines only, as the script wrote them: splitlines() would
    also break at a \\r inside configtest's output, which could forge a row."""
    rows: dict[str, list] = {}
    for line in stdout.split("\n"):
        word, key, status, detail = (line.split(" ", 3) + ["", "", ""])[:4]
        if word != "check" or key not in keys:
            continue
        if status == "+":
            if key in rows:
                rows[key][1].append(detail)
        else:
            rows[key] = [status, [detail] if detail else []]
    return {key: Outcome({"ok": OK, "held": "held"}.get(status, FAILED), "\n".join(lines))
            for key, (status, lines) in rows.items()}


def _lock(ctx: context.Context, stdout: str) -> Outcome:
    """A held lock fails the deploy, unless its holder ran on this machine
    and is gone (killed): a deploy then takes it over and undoes what it left."""
    held = instance.parse("\n".join(line for line in stdout.split("\n") if line.startswith("lock "))).lock
    here = instance.holder_here(held)
    if here is not None and here[1] is None:
        return Outcome(OK, f"held by {held}, a run of this machine that is gone: a deploy takes the lock over"
                           " and undoes what that run left")
    return Outcome(FAILED, f"held by {held}: a deploy would fail (`deployer unlock {ctx.name}` if that run is"
                           " gone)")


def _notes(checks: dict[str, Outcome]) -> list[str]:
    """What passed with a caveat worth reading."""
    notes = []
    if checks["tools"].status == OK and checks["tools"].detail.startswith("not found"):
        notes.append(f"tools: {checks['tools'].detail}")
    if checks["lock"].status == OK and checks["lock"].detail.startswith("held"):
        notes.append(f"lock: {checks['lock'].detail}")
    for key in ("shared", "django"):
        # The next deploy's changes, and what check --deploy warns of.
        if key in checks and checks[key].status == OK and ("\n" in checks[key].detail
                                                            or checks[key].detail.startswith("the next deploy")):
            notes.append(f"{key}: {checks[key].detail}")
    return notes


def _said(r: Result) -> str:
    """What a failed command said: its stderr, else its stdout, else its exit code."""
    return r.stderr.strip() or r.stdout.strip() or f"exit code {r.exit_code}"


class _Collector(Reporter):
    """Keeps what the Executor reports instead of printing it: the result of
    each step on the runner (the VPN's; Executor.outputs holds only steps on
    hosts) and its notes (a VPN whose teardown failed). Every text is
    redacted when the report is."""

    def __init__(self, secrets: frozenset[str]):
        super().__init__(sys.stderr, secrets)
        self.runner: dict[int, Result] = {}
        self.notes: list[str] = []

    def step_finished(self, stage, step, host, r) -> None:
        if not host:
            self.runner[id(step)] = r.result

    def note(self, text: str) -> None:
        self.notes.append(text)


def _executor(ctx: context.Context, reporter: Reporter):
    """An Executor that runs on every host that answers, and fails each one
    that does not with its reason."""
    # Here, not at the top: `deployer --help` needs no SSH library (paramiko's import alone is a tenth
    # of a second).
    from deployer.run.executor import Executor

    return Executor(ctx, reporter, min(ctx.target.parallel, len(ctx.host_names)), every_host=True)


def _redacted(report: Report, redactor: Reporter) -> Report:
    """Every detail with the secrets masked: whole texts, before they are cut
    into lines or escaped as JSON, where a secret would no longer match."""
    def clean(o: Outcome) -> Outcome:
        return replace(o, detail=redactor.redact(o.detail))
    return replace(report, runner={k: clean(o) for k, o in report.runner.items()},
                   hosts={h: {k: clean(o) for k, o in checks.items()} for h, checks in report.hosts.items()},
                   notes=tuple(redactor.redact(n) for n in report.notes))


def _marks(stream) -> dict[str, str]:
    """✓ ✗ –, or ASCII where the stream cannot write them (a log in Latin-1)."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        "✓✗–".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return {OK: "ok", FAILED: "FAIL", NOT_RUN: "-"}
    return {OK: "✓", FAILED: "✗", NOT_RUN: "–"}


def _table(report: Report, marks: dict[str, str]) -> str:
    """Plain text (no colour: it reads the same in a TeamCity log): the
    runner's checks, a row of marks per host, what failed, the verdict."""
    width = max(map(len, report.runner))
    lines = [f"{marks[o.status]} {k.ljust(width)}  {_first(o.detail)}" for k, o in report.runner.items()]
    hosts = list(report.hosts)
    keys = _keys(report)
    column = max(len("host"), *map(len, hosts))
    lines += ["", "  ".join(["host".ljust(column), *keys])]
    for h in hosts:
        cells = [marks[report.hosts[h][k].status].ljust(len(k)) for k in keys]
        lines.append("  ".join([h.ljust(column), *cells]).rstrip())
    problems = [(k, o) for k, o in report.runner.items() if o.status != OK]
    problems += [(f"{h} {k}", o) for h in hosts for k, o in _problems(report.hosts[h])]
    lines += [""] if problems or report.notes else []
    for what, o in problems:
        first, *more = o.detail.split("\n")
        lines.append(f"{marks[o.status]} {what}: {first}")
        lines.extend(f"    {line}" for line in more)
    lines.extend(f"note: {n}" for n in report.notes)
    lines.append(_verdict(report))
    return "\n".join(lines)


def _keys(report: Report) -> tuple[str, ...]:
    """The rows of every host (the same for all: one target)."""
    return tuple(next(iter(report.hosts.values()), {})) or HOST_CHECKS


def _first(text: str) -> str:
    return text.split("\n", 1)[0]


def _problems(checks: dict[str, Outcome]) -> list[tuple[str, Outcome]]:
    """What failed on a host; of what did not run, one line for all, with the reason."""
    failed = [(k, o) for k, o in checks.items() if o.status == FAILED]
    skipped = [k for k, o in checks.items() if o.status == NOT_RUN]
    if skipped:
        reason = checks[skipped[0]].detail
        failed.append((f"{', '.join(skipped)}", Outcome(NOT_RUN, f"not run: {reason}")))
    return failed


def _verdict(report: Report) -> str:
    outcomes = report.outcomes()
    failed = sum(o.status == FAILED for o in outcomes)
    skipped = sum(o.status == NOT_RUN for o in outcomes)
    if report.ok:
        n = len(report.hosts)
        where = f"on each of {n} hosts" if n > 1 else "on the host"
        return (f"OK: every check passed ({len(report.runner)} on this machine, {len(_keys(report))} {where});"
                " nothing was changed")
    counts = [f"{failed} check{'' if failed == 1 else 's'} failed" if failed else "",
              f"{skipped} did not run" if skipped else ""]
    down = sum(any(o.status != OK for o in checks.values()) for checks in report.hosts.values())
    hosts = f"; hosts not ready: {down} of {len(report.hosts)}" if down else ""
    return (f"FAILED: {' and '.join(c for c in counts if c)}{hosts}; a deploy of {report.name} would not get"
            " through; nothing was changed")


def _json(report: Report) -> str:
    def one(o: Outcome) -> dict:
        return {"status": o.status, "detail": o.detail}
    return json.dumps({"config": report.name, "hostname": report.hostname, "ok": report.ok,
                       "runner": {k: one(o) for k, o in report.runner.items()},
                       "hosts": {h: {k: one(o) for k, o in checks.items()} for h, checks in report.hosts.items()},
                       "notes": list(report.notes), "verdict": _verdict(report)}, indent=2)
