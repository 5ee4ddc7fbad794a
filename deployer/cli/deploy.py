"""`deploy CONFIG_NAME HOSTNAME`: arguments in, exit code out."""

import argparse
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace

from deployer import __version__, context, steps
from deployer.cli import completion
from deployer.cli.guard import Run, guarded, output_options, parse_vars, parsed, verbose_option
from deployer.config import DEFAULT_PIPELINE, Missing, load, names
from deployer.errors import (
    DeployError,
    DryRunLacks,
    StepFailed,
    UsageError,
)
from deployer.output import Reporter
from deployer.plan import pipeline, vhost
from deployer.steps import Plan

DESCRIPTION = """\
Deploy a Django app to the Apache hosts of a target, through its VPN.

A run packages the app into a tarball, opens the VPN, uploads and unpacks the
tarball as a new release on every host, renders the Apache vhost template,
runs the database migration once, then checks the Apache config, switches
the live path to the new release and reloads Apache gracefully. The VPN is
closed however the run ends; a failure before the switch undoes what the run
changed on the hosts.

CONFIG_NAME picks the target in targets.yaml (a name not listed there uses
the catch-all entry "*", so demo instances need no configuration) and names
the instance: its live code is DEPLOY_PATH=<deploy_root>/CONFIG_NAME and its
vhost <apache dir>/sites-available/CONFIG_NAME.conf.
"""

