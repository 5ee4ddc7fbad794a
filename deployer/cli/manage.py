"""`deployer COMMAND CONFIG_NAME`: an instance's releases, history, lock and
rollback. A command of its own, beside `deploy`: `deploy CONFIG_NAME
HOSTNAME` stays exactly what build servers run, and no config name (a
target called `rollback` or `list`) can be read as a command."""

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from deployer import __version__, context
from deployer.cli import check, completion, init
from deployer.cli.guard import Run, guarded, output_options, parsed, verbose_option
from deployer.config import CATCH_ALL, SCHEMA_FILE, load, names
from deployer.errors import EXIT_OK, EXIT_USAGE, DeployError, UsageError
from deployer.output import printable_lines
from deployer.plan import pipeline
from deployer.remote import instance
from deployer.run import reading, records

DESCRIPTION = """\
Look after the instances `deploy` makes: check a target before deploying,
list the instances on its hosts and destroy them, see the releases each
host keeps and who deployed what and when, remove a killed run's lock, and
go back to an earlier release. Each command connects like a deploy (the
target's VPN and SSH settings in targets.yaml); only destroy, rollback and
unlock change anything, and only for the instance named.
"""

EPILOG = """\
examples:
  deployer check alpha                  check a target before deploying; changes nothing
  deployer list                         every instance on the demo hosts: who deployed what, when
  deployer destroy demo-acme            remove an instance from every host (asks first)
  deployer destroy --older-than 14d     every unprotected instance last deployed 14+ days ago
  deployer init                         a commented targets.yaml and vhost template, here
  deployer releases alpha               the releases on each host, the live one marked
  deployer history alpha                every run: when, who, which release, how it ended
  deployer rollback alpha               every host back to the previous release
  deployer rollback alpha --to 20261128T101500Z-3f2a9c81d0e4
  deployer rollback alpha --dry-run     read the hosts, print the plan, change nothing
  deployer unlock alpha                 remove a killed run's lock, and undo what it left

exit codes: as for deploy (deploy --help); releases, history and list exit 0
when every host answered; check exits 0 only when every check passed, 1
when one failed or could not run, 2 for a bad targets.yaml or arguments.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deployer", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--version", action="version", version=f"deployer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _init_command(sub)
    check.add_parser(sub)
    _tool_commands(sub)
    _fleet_commands(sub)
    _instance_commands(sub)
    return p


def _targets(c: argparse.ArgumentParser) -> None:
    c.add_argument("--targets", default="targets.yaml", metavar="PATH",
                   help="the targets file (default: ./targets.yaml)")


def _init_command(sub) -> None:
    init_cmd = sub.add_parser("init", help="write a commented targets.yaml and a vhost template into a project",
                              description="Write a commented targets.yaml and templates/default_template into"
                              " DIRECTORY (default: here), a starting point to edit. Nothing is written if either"
                              " is there already.", allow_abbrev=False)
    init_cmd.add_argument("directory", metavar="DIRECTORY", nargs="?", default=".", type=Path)


def _tool_commands(sub) -> None:
    """schema and completion: for an editor and a shell, no host."""
    sub.add_parser("schema", help="print the JSON Schema of targets.yaml (for editors)",
                   description="Print the JSON Schema of targets.yaml, which editors read to complete and check"
                   " it: deployer schema > .deployer/targets.schema.json", allow_abbrev=False)
    shell = sub.add_parser("completion", help="the shell code that completes deploy and deployer (bash, zsh)",
                           description="Print the code that completes deploy's and deployer's options,"
                           " subcommands and config names (from targets.yaml). Add to ~/.bashrc:"
                           ' eval "$(deployer completion bash)"; to ~/.zshrc: eval "$(deployer completion zsh)".',
                           allow_abbrev=False)
    shell.add_argument("shell", choices=("bash", "zsh"))


def _fleet_commands(sub) -> None:
    """list and destroy: the instances on a target's hosts."""
    listing = sub.add_parser("list", help="every instance on a target's hosts: who deployed what, when, where",
                             description="Every instance deployer made on the hosts of CONFIG_NAME's target"
                             " (default: the catch-all entry \"*\", where demo instances go): its hostname, live"
                             " release, when and by whom it was deployed, and where hosts disagree.",
                             allow_abbrev=False)
    completion.names(listing.add_argument("config_name", metavar="CONFIG_NAME", nargs="?",
                     help="any instance of the target whose hosts to list (default: the catch-all entry)"))
    _targets(listing)
    output_options(listing)
    destroy = sub.add_parser(
        "destroy", help="remove an instance from every host (or every unprotected one older than --older-than)",
        description="Remove an instance from every host of its target: its site disabled and its vhost removed,"
        " Apache checked and reloaded, then its releases, live path and shared files removed. Asks first on a"
        " terminal (--yes otherwise); refuses targets marked protected: true in targets.yaml.",
        allow_abbrev=False)
    completion.names(destroy.add_argument("config_name", metavar="CONFIG_NAME", nargs="?",
                     help="the instance; with --older-than, any instance of the target whose hosts to look on"
                     " (default: the catch-all entry)"))
    destroy.add_argument("--older-than", type=_age, metavar="AGE",
                         help="every unprotected instance whose last deploy is older than AGE (14d, 12h, 2w)")
    destroy.add_argument("--keep-shared", action="store_true",
                         help="keep the instance's shared files (database, uploads) in <root>/<name>.shared")
    _targets(destroy)
    destroy.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    output_options(destroy)


