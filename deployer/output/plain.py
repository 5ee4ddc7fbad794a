"""Plain lines, for logs and pipes."""



from deployer.output.details import brief, details, failure_lines, where
from deployer.output.reporter import Reporter


class PlainReporter(Reporter):
    """Plain lines, for logs and pipes: everything, in order, no colour."""

    def start(self, name, hostname, release, dry_run, action="deploy"):
        if action == "destroy":
            self.write(f"{'dry run: would destroy' if dry_run else 'destroying'} {name}")
            return
        what = {"deploy": ("deploying", "dry run: would deploy"),
                "rollback": ("rolling back", "dry run: would roll back"),
                "unlock": ("unlocking", "dry run: would unlock")}[action][dry_run]
        to = {"deploy": "release", "rollback": "to release", "unlock": "undoing what was left by"}[action]
        release = release or "named after the build"  # by the tree the build leaves, once it has run
        self.write(f"{what} {name} ({hostname or 'hostname as deployed'}), {to} {release}")

    def stage_started(self, stage):
        self.write(f"== {stage}")

    def planned(self, stage, step):
        self.write(f"  - {step.title} [{where(step)}]")
        for line in (details if self.verbose else brief)(step, self.redact):
            self.write(f"      {line}")

    def step_finished(self, stage, step, host, r):
        self.tally.add(stage, host, r)
        status = "ok" if r.result.ok else f"FAILED (exit {r.result.exit_code})"
        self.write(f"  {step.title} [{where(step, host)}]: {status} in {r.seconds:.1f}s")
        lines = self.output_lines(r.result)[-40:] if r.result.ok else failure_lines(step, r.result, self.printable)
        for line in lines:
            self.write(f"      {line}")

    def note(self, text):
        self.write(f"!! {text}")

    def summary_table(self) -> None:
        rows = self.tally.rows()
        if not rows:
            return
        rows = [("host", "stages", "time", "result"), *rows]
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        for r in rows:
            self.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())

    def finished(self, exit_code, error, summary=""):
        self.summary_table()
        if error:
            self.write(f"error: {error}")
        if summary or not error:
            self.write(f"{'' if error else 'done: '}{summary}" if summary else "done")


class QuietReporter(PlainReporter):
    """Only what went wrong, and notes: for reading the hosts before a
    command prints its own answer."""

    def stage_started(self, stage):
        pass

    def step_finished(self, stage, step, host, r):
        if not r.result.ok:
            super().step_finished(stage, step, host, r)

    def summary_table(self):
        pass

    def finished(self, exit_code, error, summary=""):
        if error:
            super().finished(exit_code, error, summary)
