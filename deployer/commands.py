"""`deployer COMMAND CONFIG_NAME`: an instance's releases, history, lock and
rollback. A command of its own, beside `deploy`: `deploy CONFIG_NAME
HOSTNAME` stays exactly what build servers run, and no config name (a
target called `rollback` or `list`) can be read as a command."""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from deployer import __version__, context, instance, names, plan, scaffold
from deployer.cli import Run, guarded
from deployer.config import load
from deployer.errors import EXIT_OK, EXIT_USAGE, DeployError, UsageError
from deployer.output import QuietReporter

DESCRIPTION = """\
Look after the instances `deploy` made: the releases each host keeps, who
deployed what and when, the lock a run holds, and going back to an earlier
release. Each command connects like a deploy (the target's VPN and SSH
settings in targets.yaml) and reads or changes only the instance named.
"""

EPILOG = """\
examples:
  deployer releases alpha               the releases on each host, the live one marked
  deployer history alpha                every run: when, who, which release, how it ended
  deployer rollback alpha               every host back to the previous release
  deployer rollback alpha --to 20261128T101500Z-3f2a9c81d0e4
  deployer rollback alpha --dry-run     read the hosts, print the plan, change nothing
  deployer unlock alpha                 remove a killed run's lock, and undo what it left

exit codes: as for deploy (deploy --help); releases and history exit 0
when every host answered.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deployer", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"deployer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help, allow_abbrev=False)
        c.add_argument("config_name", metavar="CONFIG_NAME", help="the instance, as given to deploy")
        c.add_argument("--targets", default="targets.yaml", metavar="PATH",
                       help="the targets file (default: ./targets.yaml)")
        return c

    init = sub.add_parser("init", help="write a commented targets.yaml and a vhost template into a project",
                          description="Write a commented targets.yaml and templates/default_template into"
                          " DIRECTORY (default: here), a starting point to edit. Nothing is written if either"
                          " is there already.", allow_abbrev=False)
    init.add_argument("directory", metavar="DIRECTORY", nargs="?", default=".", type=Path)
    for name, help in (("releases", "the releases each host keeps, the live one marked, and where hosts disagree"),
                       ("history", "the instance's runs as each host recorded them, oldest first")):
        c = command(name, help)
        c.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if name == "history":
            c.add_argument("-n", "--lines", type=_count, default=20, metavar="N",
                           help="the last N runs (default 20)")
    for name, help in (("rollback", "every host back to the previous release present on all of them (or --to"
                                    " one), with the vhost it was deployed with; migrate is never run"),
                       ("unlock", "remove the lock of a run that is gone (killed), undoing what it left")):
        c = command(name, help)
        c.add_argument("--output", choices=("auto", "rich", "plain", "teamcity", "json"), default="auto")
        if name == "rollback":
            c.add_argument("--to", metavar="RELEASE", help="the release to go back to (deployer releases)")
            c.add_argument("-n", "--dry-run", action="store_true",
                           help="read the hosts and print the plan; change nothing")
            c.add_argument("--lock-wait", type=_count, default=0, metavar="SECONDS",
                           help="wait up to SECONDS for another run of this instance to end")
        else:
            c.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return p


def _count(text: str) -> int:
    if not text.isdigit() or int(text) > 86400:
        raise argparse.ArgumentTypeError(f"expected a whole number, at most 86400: {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None, stdout=None, stdin=None) -> int:
    stdout = stdout or sys.stdout
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    if args.command == "init":
        return _init(args.directory, stdout)
    if args.command in ("releases", "history"):
        # The answer on stdout; what went wrong reaching the hosts, on stderr.
        return guarded("quiet", sys.stderr, lambda run: _show(args, run, stdout))
    body = _rollback if args.command == "rollback" else _unlock
    return guarded(args.output, stdout, lambda run: body(args, run, stdin or sys.stdin))


def _init(directory: Path, stdout) -> int:
    try:
        written = scaffold.init(directory)
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        return EXIT_USAGE
    for path in written:
        stdout.write(f"wrote {path}\n")
    stdout.write("next: read targets.yaml and the template, then `deploy local localhost` to try it on this"
                 " machine\n")
    return EXIT_OK


def _instance(args) -> tuple[str, object]:
    name = names.config_name(args.config_name)
    return name, load(args.targets).resolve(name)


def _read(ctx: context.Context, history: int = 20) -> dict[str, instance.HostState]:
    """Every host's state, through the target's VPN; read-only, no lock.
    Only what goes wrong is shown (on stderr)."""
    from deployer.executor import Executor

    the_plan = plan.read(ctx, history)
    executor = Executor(ctx, QuietReporter(sys.stderr), min(ctx.target.parallel, len(ctx.host_names)))
    executor.run(the_plan)
    step = the_plan.stages[-1][1][0]
    return {h: instance.parse(r.stdout) for h, r in executor.outputs(step).items()}


def _show(args, run: Run, stdout) -> str:
    name, target = _instance(args)
    ctx = context.for_instance(name, target, args.command)
    run.report_to(frozenset())
    states = _read(ctx, getattr(args, "lines", 20))
    if args.command == "releases":
        text = _releases_json(states) if args.json else _releases_table(states)
    else:
        rows = _history_rows(states)[-args.lines:]
        text = json.dumps(rows, indent=2) if args.json else _history_table(rows, ctx.host_names)
    stdout.write(text + "\n")
    return "read every host"


def _releases_json(states: dict[str, instance.HostState]) -> str:
    return json.dumps({h: {"live": s.live or None, "lock": s.lock or None,
                           "releases": [{"name": r.name, "whole": r.whole, "vhost": r.vhost} for r in s.releases]}
                       for h, s in states.items()}, indent=2)


def _releases_table(states: dict[str, instance.HostState]) -> str:
    hosts = list(states)
    every = sorted(({r.name for s in states.values() for r in s.releases}
                    | {s.live for s in states.values()}) - {""})
    cell: dict[tuple[str, str], str] = {}
    for h, s in states.items():
        for r in s.releases:
            cell[r.name, h] = ("LIVE" if r.name == s.live else "kept") + ("" if r.whole else " (partial)") + (
                "" if r.vhost or not r.whole else " (no vhost)")
        if s.live and (s.live, h) not in cell:
            cell[s.live, h] = "LIVE (missing!)"
    widths = [max(len("release"), *(len(r) for r in every))] + [max(len(h), 16) for h in hosts]
    lines = ["  ".join(t.ljust(w) for t, w in zip(["release", *hosts], widths, strict=True)).rstrip()]
    for r in reversed(every):
        row = [r, *(cell.get((r, h), "-") for h in hosts)]
        mark = "" if len({cell.get((r, h), "-") for h in hosts}) == 1 else "   <- hosts disagree"
        lines.append("  ".join(t.ljust(w) for t, w in zip(row, widths, strict=True)).rstrip() + mark)
    if not every:
        lines.append("(no releases)")
    lives = {s.live for s in states.values()}
    if len(lives) > 1:
        lines.append("the hosts do not serve the same release: deploy again, or `deployer rollback --to` one")
    for h, s in states.items():
        if s.lock:
            lines.append(f"{h}: locked by {s.lock}")
    return "\n".join(lines)


def _history_rows(states: dict[str, instance.HostState]) -> list[dict]:
    """One row per run, with the hosts that recorded it (and its outcome on each, if they differ)."""
    runs: dict[str, dict] = {}
    for h, s in states.items():
        for entry in s.history:
            row = runs.setdefault(entry["run"], {**entry, "hosts": {}})
            row["hosts"][h] = entry["outcome"]
    return sorted(runs.values(), key=lambda r: r["time"])


def _history_table(rows: list[dict], hosts: tuple[str, ...]) -> str:
    if not rows:
        return "(no runs recorded)"
    lines = []
    for r in rows:
        outcomes = set(r["hosts"].values())
        outcome = outcomes.pop() if len(outcomes) == 1 else ", ".join(f"{h}: {o}" for h, o in r["hosts"].items())
        where = "" if len(r["hosts"]) == len(hosts) else f" [only on {', '.join(r['hosts'])}]"
        extra = "".join(f" {k}={r[k]}" for k in ("ci", "revision") if r[k] not in ("", "-"))
        lines.append(f"{r['time']}  {r['action']:<8} {outcome:<20} {r['release']}  {r['hostname'] or '-'}"
                     f"  by {r['who']}{extra}{where}")
    return "\n".join(lines)


def _rollback(args, run: Run, stdin) -> str:
    name, target = _instance(args)
    if args.to is not None:
        names.release(args.to)
    reader = context.for_instance(name, target, "rollback")
    run.report_to(frozenset())
    states = _read(reader, history=1000)
    release = instance.rollback_target(states, args.to)
    if all(s.live == release for s in states.values()):
        return f"release {release} is already live on every host; nothing to do"
    ctx = context.for_instance(name, target, "rollback", release=release, lock_wait=args.lock_wait,
                               hostname=_hostname_of(states, release))
    the_plan = plan.rollback(ctx, tuple(sorted({s.live for s in states.values()})))
    run.reporter.start(name, ctx.hostname, release, args.dry_run, action="rollback")
    if args.dry_run:
        for stage, step in the_plan.steps():
            run.reporter.planned(stage, step)
        return ""
    from deployer.executor import Executor

    run.executor = Executor(ctx, run.reporter, min(target.parallel, len(target.hosts)))
    run.executor.previous = {h: s.live for h, s in states.items()}
    run.executor.run(the_plan)
    return run.executor.serving(True)


def _hostname_of(states: dict[str, instance.HostState], release: str) -> str:
    """The HOSTNAME `release` was deployed with, as the history has it."""
    for s in states.values():
        for entry in reversed(s.history):
            if entry["release"] == release and entry["hostname"]:
                return entry["hostname"]
    return ""


def _unlock(args, run: Run, stdin) -> str:
    name, target = _instance(args)
    run.report_to(frozenset())
    states = _read(context.for_instance(name, target, "unlock"))
    # "-": a lock with no owner (a run died taking it).
    held = {s.lock_run or "-": s.lock for s in states.values() if s.lock}
    if not held:
        return f"{name} is not locked on any host; nothing to do"
    if len(held) > 1:
        raise DeployError(f"{name} is locked by more than one run: " + "; ".join(held.values())
                          + f". Unlock the hosts by hand (rm -r <deploy_root>/{name}.deployer/lock)")
    (gone, who), = held.items()
    here = instance.holder_here(who)
    alive = here[1] if here else None
    if alive:
        raise DeployError(f"{name} is locked by {who}, which is still running on this machine (pid {alive});"
                          " stop it (it undoes its own changes), or wait for it")
    confirm(f"{name} is locked by {who}. Unlock it only if that run is gone: what it changed and did not"
            " finish is undone on every host, and Apache reloaded. Go on?", args.yes, stdin, run.stdout)
    # The history's release column says which run this one undid.
    ctx = context.for_instance(name, target, "unlock", release=f"run {gone}")
    run.reporter.start(name, "", ctx.release, False, action="unlock")
    from deployer.executor import Executor

    run.executor = Executor(ctx, run.reporter, min(target.parallel, len(target.hosts)))
    run.executor.run(plan.unlock(ctx, gone))
    return f"unlocked: what run {gone} left is undone on every host"


def confirm(question: str, yes: bool, stdin, stdout) -> None:
    """Go on if `yes`, or if a person at a terminal answers y; else stop, changing nothing."""
    if yes:
        return
    if not stdin.isatty():
        raise UsageError(f"{question} Not on a terminal: add --yes to go on without asking")
    stdout.write(f"{question} [y/N] ")
    stdout.flush()
    if stdin.readline().strip().lower() not in ("y", "yes"):
        raise DeployError("not confirmed; nothing was changed")


if __name__ == "__main__":
    sys.exit(main())