EPILOG = f"""\
stages (default order): {", ".join(DEFAULT_PIPELINE)}

examples:
  deploy alpha alpha.example.com                  as TeamCity runs it
  deploy demo-acme demo-acme.example.com          a demo, no configuration
  deploy alpha alpha.example.com --dry-run        print the plan, change nothing
  deploy alpha alpha.example.com --dry-run --diff and read the hosts: vhost diff, live release, upload
  deploy alpha alpha.example.com --only render,restart
  deploy local local.test                         this machine, no SSH, no VPN

exit codes (the last line says which release each host serves):
  0    deployed (or, with --dry-run, the plan is valid and a real run on
       this machine could start)
  1    failed, and undone: every host serves what it served before, and
       Apache was reloaded where it had read the new config (a migration
       or hook that ran is never undone: the last line says so)
  2    bad usage, config or input; nothing was run
  3    failed, and the undo did not complete: the hosts named need a person
  4    dry run: the plan is valid, but a real run on this machine could not
       start: it lacks what is listed (a key, the VPN file, a secret, ...)
  130  interrupted (Ctrl-C or SIGTERM); undone as for 1 (or 3, if it could not be)

manage releases, locks and history with the `deployer` command (deployer --help).
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deploy", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    completion.names(p.add_argument("config_name", metavar="CONFIG_NAME",
                   help="target and instance name, a DNS label (e.g. alpha, demo-acme)"))
    p.add_argument("hostname", metavar="HOSTNAME",
                   help="the site's host name, <<HOSTNAME>> in the template")
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="print every step that would run, with the rendered vhost, and what this machine"
                   " lacks for a real run; run nothing, connect to nothing")
    p.add_argument("--diff", action="store_true",
                   help="with --dry-run: also read every host (through the VPN; no lock, nothing written) and"
                   " show the vhost's diff, the live release and what the upload would send")
    p.add_argument("--targets", default="targets.yaml", metavar="PATH",
                   help="the targets file (default: ./targets.yaml)")
    p.add_argument("--only", type=_stage_list, default=(), metavar="STAGE[,STAGE]",
                   help="run only these stages of the pipeline")
    p.add_argument("--skip", type=_stage_list, default=(), metavar="STAGE[,STAGE]",
                   help="run the pipeline without these stages")
    p.add_argument("--var", action="append", default=[], metavar="KEY=VALUE",
                   help="set a template token, over vars: in targets.yaml (repeatable)")
    p.add_argument("--parallel", type=_positive, metavar="N",
                   help="at most N hosts at once (default: parallel: in targets.yaml, else all up to 32)")
    p.add_argument("--lock-wait", type=_seconds, default=0, metavar="SECONDS",
                   help="wait up to SECONDS for another run of this instance to end (default: fail at once)")
    output_options(p)
    verbose_option(p)
    p.add_argument("--version", action="version", version=f"deployer {__version__}")
    return p


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of hosts, at least 1: {text!r}")
    return int(text)


def _seconds(text: str) -> int:
    if not text.isdigit() or int(text) > 86400:
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds, at most 86400: {text!r}")
    return int(text)


def _stage_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def main(argv: Sequence[str] | None = None, stdout=None) -> int:
    args = parsed(parser(), argv)
    if isinstance(args, int):
        return args
    return guarded(args.output, stdout or sys.stdout, lambda run: _deploy(args, run), args.verbose)


def _deploy(args, run: Run) -> str:
    # Everything up to Executor.run is read-only: a UsageError here
    # means nothing ran anywhere.
    if args.diff and not args.dry_run:
        raise UsageError("--diff shows what a run would change, reading the hosts: add --dry-run")
    name = names.config_name(args.config_name)
    hostname = names.hostname(args.hostname)
    overrides = parse_vars(args.var)
    targets = load(args.targets)
    # A dry run on a laptop lacks the CI's key, VPN file and secrets: it lists
    # them after the plan instead of stopping at the first. A real run still
    # fails on the first, before anything runs.
    target, missing = targets.resolve_for_dry_run(name) if args.dry_run else (targets.resolve(name), ())
    selected = pipeline.select(target.pipeline, args.only, args.skip)
    lacks = {m.kind for m in missing}
    # No template, no vhost: the render stage cannot be planned, every other one can.
    stages = tuple(s for s in selected if s != "render") if "template" in lacks else selected
    reporter = run.report_to(context.secret_values(target, overrides))
    builds = "package" in stages and bool(target.build or target.python)
    copy_to = ""
    if builds and target.build and target.build.copy_source:
        # Named as a work dir (ending in the pid): a later run removes it if this one is killed.
        copy_to = os.path.join(tempfile.gettempdir(),
                               f"deployer-{name}-build-{secrets.token_hex(4)}-{os.getpid()}")
    try:
        if builds:
            # Before the plan is made: the release is named by the tree the build leaves.
            reporter.start(name, hostname, "", args.dry_run)
            made = context.for_instance(name, target, "build", hostname=hostname)
            _build(args, run, made, pipeline.prepare(made, copy_to))
        source = target.package.source
        if copy_to and not args.dry_run:
            target = replace(target, package=replace(target.package, source=copy_to))
        ctx = context.make(name, hostname, target, overrides, stages, lock_wait=args.lock_wait,
                           scan="source" not in lacks)
        if copy_to:
            ctx = replace(ctx, revision=context.git_revision(source))
        if target.python and "package" in stages and not ctx.wheels and not args.dry_run:
            # Made by the build above, for the requirements as they were then.
            raise DeployError(f"{target.python.requirements}: no wheels were made for it as it is now (did a build"
                              " command change it?); deploy again")
        the_plan = pipeline.build(ctx)
        if not builds:
            reporter.start(name, hostname, ctx.release, args.dry_run)
        elif args.dry_run:
            reporter.note(f"release {ctx.release} below is named by the source as it is now; the build would"
                          " change what is packaged, and so the name")
        if args.dry_run:
            _dry_run(args, reporter, ctx, the_plan, selected, stages, missing)
            return ""
        return _run(args, run, ctx, the_plan)
    finally:
        if copy_to:
            shutil.rmtree(copy_to, ignore_errors=True)


def _build(args, run: Run, ctx: context.Context, the_plan: Plan) -> None:
    """The build on this machine: printed by a dry run, else run (a failure
    ends the run before anything is opened)."""
    if args.dry_run:
        for stage, step in the_plan.steps():
            run.reporter.planned(stage, step)
        return
    from deployer.run.executor import Executor

    run.executor = Executor(ctx, run.reporter)
    run.executor.run(the_plan)


def _dry_run(args, reporter: Reporter, ctx: context.Context, the_plan: Plan, selected: tuple[str, ...],
             stages: tuple[str, ...], missing: tuple[Missing, ...]) -> None:
    _print_plan(reporter, the_plan, selected, stages)
    rendered = [s.content for _, s in the_plan.steps()
                if isinstance(s, steps.Install) and s.path == vhost.site(ctx).next and not s.source]
    for note in vhost.reload_notes(rendered[0]) if rendered else ():
        reporter.note(note)
    if the_plan.max_failed:
        reporter.note(f"max_failed: up to {the_plan.max_failed} of the {len(ctx.host_names)} hosts may fail (never"
                      f" {ctx.host_names[0]}, which holds the lock): the run goes on without each, undoes what it"
                      " changed there, and ends with exit code 5")
    if args.diff and any(m.kind == "connect" for m in missing):
        reporter.note("--diff: the hosts were not read: reaching them needs what is listed below")
    elif args.diff:
        # Here, not at the top: it brings the SSH library, which a plain dry run does without.
        from deployer.run import preview

        preview.show(ctx, the_plan, reporter, missing, min(args.parallel or ctx.target.parallel,
                                                           len(ctx.target.hosts)))
    _report_missing(reporter, missing)


def _run(args, run: Run, ctx: context.Context, the_plan: Plan) -> str:
    # Here, not at the top: a dry run needs no SSH library (paramiko's import alone is a tenth
    # of a second).
    from deployer.run.executor import Executor

    reporter = run.reporter
    parallel = min(args.parallel or ctx.target.parallel, len(ctx.target.hosts))
    run.executor = Executor(ctx, reporter, parallel)
    try:
        run.executor.run(the_plan)
    except StepFailed:
        gone = run.executor.gone_holder()
        if gone is None:
            raise
        from deployer.remote import instance
        from deployer.run import reading, records

        # A run killed on this machine (TeamCity's SIGKILL) left its lock and
        # what it changed: undone first, as `deployer unlock` does, then the
        # deploy; kept, if it was done on a host (past its commit point).
        undo = context.for_instance(ctx.name, ctx.target, "unlock", release=f"run {gone}")
        keep = bool(instance.past_commit(reading.states(undo, history=reading.WHOLE_HISTORY), gone))
        reporter.note(f"the lock is held by run {gone}, which ran on this machine and is gone (killed):"
                      f" taking it over and {'keeping' if keep else 'undoing'} what it left, then deploying")
        run.executor = Executor(undo, reporter, parallel)
        run.executor.run(pipeline.unlock(undo, gone, keep))
        records.forget(gone)
        run.executor = Executor(ctx, reporter, parallel)
        run.executor.run(the_plan)
    return run.executor.serving(True)


def _print_plan(reporter: Reporter, the_plan: Plan, selected: tuple[str, ...], planned: tuple[str, ...]) -> None:
    """Every step, in order; a stage that could not be planned on this
    machine is named where its steps would be."""
    order = {stage: i for i, stage in enumerate(selected)}
    dropped = [stage for stage in selected if stage not in planned]

    def dropped_before(position: int) -> None:
        while dropped and order[dropped[0]] < position:
            reporter.note(f"{dropped.pop(0)}: not shown: the template is not on this machine (listed below),"
                          " so the vhost cannot be rendered")

    for stage, step in the_plan.steps():
        dropped_before(order.get(stage, len(selected)))
        reporter.planned(stage, step)
    dropped_before(len(selected))
    for step in the_plan.after:
        reporter.planned("after a successful run", step)


def _report_missing(reporter: Reporter, missing: tuple[Missing, ...]) -> None:
    """A dry run's end: what a real run on this machine would lack, and the
    exit code that says whether it could start."""
    if not missing:
        return
    reporter.section(["a real run on this machine would lack:", *(f"  {m}" for m in missing)], "missing",
                     items=[{"key": m.key, "problem": m.problem} for m in missing])
    raise DryRunLacks("dry run: a real run on this machine could not start: it lacks what is listed above")
