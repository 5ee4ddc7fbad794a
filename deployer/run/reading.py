"""Reading what an instance's hosts hold, through the target's VPN: read-only,
no lock. Shared by the commands that look before they act (deployer's, and
a deploy that finds a gone run's lock)."""

import sys

from deployer import context, steps
from deployer.connectors.result import CUT_NOTE
from deployer.errors import StepFailed
from deployer.output import QuietReporter
from deployer.plan import pipeline
from deployer.remote import instance

# As much history as `rollback` and a gone run's takeover read: whether a
# run was done on a host, or which release was live before, must not depend
# on how many runs came since (pipeline.READ_LIMIT bounds the answer).
WHOLE_HISTORY = 1000


def executor(ctx: context.Context, reporter):
    # Here, not at the top: paramiko's import alone is a tenth of a second.
    from deployer.run.executor import Executor

    return Executor(ctx, reporter, min(ctx.target.parallel, len(ctx.host_names)))


def outputs(ctx: context.Context, the_plan: steps.Plan) -> dict[str, str]:
    """Run a read-only plan whose last step prints what each host holds: its
    output per host. Only what goes wrong is shown (on stderr)."""
    ex = executor(ctx, QuietReporter(sys.stderr))
    ex.run(the_plan)
    return {h: r.stdout for h, r in ex.outputs(the_plan.stages[-1][1][0]).items()}


def states(ctx: context.Context, history: int = 20) -> dict[str, instance.HostState]:
    """Every host's state (instance.parse); a host whose answer was cut short
    fails the read, since what was cut may be its live release or lock."""
    answers = outputs(ctx, pipeline.read(ctx, history))
    cut = sorted(h for h, out in answers.items() if CUT_NOTE.match(out))
    if cut:
        raise StepFailed(f"the answer of {', '.join(cut)} to 'read releases, lock and history' was over"
                         f" {pipeline.READ_LIMIT // 1024} KiB and was cut: deployer does not act on part of it"
                         " (a host holds that many releases, or history lines deployer did not write?)")
    return {h: instance.parse(out) for h, out in answers.items()}
