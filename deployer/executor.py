"""The one executor: runs a Plan step by step, host by host, and always cleans up.

Per-host results, not exceptions that stop the world: a step runs on every
host it names, then fails if any host failed. What each completed step
changed is remembered (an undo log); if the deploy fails or is interrupted
before the commit point (the switch of the live path), the log is replayed
backwards so the hosts are left as they were. Teardown (VPN, connections,
the work dir) runs on every exit path.
"""

import os
import shutil
import time
from dataclasses import dataclass

from deployer import interrupts, packaging, steps, transport
from deployer.config import LOCAL_HOST
from deployer.context import Context
from deployer.errors import DeployError, StepFailed
from deployer.output import Reporter, StepResult
from deployer.quoting import Command
from deployer.transport import LocalTransport, NotALink, Result, SshTransport, Transport
from deployer.vpn import OpenVpnTunnel

RUNNER = ""  # the host name under which steps on this machine are reported


@dataclass(frozen=True)
class _Undo:
    """How to put back one change on one host, and what to tidy if it is kept."""

    host: str
    title: str
    command: Command
    keep: Command | None = None


class Executor:
    def __init__(self, ctx: Context, reporter: Reporter):
        self.ctx = ctx
        self.reporter = reporter
        self.transports: dict[str, Transport] = {}
        self.local = LocalTransport()
        self.undo: list[_Undo] = []
        self.teardown: list[tuple[str, object]] = []

    def run(self, plan: steps.Plan) -> None:
        try:
            try:
                os.mkdir(self.ctx.workdir, 0o700)
            except FileExistsError:
                # Never exist_ok: a directory planted at our path is not ours to write into.
                raise StepFailed(f"work dir {self.ctx.workdir} already exists; not using it") from None
            self.teardown.append(("remove work dir", lambda: shutil.rmtree(self.ctx.workdir)))
            for stage, stage_steps in plan.stages:
                self.reporter.stage_started(stage)
                ok = False
                try:
                    for step in stage_steps:
                        self.step(stage, step)
                    ok = True
                finally:
                    self.reporter.stage_finished(stage, ok)
            self.keep_changes()
        except BaseException:
            with interrupts.deferred():
                self.rollback()
            raise
        finally:
            with interrupts.deferred():
                self.close()

    # -- one step --------------------------------------------------------------

    def step(self, stage: str, step: steps.Step) -> None:
        if not step.hosts:
            self.on_runner(stage, step)
            return
        self.connect()
        failures = []
        for name in step.hosts:
            self.reporter.step_started(stage, step, name)
            started = time.monotonic()
            try:
                result = self.on_host(step, name, self.transports[name])
            except (StepFailed, *transport.ERRORS) as e:
                result = Result(1, "", _describe_error(e))
            self.reporter.step_finished(stage, step, name,
                                        StepResult(result, time.monotonic() - started))
            if not result.ok:
                failures.append((name, result))
        if failures:
            raise StepFailed(_failure_message(step, failures, self.reporter.redact))
        if isinstance(step, steps.Link) and step.commit:
            # The new release is live on every host: nothing before this is undone.
            self.keep_changes()

    def on_runner(self, stage: str, step: steps.Step) -> None:
        self.reporter.step_started(stage, step, RUNNER)
        started = time.monotonic()
        # Until the step says otherwise it did not succeed (an interrupt lands here).
        result = Result(1, "", "interrupted")
        try:
            result = self.run_on_runner(step)
        except (DeployError, OSError) as e:
            result = Result(1, "", _describe_error(e))
        finally:
            self.reporter.step_finished(stage, step, RUNNER,
                                        StepResult(result, time.monotonic() - started))
        if not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.exit_code}")
            raise StepFailed(f"{step.title}: {detail}")

    def run_on_runner(self, step: steps.Step) -> Result:
        if isinstance(step, steps.Build):
            expect = step.manifest.digest if step.manifest else None
            m = packaging.build(step.source, step.rules, step.dest, expect=expect)
            return Result(0, f"{len(m.files)} files, {m.size} bytes, {os.path.getsize(step.dest)} bytes"
                          f" compressed: {step.dest}", "")
        if isinstance(step, steps.OpenVpn):
            tunnel = OpenVpnTunnel(step.config, step.workdir, step.timeout)
            # Registered before open(): a half-started OpenVPN is stopped too.
            self.teardown.append(("close VPN", tunnel.close))
            tunnel.open()
            return Result(0, "tunnel up", "")
        if isinstance(step, steps.Run):
            return self.local.run(step.command.line())
        raise TypeError(f"{type(step).__name__} cannot run on the runner")

    def on_host(self, step: steps.Step, host: str, t: Transport) -> Result:
        if isinstance(step, steps.Run):
            result = t.run(step.command.line())
            # Only what the step did: a failed `mkdir` of an existing release
            # must not lead to removing that release.
            if result.ok and step.undo is not None:
                self.undo.append(_Undo(host, f"undo {step.title}", step.undo))
            return result
        if isinstance(step, steps.Upload):
            # Before the transfer: a half-written file is removed too.
            self.undo.append(_Undo(host, f"undo {step.title}", step.undo))
            t.put(step.local, step.remote)
            return Result(0, "", "")
        if isinstance(step, steps.Install):
            # Before the change, and safe to run if it never happened: an
            # interrupt between the write and the record must not lose it.
            self.undo.append(_Undo(host, f"restore {step.path}", step.undo(), keep=step.keep()))
            return t.run(step.command().line(), stdin=step.content.encode())
        if isinstance(step, steps.Link):
            previous = t.readlink(step.path)
            result = t.run(step.command().line())
            if result.ok:
                undo = (Command.of(("rm", "-f", "--", step.path)) if previous is None
                        else step.command(target=previous))
                self.undo.append(_Undo(host, f"restore link {step.path}", undo))
            return result
        raise TypeError(f"{type(step).__name__} cannot run on a host")

    # -- connections, rollback, teardown ---------------------------------------

    def connect(self) -> None:
        """Open every host's connection before the first remote step changes anything."""
        if self.transports:
            return
        target = self.ctx.target
        if target.transport == "local":
            self.transports[LOCAL_HOST.name] = self.local
            return
        opened = {}
        self.teardown.append(("close connections", lambda: [t.close() for t in opened.values()]))
        errors = []
        for host in target.hosts:
            t = SshTransport(host, target.known_hosts, target.connect_timeout)
            try:
                t.open()
            except StepFailed as e:
                errors.append(str(e))
                continue
            opened[host.name] = t
        if errors:
            raise StepFailed("cannot connect to every host; nothing was changed on any host:\n  "
                             + "\n  ".join(errors))
        self.transports.update(opened)

    def rollback(self) -> None:
        if not self.undo:
            return
        self.reporter.note(f"rolling back {len(self.undo)} change(s)")
        problems = []
        for u in reversed(self.undo):
            result = self.run_quietly(u.host, u.command)
            if not result.ok:
                problems.append(f"{u.host}: {u.title}: {result.stderr.strip()}")
        self.undo.clear()
        if problems:
            self.reporter.note("ROLLBACK INCOMPLETE, check these by hand:\n  " + "\n  ".join(problems))

    def run_quietly(self, host: str, command: Command) -> Result:
        """For rollback and tidying, which go on past a host that fails."""
        try:
            return self.transports[host].run(command.line())
        except (StepFailed, *transport.ERRORS) as e:
            return Result(1, "", _describe_error(e))

    def keep_changes(self) -> None:
        """The changes stand: drop the undo log, and what it kept on the hosts."""
        for u in self.undo:
            if u.keep is None:
                continue
            result = self.run_quietly(u.host, u.keep)
            if not result.ok:
                self.reporter.note(f"{u.host}: could not tidy after {u.title}: {result.stderr.strip()}")
        self.undo.clear()

    def close(self) -> None:
        for title, action in reversed(self.teardown):
            try:
                action()
            except Exception as e:  # noqa: BLE001 - teardown must go on to the next item
                self.reporter.note(f"{title} failed: {e}")
        self.teardown.clear()


def _describe_error(e: Exception) -> str:
    if isinstance(e, NotALink):
        return f"{e} exists and is not a symlink; deployer will not replace it (move it aside)"
    if isinstance(e, DeployError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def _failure_message(step: steps.Step, failures: list[tuple[str, Result]], redact) -> str:
    lines = [f"{step.title}: failed on {len(failures)} host(s)"]
    for host, r in failures:
        # Redacted before it is cut into lines: a split secret would no longer match.
        detail = redact(r.stderr.strip() or r.stdout.strip() or f"exit code {r.exit_code}")
        lines.append(f"  {host}: " + "\n    ".join(detail.splitlines()[-20:]))
    return "\n".join(lines)
