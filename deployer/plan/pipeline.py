"""From a Context to a Plan: the selected stages in order, hooks around each."""

from dataclasses import replace

from deployer import steps
from deployer.context import Context
from deployer.errors import UsageError
from deployer.plan import rollout, vhost
from deployer.plan import stages as stage_lib
from deployer.remote import hostscripts
from deployer.steps import Plan


def select(pipeline: tuple[str, ...], only: tuple[str, ...], skip: tuple[str, ...]) -> tuple[str, ...]:
    """The stages of `pipeline` that run, after --only and --skip."""
    for name in (*only, *skip):
        if name not in pipeline:
            raise UsageError(f"no stage {name!r} in the pipeline ({', '.join(pipeline)})")
    return tuple(s for s in pipeline if (not only or s in only) and s not in skip)


def build(ctx: Context) -> Plan:
    t = ctx.target
    # Only the stages that run: a runner without a plugin can still --skip its stage.
    found = {name: stage_lib.find(name, ctx) for name in ctx.stages}
    built = []
    for name in ctx.stages:
        made = found[name](ctx)
        if not isinstance(made, (list, tuple)) or not all(isinstance(s, steps.Step) for s in made):
            raise UsageError(f"stage {name!r} returned {made!r}: expected a list of steps (deployer.steps)")
        # Before migrate (the database it makes, migrate needs), or at the end of the upload without it.
        first = stage_lib.first_deploy(ctx) if name == ("migrate" if "migrate" in ctx.stages else "upload") else ()
        stage_steps = [
            *(first if name == "migrate" else ()),
            *(stage_lib.hook_step(ctx, h, f"before {name}: {h.run}") for h in t.before.get(name, ())),
            *made,
            *(first if name == "upload" else ()),
            *(stage_lib.hook_step(ctx, h, f"after {name}: {h.run}") for h in t.after.get(name, ())),
        ]
        built.append((name, tuple(stage_steps)))
    if "upload" in ctx.stages and "package" not in ctx.stages:
        raise UsageError("stage upload needs the tarball of stage package; do not skip package")
    lock = stage_lib.lock(ctx)
    built = _before_first_on_hosts(built, lock)
    after = ((stage_lib.prune(ctx), *([stage_lib.prune_venvs(ctx)] if t.python else ())) if ctx.uploads
             else ())
    return Plan(tuple(built), lock=lock, after=after, max_failed=rollout.budget(t.max_failed, len(t.hosts)))


# What a host may answer `read` with: every release and up to 1,000 history
# lines (rollback's), each cut at 4 KiB on the host. A longer answer fails
# (reading.states): acted on in part, it could lack the live release.
READ_LIMIT = 16 * 1024 * 1024


def read(ctx: Context, history: int = 20) -> Plan:
    """Read what the instance's hosts hold; changes nothing, takes no lock."""
    step = steps.Run("read releases, lock and history", ctx.host_names,
                     command=hostscripts.state(ctx.deploy_path, ctx.releases_dir, ctx.state_dir, history,
                                               stage_lib.VHOST_RECORD, ctx.shared_dir),
                     output_limit=READ_LIMIT)
    return Plan((("vpn", stage_lib.vpn(ctx)), ("read", (step,))))


def rollback(ctx: Context, seen: tuple[str, ...]) -> Plan:
    """Every host back to `ctx.release`, if each one's live release is still one of `seen`."""
    lock = stage_lib.lock(ctx)
    return Plan((("vpn", stage_lib.vpn(ctx)), ("rollback", (lock, *stage_lib.activate(ctx, seen)))), lock=lock,
                max_failed=rollout.budget(ctx.target.max_failed, len(ctx.target.hosts)))


def unlock(ctx: Context, run_id: str, keep: bool = False) -> Plan:
    """The lock of run `run_id`, gone, taken over, and what it left undone
    (or, with `keep`, kept: see stages.undo_run)."""
    lock = stage_lib.lock(ctx, takes_over=run_id)
    return Plan((("vpn", stage_lib.vpn(ctx)), ("unlock", (lock, *stage_lib.undo_run(ctx, run_id, keep)))),
                lock=lock)


def destroy(ctx: Context, keep_shared: bool) -> Plan:
    """Instance `ctx.name` gone from every host: its site first, then (the
    run having succeeded) its files and, with the lock, its state."""
    # Its state goes with what deployer wrote: shared files placed by hand are not (see stages.purge).
    gone_with = () if keep_shared or ctx.target.shared.files else (ctx.shared_dir,)
    lock = replace(stage_lib.lock(ctx), forgets=(ctx.deploy_path, ctx.releases_dir, *gone_with))
    retire = (lock, *stage_lib.retire(ctx), *stage_lib.on_destroy(ctx))
    return Plan((("vpn", stage_lib.vpn(ctx)), ("destroy", retire)), lock=lock,
                after=(stage_lib.purge(ctx, keep_shared),
                       *([stage_lib.prune_venvs(ctx)] if ctx.target.python else ())))


def prepare(ctx: Context, copy_to: str) -> Plan:
    """What runs on this machine before the deploy's plan can be made (see stages.prepare)."""
    made = stage_lib.prepare(ctx, copy_to)
    return Plan((("build", made),) if made else ())


def instances(ctx: Context) -> Plan:
    """Every instance under the target's deploy root, on every host; read-only."""
    step = steps.Run("read the instances", ctx.host_names,
                     command=hostscripts.instances(ctx.target.deploy_root, ctx.target.apache.dir,
                                                   vhost.owner_mark("%s")),
                     output_limit=16 * 1024 * 1024)  # all of them: a few hundred bytes each
    return Plan((("vpn", stage_lib.vpn(ctx)), ("read", (step,))))


def _before_first_on_hosts(built, lock):
    """The lock goes first in the stage of the first step that runs on a host."""
    for i, (name, stage_steps) in enumerate(built):
        for j, step in enumerate(stage_steps):
            if step.hosts:
                return [*built[:i], (name, (*stage_steps[:j], lock, *stage_steps[j:])), *built[i + 1:]]
    return built
