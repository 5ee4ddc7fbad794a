"""One JSON object a line, for tools; the exact text, escaped by json."""

import json
import time

from deployer.output.details import details
from deployer.output.reporter import Reporter


class JsonReporter(Reporter):
    """One JSON object per event, for tools: `jq` or a dashboard."""

    def emit(self, event: str, **fields) -> None:
        # Redacted before encoding: once JSON-escaped, a secret with a quote,
        # a backslash or a non-ASCII letter would no longer match.
        fields = {"event": event, "time": round(time.time(), 3), **self._redacted(fields)}
        self.stream.write(json.dumps(fields, sort_keys=True) + "\n")
        self.stream.flush()

    def _redacted(self, value):
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self._redacted(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._redacted(v) for v in value]
        return value

    def start(self, name, hostname, release, dry_run, action="deploy"):
        self.emit("start", config=name, hostname=hostname, release=release, dry_run=dry_run, action=action)

    def stage_started(self, stage):
        self.emit("stage_started", stage=stage)

    def stage_finished(self, stage, ok):
        self.emit("stage_finished", stage=stage, ok=ok)

    def planned(self, stage, step):
        self.emit("planned", stage=stage, step=step.title, kind=type(step).__name__.lower(),
                  hosts=list(step.hosts), details=details(step, self.redact))

    def step_started(self, stage, step, host):
        self.emit("step_started", stage=stage, step=step.title, host=host)

    def step_finished(self, stage, step, host, r):
        self.tally.add(stage, host, r)
        self.emit("step_finished", stage=stage, step=step.title, host=host, ok=r.result.ok,
                  exit_code=r.result.exit_code, seconds=round(r.seconds, 3),
                  stdout=r.result.stdout, stderr=r.result.stderr)

    def note(self, text):
        self.emit("note", text=text)

    def section(self, lines, event, **facts):
        self.emit(event, **facts)

    def finished(self, exit_code, error, summary=""):
        self.emit("finished", exit_code=exit_code, ok=exit_code == 0, error=error, summary=summary,
                  hosts=self.tally.as_json())
