"""The one executor: runs a Plan step by step, each step on all its hosts at
once, and always cleans up.

Per-host results, not exceptions that stop the world: a step runs on every
host it names, then fails if any host failed. How to undo each change is
recorded (an undo log); if the deploy fails or is interrupted before the
commit point (the switch of the live path), the log is replayed backwards on
every host so the hosts are left as they were. Teardown (VPN, connections,
the work dir) runs on every exit path.
"""

import hashlib
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from deployer import interrupts, packaging, steps, transport
from deployer.config import LOCAL_HOST
from deployer.context import Context
from deployer.errors import DeployError, StepFailed
from deployer.output import Reporter, StepResult
from deployer.quoting import Command
from deployer.transport import LocalTransport, Result, SshTransport, Transport
from deployer.vpn import OpenVpnTunnel

RUNNER = ""  # the host name under which steps on this machine are reported
UNDO_TIMEOUT = 120.0  # seconds for one undo or tidying command on one host


@dataclass(frozen=True)
class _Undo:
    """How to put back one change on one host, and what to tidy if it is kept."""

    host: str
    title: str
    command: Command
    keep: Command | None = None


class Executor:
    def __init__(self, ctx: Context, reporter: Reporter, parallel: int = 1):
        self.ctx = ctx
        self.reporter = reporter
        self.transports: dict[str, Transport] = {}
        # Set when the deploy is interrupted: every host's running command is
        # stopped, and transfers end between two chunks.
        self.stop = threading.Event()
        self.local = LocalTransport(self.stop)
        self.undo: list[_Undo] = []
        self.teardown: list[tuple[str, object]] = []
        # Host steps run in threads: the undo log and the reporter are shared.
        self.lock = threading.Lock()
        self.parallel = parallel
        self.pool: ThreadPoolExecutor | None = None
        self.checksums: dict[str, bytes] = {}

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
        results = self.fan_out(step.hosts, lambda name: self.host_step(stage, step, name))
        failures = [(name, r) for name, r in zip(step.hosts, results, strict=True) if not r.ok]
        if failures:
            raise StepFailed(_failure_message(step, failures, self.reporter.redact))
        if isinstance(step, steps.Link) and step.commit:
            # The new release is live on every host: nothing before this is undone.
            self.keep_changes()

    def host_step(self, stage: str, step: steps.Step, name: str) -> Result:
        """One step on one host, in a thread of the pool."""
        with self.lock:
            self.reporter.step_started(stage, step, name)
        started = time.monotonic()
        result = Result(1, "", "stopped")
        try:
            result = self.on_host(step, name, self.transports[name])
        except (StepFailed, *transport.ERRORS) as e:
            result = Result(1, "", _describe_error(e))
        finally:
            with self.lock:
                self.reporter.step_finished(stage, step, name, StepResult(result, time.monotonic() - started))
        return result

    def fan_out(self, items, fn) -> list:
        """`fn` on every item at once (at most `parallel` at a time); results in order.

        The main thread only waits, in short slices, so Ctrl-C and SIGTERM
        land here and never inside the SSH library. An interrupt sets the
        stop flag, waits until every host's command has stopped, then goes on
        to the rollback.
        """
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.parallel, "host", initializer=interrupts.block_in_thread)
        futures = [self.pool.submit(fn, item) for item in items]
        try:
            while not all(f.done() for f in futures):
                wait(futures, timeout=0.1)
        except BaseException:
            self.stop.set()
            wait(futures)
            self.stop.clear()
            raise
        return [f.result() for f in futures]

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
            raise StepFailed(f"{step.title}: {_detail(result)}")

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
            return self.local.run(step.command.line(), timeout=self.timeout(step))
        raise TypeError(f"{type(step).__name__} cannot run on the runner")

    def artifact_sha256(self, path: str) -> bytes:
        """Once per deploy, not once per host."""
        with self.lock:
            if path not in self.checksums:
                with open(path, "rb") as f:
                    self.checksums[path] = hashlib.file_digest(f, "sha256").hexdigest().encode()
            return self.checksums[path]

    def timeout(self, step: steps.Step) -> float:
        return getattr(step, "timeout", None) or self.ctx.target.step_timeout

    def record(self, undo: "_Undo") -> None:
        with self.lock:
            self.undo.append(undo)

    def on_host(self, step: steps.Step, host: str, t: Transport) -> Result:
        if isinstance(step, steps.Run):
            result = t.run(step.command.line(), timeout=self.timeout(step))
            # Only what the step did: a failed `mkdir` of an existing release
            # must not lead to removing that release.
            if result.ok and step.undo is not None:
                self.record(_Undo(host, f"undo {step.title}", step.undo))
            return result
        if isinstance(step, steps.Upload):
            # Before the transfer: a half-made release is removed too.
            self.record(_Undo(host, f"undo {step.title}", step.undo))
            with open(step.local, "rb") as artifact:
                return t.run(step.command.line(), stdin=_Prefixed(self.artifact_sha256(step.local), artifact),
                             timeout=self.timeout(step))
        if isinstance(step, (steps.Install, steps.Link)):
            # Before the change, and safe to run if it never happened: an
            # interrupt between the change and the record must not lose it.
            self.record(_Undo(host, f"restore {step.path}", step.undo(), keep=step.keep()))
            stdin = step.content.encode() if isinstance(step, steps.Install) else b""
            return t.run(step.command().line(), stdin=stdin, timeout=self.timeout(step))
        raise TypeError(f"{type(step).__name__} cannot run on a host")

    # -- connections, rollback, teardown ---------------------------------------

    def connect(self) -> None:
        """Open every host's connection, all at once, before the first remote
        step changes anything."""
        if self.transports:
            return
        target = self.ctx.target
        if target.transport == "local":
            self.transports[LOCAL_HOST.name] = self.local
            return
        opened: dict[str, SshTransport] = {}
        self.teardown.append(("close connections", lambda: [t.close() for t in opened.values()]))

        def open_one(host) -> str | None:
            t = SshTransport(host, target.known_hosts, target.connect_timeout, self.stop)
            try:
                t.open()
            except StepFailed as e:
                return str(e)
            with self.lock:
                opened[host.name] = t
            return None

        errors = [e for e in self.fan_out(target.hosts, open_one) if e]
        if errors:
            raise StepFailed("cannot connect to every host; nothing was changed on any host:\n  "
                             + "\n  ".join(errors))
        self.transports.update(opened)

    def rollback(self) -> None:
        """Every host's changes undone, newest first, hosts at once; each undo
        command has a time limit, so a host that stopped answering cannot
        hold the rollback of the others."""
        if not self.undo:
            return
        self.reporter.note(f"rolling back {len(self.undo)} change(s)")
        by_host: dict[str, list[_Undo]] = {}
        for u in self.undo:
            by_host.setdefault(u.host, []).append(u)

        def undo_host(host: str) -> list[str]:
            problems = []
            for u in reversed(by_host[host]):
                result = self.run_quietly(u.host, u.command.line())
                if not result.ok:
                    problems.append(f"{u.host}: {u.title}: {result.stderr.strip()}")
            return problems

        problems = [p for found in self.fan_out(list(by_host), undo_host) for p in found]
        self.undo.clear()
        if problems:
            self.reporter.note("ROLLBACK INCOMPLETE, check these by hand:\n  " + "\n  ".join(problems))

    def run_quietly(self, host: str, line: str) -> Result:
        """For rollback and tidying, which go on past a host that fails."""
        try:
            return self.transports[host].run(line, timeout=UNDO_TIMEOUT)
        except (StepFailed, *transport.ERRORS) as e:
            return Result(1, "", _describe_error(e))

    def keep_changes(self) -> None:
        """The changes stand: drop the undo log, and what it kept on the hosts
        (one session per host for all of it)."""
        tidy: dict[str, list[str]] = {}
        for u in self.undo:
            if u.keep is not None:
                tidy.setdefault(u.host, []).append(u.keep.line())
        hosts = list(tidy)
        for host, result in zip(hosts, self.fan_out(hosts, lambda h: self.run_quietly(h, " ; ".join(tidy[h]))),
                                strict=True):
            if not result.ok:
                self.reporter.note(f"{host}: could not tidy after the deploy: {result.stderr.strip()}")
        self.undo.clear()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        for title, action in reversed(self.teardown):
            try:
                action()
            except Exception as e:  # noqa: BLE001 - teardown must go on to the next item
                self.reporter.note(f"{title} failed: {e}")
        self.teardown.clear()


class _Prefixed:
    """A line, then a file: read in chunks, so the artifact is never in memory whole."""

    def __init__(self, line: bytes, f):
        self.head, self.f = line + b"\n", f

    def read(self, n: int) -> bytes:
        if self.head:
            chunk, self.head = self.head[:n], self.head[n:]
            return chunk
        return self.f.read(n)


def _describe_error(e: Exception) -> str:
    if isinstance(e, DeployError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def _detail(r: Result) -> str:
    """What a failed command said: its stderr, else its stdout, else its exit code."""
    return r.stderr.strip() or r.stdout.strip() or f"exit code {r.exit_code}"


def _failure_message(step: steps.Step, failures: list[tuple[str, Result]], redact) -> str:
    lines = [f"{step.title}: failed on {len(failures)} host(s)"]
    for host, r in failures:
        # Redacted before it is cut into lines: a split secret would no longer match.
        detail = redact(_detail(r))
        lines.append(f"  {host}: " + "\n    ".join(detail.splitlines()[-20:]))
    return "\n".join(lines)
