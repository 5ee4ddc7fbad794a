"""What a failed step says, in the run's messages."""

from deployer import steps
from deployer.connectors.result import Result
from deployer.errors import DeployError

# What a group of steps ended with, when it did not all succeed: each step
# that failed, with the (host, result) of each host it failed on.
Failures = list[tuple[steps.Step, list[tuple[str, Result]]]]


def describe_error(e: Exception) -> str:
    if isinstance(e, DeployError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def detail(r: Result) -> str:
    """What a failed command said: its stderr, else its stdout, else its exit code."""
    return r.stderr.strip() or r.stdout.strip() or f"exit code {r.exit_code}"


def failure_message(step: steps.Step, failures: list[tuple[str, Result]], redact) -> str:
    lines = [f"{step.title}: failed on {len(failures)} host(s)"]
    for host, r in failures:
        # Redacted before it is cut into lines: a split secret would no longer match.
        text = redact(detail(r))
        lines.append(f"  {host}: " + "\n    ".join(text.splitlines()[-20:]))
    return "\n".join(lines)
