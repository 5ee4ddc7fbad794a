"""TeamCity's service messages, escaped by the teamcity-messages library and
written raw (rich would read their `[...]` as markup)."""

import hashlib
import time
from typing import IO

from teamcity.messages import TeamcityServiceMessages

from deployer.output.details import failure_lines, where
from deployer.output.plain import PlainReporter


class TeamCityReporter(PlainReporter):
    """Service messages for TeamCity: a block per stage, a build problem on failure."""

    def __init__(self, stream, secrets=frozenset(), verbose=False):
        super().__init__(stream, secrets, verbose)
        # Values are redacted before the library escapes them: a secret
        # containing ' or | would no longer match once escaped.
        self.tc = TeamcityServiceMessages(output=_TextStream(stream), encoding="utf-8")

    def write(self, line):
        # Text from hosts and file names is not ours: a line holding a
        # service message (a compromised host printing publishArtifacts of
        # the agent's key) goes out escaped, inside a message of our own.
        for part in self.printable(line).split("\n"):
            if "##teamcity[" in part.lower():
                self.tc.message("message", text=part)
            else:
                self.stream.write(part + "\n")
        self.stream.flush()

    def start(self, name, hostname, release, dry_run, action="deploy"):
        self.started = time.monotonic()
        self.problems = 0
        super().start(name, hostname, release, dry_run, action)

    def stage_started(self, stage):
        self.stage_began = time.monotonic()
        self.tc.blockOpened(stage)
        self.tc.progressMessage(f"deployer: {stage}")

    def stage_finished(self, stage, ok):
        self.tc.blockClosed(stage)
        if not ok:
            return
        # TeamCity charts each key across builds: how long each stage takes (when it succeeds).
        self.tc.message("buildStatisticValue", key=f"deployer.{stage}.seconds",
                        value=f"{time.monotonic() - self.stage_began:.3f}")

    def step_finished(self, stage, step, host, r):
        super().step_finished(stage, step, host, r)
        if not r.result.ok:
            # One problem per stage and host, under an identity that stays the
            # same from build to build, so TeamCity can tell a new failure
            # from a known one (and mute it).
            self.problems += 1
            last = (failure_lines(step, r.result, self.printable) or [""])[-1]
            place = where(step, host)
            self.tc.buildProblem(description=self.printable(f"{stage} failed on {place}: {last}")[:4000],
                                 identity=problem_identity(stage, place))

    def note(self, text):
        self.tc.message("message", text=self.printable(text), status="WARNING")

    def finished(self, exit_code, error, summary=""):
        if hasattr(self, "started"):
            self.tc.message("buildStatisticValue", key="deployer.total.seconds",
                            value=f"{time.monotonic() - self.started:.3f}")
        # An undo that did not complete (3), or an interrupt (130), is a problem
        # of its own, beside any step's: a person must look at the hosts.
        if error and (exit_code in (3, 130) or not getattr(self, "problems", 0)):
            # TeamCity shows the description in the build overview: one line.
            self.tc.buildProblem(description=self.printable(error).split("\n")[0][:4000],
                                 identity=f"deployer-exit-{exit_code}")
        super().finished(exit_code, error, summary)


def problem_identity(stage: str, host: str) -> str:
    """A build problem's identity: TeamCity takes at most 60 characters."""
    identity = f"deployer:{stage}:{host}"
    if len(identity) <= 60:
        return identity
    return f"deployer:{hashlib.sha256(identity.encode()).hexdigest()[:40]}"


class _TextStream:
    """teamcity-messages writes encoded bytes; our stream takes text, as it is."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode("utf-8"))

    def flush(self) -> None:
        self.stream.flush()
