"""From a Context to a Plan: the selected stages in order, hooks around each."""

from deployer import stages as stage_lib
from deployer.context import Context
from deployer.errors import UsageError
from deployer.steps import Plan


def select(pipeline: tuple[str, ...], only: tuple[str, ...], skip: tuple[str, ...]) -> tuple[str, ...]:
    """The stages of `pipeline` that run, after --only and --skip."""
    for name in (*only, *skip):
        if name not in pipeline:
            raise UsageError(f"no stage {name!r} in the pipeline ({', '.join(pipeline)})")
    return tuple(s for s in pipeline if (not only or s in only) and s not in skip)


def build(ctx: Context) -> Plan:
    t = ctx.target
    found = {name: stage_lib.find(name, ctx) for name in t.pipeline}
    built = []
    for name in ctx.stages:
        fn = found[name]
        steps = [
            *(stage_lib.hook_step(ctx, h, f"before {name}: {h.run}") for h in t.before.get(name, ())),
            *fn(ctx),
            *(stage_lib.hook_step(ctx, h, f"after {name}: {h.run}") for h in t.after.get(name, ())),
        ]
        built.append((name, tuple(steps)))
    if "upload" in ctx.stages and "package" not in ctx.stages:
        raise UsageError("stage upload needs the tarball of stage package; do not skip package")
    return Plan(tuple(built))