def _instance_commands(sub) -> None:
    """releases, history, rollback, unlock: one instance, by its config name."""
    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help, allow_abbrev=False)
        completion.names(c.add_argument("config_name", metavar="CONFIG_NAME",
                                        help="the instance, as given to deploy"))
        _targets(c)
        output_options(c)
        return c

    command("releases", "the releases each host keeps, the live one marked, and where hosts disagree")
    history = command("history", "the instance's runs as each host recorded them, oldest first")
    history.add_argument("-n", "--lines", type=_count, default=20, metavar="N",
                         help="the last N runs (default 20)")
    rollback = command("rollback", "every host back to the previous release present on all of them (or --to"
                       " one), with the vhost it was deployed with; migrate is never run")
    rollback.add_argument("--to", metavar="RELEASE", help="the release to go back to (deployer releases)")
    rollback.add_argument("-n", "--dry-run", action="store_true",
                          help="read the hosts and print the plan; change nothing")
    verbose_option(rollback)
    rollback.add_argument("--lock-wait", type=_count, default=0, metavar="SECONDS",
                          help="wait up to SECONDS for another run of this instance to end")
    unlock = command("unlock", "remove the lock of a run that is gone (killed), undoing what it left")
    unlock.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _age(text: str) -> float:
    try:
        return instance.parse_age(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count(text: str) -> int:
    if not text.isdigit() or int(text) > 86400:
        raise argparse.ArgumentTypeError(f"expected a whole number, at most 86400: {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None, stdout=None, stdin=None) -> int:
    stdout = stdout or sys.stdout
    args = parsed(parser(), argv)
    if isinstance(args, int):
        return args
    if args.command == "init":
        return _init(args.directory, stdout)
    if args.command == "check":
        return check.main(args, stdout)
    if args.command == "schema":
        stdout.write(SCHEMA_FILE.read_text(encoding="utf-8"))
        return EXIT_OK
    if args.command == "completion":
        stdout.write(completion.script(args.shell))
        return EXIT_OK
    if args.command in ("releases", "history", "list"):
        # The answer on stdout; what went wrong reaching the hosts, on stderr.
        show = _list if args.command == "list" else _show
        return guarded("quiet", sys.stderr, lambda run: show(args, run, stdout))
    body = {"rollback": _rollback, "unlock": _unlock, "destroy": _destroy}[args.command]
    return guarded(args.output, stdout, lambda run: body(args, run, stdin or sys.stdin),
                   getattr(args, "verbose", False))


def _init(directory: Path, stdout) -> int:
    try:
        written, project = init.init(directory)
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        return EXIT_USAGE
    for path in written:
        stdout.write(f"wrote {path}\n")
    if project:
        found = [f"WSGI file {project.wsgi}" if project.wsgi else "",
                 f"Django in {project.python}" if project.python else "",
                 f"static files collected into {project.static_root}" if project.static_root else "",
                 f"packages from {project.requirements} for Python {project.hosts_version}"
                 if project.requirements and project.hosts_version else "",
                 f"the SQLite database {project.sqlite}, kept in shared/" if project.sqlite else "",
                 f"a build: {', '.join(project.build)}" if project.build else "",
                 f"port {project.port} for the local target"]
        stdout.write(f"found a Django project: {'; '.join(f for f in found if f)}\n")
        for note in project.notes:
            stdout.write(f"note: {note}\n")
    stdout.write("next: read targets.yaml and the template, then `deploy local localhost` to try it on this"
                 " machine\n")
    return EXIT_OK


def _instance(args) -> tuple[str, object]:
    name = names.config_name(args.config_name)
    return name, load(args.targets).resolve(name)


def _show(args, run: Run, stdout) -> str:
    name, target = _instance(args)
    ctx = context.for_instance(name, target, args.command)
    run.report_to(frozenset())
    states = reading.states(ctx, getattr(args, "lines", 20))
    as_json = args.output == "json"
    if args.command == "releases":
        text = _releases_json(states) if as_json else _releases_table(states)
    else:
        rows = _history_rows(states)[-args.lines:]
        text = json.dumps(rows, indent=2) if as_json else _history_table(rows, ctx.host_names)
    stdout.write((text if as_json else printable_lines(text)) + "\n")
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
    states = reading.states(reader, history=reading.WHOLE_HISTORY)
    release = instance.rollback_target(states, args.to)
    if all(s.live == release for s in states.values()):
        return f"release {release} is already live on every host; nothing to do"
    ctx = context.for_instance(name, target, "rollback", release=release, lock_wait=args.lock_wait,
                               hostname=_hostname_of(states, release))
    the_plan = pipeline.rollback(ctx, tuple(sorted({s.live for s in states.values()})))
    run.reporter.start(name, ctx.hostname, release, args.dry_run, action="rollback")
    if args.dry_run:
        for stage, step in the_plan.steps():
            run.reporter.planned(stage, step)
        return ""
    run.executor = reading.executor(ctx, run.reporter)
    run.executor.previous = {h: s.live for h, s in states.items()}
    run.executor.run(the_plan)
    return run.executor.serving(True)


def _hostname_of(states: dict[str, instance.HostState], release: str) -> str:
    """The HOSTNAME `release` was deployed with, as the history has it."""
    for s in states.values():
        for entry in reversed(s.history):
            if entry["release"] == release and entry["hostname"]:
                # The host's word, bound for the vhost: a host name, or it is not used.
                try:
                    return names.hostname(entry["hostname"])
                except UsageError:
                    return ""
    return ""


def _unlock(args, run: Run, stdin) -> str:
    name, target = _instance(args)
    run.report_to(frozenset())
    states = reading.states(context.for_instance(name, target, "unlock"), history=reading.WHOLE_HISTORY)
    odd = [f"{h}: {s.odd_lock}" for h, s in states.items() if s.odd_lock]
    if odd:
        raise DeployError(f"{name}'s lock is not one deployer made: {'; '.join(odd)}. Look at"
                          f" <deploy_root>/{name}.deployer/lock on that host and remove it by hand")
    # "-": a lock with no owner (a run died taking it).
    held = {s.lock_run or "-": s.lock for s in states.values() if s.lock}
    if not held:
        return f"{name} is not locked on any host; nothing to do"
    if len(held) > 1:
        raise DeployError(f"{name} is locked by more than one run: " + "; ".join(held.values())
                          + f". Unlock the hosts by hand (rm -r <deploy_root>/{name}.deployer/lock)")
    (gone, who), = held.items()
    # The run that would be undone is the one the lock's first line names
    # (what taking it over checks), whatever the host wrote for people.
    alive = records.alive(gone)
    if alive:
        raise DeployError(f"{name} is locked by run {gone} ({who}), which is still running on this machine"
                          f" (pid {alive});"
                          " stop it (it undoes its own changes), or wait for it")
    done_on = instance.past_commit(states, gone)
    if done_on:
        what = (f"its history says it was done on {', '.join(done_on)}, so what it changed is kept on every"
                " host (none is undone: the hosts would serve different releases)")
    else:
        what = "what it changed and did not finish is undone on every host, and Apache reloaded"
    confirm(f"{name} is locked by run {gone} ({who}). Unlock it only if that run is gone: {what}. Go on?",
            args.yes, stdin, run.stdout)
    # The history's release column says which run this one undid.
    ctx = context.for_instance(name, target, "unlock", release=f"run {gone}")
    run.reporter.start(name, "", ctx.release, False, action="unlock")
    run.executor = reading.executor(ctx, run.reporter)
    run.executor.run(pipeline.unlock(ctx, gone, keep=bool(done_on)))
    records.forget(gone)
    if not done_on:
        return f"unlocked: what run {gone} left is undone on every host"
    return f"unlocked: run {gone} was done on {', '.join(done_on)}; its changes are kept on every host, " + _lives(
        name, {h: s.live for h, s in states.items()})


def _lives(name: str, lives: dict[str, str]) -> str:
    """What the hosts serve, and what to do if they do not agree."""
    if len(set(lives.values())) == 1:
        live = next(iter(lives.values()))
        return f"where release {live} is live" if live else "where no release is live"
    return ("but the hosts serve different releases (" + ", ".join(f"{h}: {r or 'none'}" for h, r in lives.items())
            + f"): `deployer rollback {name} --to RELEASE` puts one on every host")


def _list(args, run: Run, stdout) -> str:
    name, target = _hosts_of(args)
    run.report_to(frozenset())
    found = _instances(name, target)
    now, protected = datetime.now(UTC), _protection(args)
    if args.output == "json":
        stdout.write(json.dumps([{"name": i.name, "hostname": _field(i, "hostname"), "live": sorted(i.lives),
                                  "deployed": _field(i, "time"), "by": _by(i), "age_seconds": i.age(now),
                                  "hosts": {h: f.live or None for h, f in i.hosts.items()},
                                  "protected": protected(i.name), "problems": i.problems()}
                                 for i in found], indent=2) + "\n")
    else:
        stdout.write(printable_lines(f"instances on the hosts of {_which(name, target)}:\n"
                                     + _instances_table(found, now, protected)) + "\n")
    return f"read every host of {_which(name, target)}"


def _which(name: str, target) -> str:
    catch_all = " (the catch-all entry, where demo instances go)" if target.entry == CATCH_ALL else ""
    return f"target {target.entry!r}{catch_all}"


def _hosts_of(args) -> tuple[str, object]:
    """The config name whose target's hosts a command looks on, and that target."""
    targets = load(args.targets)
    if args.config_name:
        name = names.config_name(args.config_name)
        return name, targets.resolve(name)
    if CATCH_ALL not in targets.entries:
        raise UsageError(f"{args.targets}: no catch-all entry {CATCH_ALL!r}: name an instance whose target's"
                         " hosts to look on")
    try:
        return CATCH_ALL, targets.resolve(CATCH_ALL)
    except UsageError as e:
        # `deployer list` names no target: say which one it read, and how to read another.
        raise UsageError(f"{e} (deployer {args.command} with no CONFIG_NAME looks on the hosts of the catch-all"
                         f" entry {CATCH_ALL!r}; name an instance to look on its target's hosts)") from None


def _instances(name: str, target) -> list[instance.Instance]:
    ctx = context.for_instance(name if name != CATCH_ALL else "list", target, "list")
    return instance.merge({h: instance.parse_instances(out)
                           for h, out in reading.outputs(ctx, pipeline.instances(ctx)).items()})


def _field(i: instance.Instance, key: str) -> str:
    return i.last[key] if i.last and i.last[key] not in ("", "-") else ""


def _by(i: instance.Instance) -> str:
    """Who deployed it last: the CI build, else user@machine."""
    return _field(i, "ci") or _field(i, "who").split(" (")[0]


def _entry_of(args):
    """name -> the entry of targets.yaml it uses: its own, or the catch-all."""
    entries = load(args.targets).entries
    return lambda name: name if name in entries else CATCH_ALL


def _protection(args):
    """name -> whether its target is `protected: true`. From the file's
    entries, not a resolved target: that would need the target's files
    (its VPN config, its key), which this machine may not have."""
    targets = load(args.targets)

    def protected(name: str) -> bool:
        entry = name if name in targets.entries else CATCH_ALL
        return bool({**targets.defaults, **targets.entries.get(entry, {})}.get("protected", False))
    return protected


def _instances_table(found: list[instance.Instance], now: datetime, protected) -> str:
    if not found:
        return "(no instances)"
    rows = [("instance", "hostname", "live release", "deployed", "by", "hosts", "")]
    for i in found:
        age = i.age(now)
        lives = sorted(i.lives - {""})
        rows.append((i.name + (" (protected)" if protected(i.name) else ""), _field(i, "hostname") or "-",
                     lives[0] if len(lives) == 1 else ("-" if not lives else "(differ)"),
                     f"{_field(i, 'time') or '-'}" + (f" ({_ago(age)} ago)" if age is not None else ""),
                     _by(i) or "-", f"{len(i.hosts)}/{len(i.every_host)}", "; ".join(i.problems())))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _ago(seconds: float) -> str:
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= 2 * size:
            return f"{s // size} {unit}"
    return f"{s} s"


def _destroy(args, run: Run, stdin) -> str:
    if args.older_than is None:
        if not args.config_name:
            raise UsageError("name the instance to destroy, or give --older-than AGE")
        name = names.config_name(args.config_name)
        target = load(args.targets).resolve(name)
        _refuse_protected(name, target)
        run.report_to(frozenset())
        states = reading.states(context.for_instance(name, target, "destroy"))
        if not any(s.live or s.releases or s.lock or s.history or (s.shared and not args.keep_shared)
                   for s in states.values()):
            return f"{name}: no such instance on any host of target {target.entry!r}; nothing to do"
        lives = sorted({s.live for s in states.values()} - {""})
        confirm(f"Destroy instance {name} (live release {', '.join(lives) or 'none'}) on"
                f" {', '.join(states)}? Its site is disabled and its vhost removed, Apache reloaded, then its"
                f" releases{'' if args.keep_shared else ' and its shared files (database, uploads)'} removed.",
                args.yes, stdin, run.stdout)
        return _destroy_one(name, target, args.keep_shared, run)
    where, target = _hosts_of(args)
    run.report_to(frozenset())
    now = datetime.now(UTC)
    found = _instances(where, target)
    old = [i for i in found if (age := i.age(now)) is not None and age > args.older_than]
    protected, entry_of = _protection(args), _entry_of(args)
    chosen = []
    for i in old:
        if protected(i.name):
            run.reporter.note(f"{i.name} is older, but protected: true in {args.targets}: kept")
        elif entry_of(i.name) != target.entry:
            # Its own entry may name other hosts and another deploy root: what
            # was judged old here is not what destroying it there would remove.
            run.reporter.note(f"{i.name} is older here, but its entry in {args.targets} is"
                              f" {entry_of(i.name)!r}, not {target.entry!r}: kept (destroy it by name)")
        else:
            chosen.append(i)
    if not chosen:
        return f"no unprotected instance on target {target.entry!r}'s hosts is older than {_ago(args.older_than)}"
    confirm(f"Destroy these {len(chosen)} instance(s), last deployed more than {_ago(args.older_than)} ago:\n"
            + "\n".join(f"  {i.name} ({_field(i, 'hostname') or 'no hostname'}, {_ago(i.age(now) or 0)} ago)"
                        for i in chosen)
            + f"\nEach one's site is disabled, Apache reloaded, and its releases"
              f"{'' if args.keep_shared else ' and shared files'} removed.", args.yes, stdin, run.stdout)
    failed = []
    for i in chosen:
        # One at a time, each under its own lock: a failure leaves it as it was, and the others go on.
        try:
            _destroy_one(i.name, target, args.keep_shared, run)
        except DeployError as e:
            failed.append(i.name)
            run.reporter.note(f"{i.name}: not destroyed: {e}")
    if failed:
        raise DeployError(f"not destroyed: {', '.join(failed)} (see above); the others are gone")
    return f"destroyed {len(chosen)} instance(s): {', '.join(i.name for i in chosen)}"


def _refuse_protected(name: str, target) -> None:
    if target.protected:
        raise UsageError(f"{name} uses target {target.entry!r}, which is protected: true in targets.yaml;"
                         " deployer never destroys it")


def _destroy_one(name: str, target, keep_shared: bool, run: Run) -> str:
    _refuse_protected(name, target)
    ctx = context.for_instance(name, target, "destroy")
    run.reporter.start(name, "", "", False, action="destroy")
    run.executor = reading.executor(ctx, run.reporter)
    run.executor.run(pipeline.destroy(ctx, keep_shared))
    # Its files go after the run has succeeded (see pipeline.destroy), where a
    # failure is only a note: read the hosts again before saying it is gone.
    # The shared files placed by hand stay (shared/files: deployer never wrote them), and so their folder.
    kept = target.shared.files if not keep_shared else ()
    left = [h for h, s in reading.states(context.for_instance(name, target, "destroy")).items()
            if s.live or s.releases or s.lock or s.history or (s.shared and not keep_shared and not kept)]
    if left:
        raise DeployError(f"{name}: its site is gone, but files of it are left on {', '.join(left)} (see the"
                          f" notes above); `deployer destroy {name}` again removes them")
    return f"{name} is gone from every host" + (f"; the shared files placed by hand stay: {', '.join(kept)}"
                                               if kept else "")


def confirm(question: str, yes: bool, stdin, stdout) -> None:
    """Go on if `yes`, or if a person at a terminal answers y; else stop, changing nothing."""
    if yes:
        return
    if not stdin.isatty():
        raise UsageError(f"{question} Not on a terminal: add --yes to go on without asking")
    # The question quotes hosts (a lock's owner): shown as any host text is.
    stdout.write(f"{printable_lines(question)} [y/N] ")
    stdout.flush()
    if stdin.readline().strip().lower() not in ("y", "yes"):
        raise DeployError("not confirmed; nothing was changed")


if __name__ == "__main__":
    sys.exit(main())
