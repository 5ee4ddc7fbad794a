"""What a deploy tells the person or the build server watching it.

One event interface, four renderings: rich (a terminal), plain (a log file),
teamcity (service messages, escaped by the teamcity-messages library and
written raw: rich would read their `[...]` as markup) and json (one object a
line). Every text goes through `redact` first, so a secret never reaches any
of them; then, in the three for people, through `printable_lines`, so no
text a host wrote can drive the terminal or the build log (JSON escapes
control characters itself and keeps the exact text).
"""

import os
from typing import IO

from deployer.output.details import details, failure_lines
from deployer.output.jsonl import JsonReporter
from deployer.output.plain import PlainReporter, QuietReporter
from deployer.output.reporter import Reporter, StepResult
from deployer.output.teamcity import TeamCityReporter, problem_identity
from deployer.output.terminal import RichReporter
from deployer.output.text import MASK, human_size, printable_lines

__all__ = ["MASK", "JsonReporter", "PlainReporter", "QuietReporter", "Reporter", "RichReporter", "StepResult",
           "TeamCityReporter", "choose", "details", "failure_lines", "human_size", "printable_lines",
           "problem_identity"]


def choose(kind: str, stream: IO[str], secrets: frozenset[str], verbose: bool = False) -> Reporter:
    if kind == "auto":
        if os.environ.get("TEAMCITY_VERSION"):
            kind = "teamcity"
        elif stream.isatty():
            kind = "rich"
        else:
            kind = "plain"
    cls = {"plain": PlainReporter, "rich": RichReporter, "teamcity": TeamCityReporter,
           "json": JsonReporter, "quiet": QuietReporter}[kind]
    return cls(stream, secrets, verbose)
