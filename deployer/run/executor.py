"""The one executor: runs a Plan step by step, each step on all its hosts at
once, and always cleans up.

Per-host results, not exceptions that stop the world: a step runs on every
host it names, then fails if any host failed. How to undo each change is
recorded (an undo log); if the deploy fails or is interrupted before the
commit point (the switch of the live path), the log is replayed backwards on
every host so the hosts are left as they were. Teardown (VPN, connections,
the work dir) runs on every exit path.
"""

import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from deployer import context, steps
from deployer.artifact import delta, packaging
from deployer.config import LOCAL_HOST
from deployer.connectors import transport
from deployer.connectors.result import Result
from deployer.connectors.transport import LocalTransport, SshTransport, Transport
from deployer.context import Context
from deployer.errors import DeployError, StepFailed, UndoIncomplete
from deployer.output import Reporter, StepResult
from deployer.quoting import Command
from deployer.remote import instance
from deployer.run import health, interrupts, records, relay, session
from deployer.vpn import OpenVpnTunnel

RUNNER = ""  # the host name under which steps on this machine are reported
UNDO_TIMEOUT = 120.0  # seconds for one undo or tidying command on one host
AFTER_LIMIT = 90  # seconds for what runs after a run that succeeded (pruning), within UNDO_TIMEOUT


@dataclass(frozen=True)
class _Undo:
    """How to put back one change on one host, and what to tidy if it is kept."""

    host: str
    title: str
    command: Command
    keep: Command | None = None


class Executor:
    def __init__(self, ctx: Context, reporter: Reporter, parallel: int = 1, every_host: bool = False):
        self.ctx = ctx
        self.reporter = reporter
        # Read-only commands (check, preview) run on every host that answers,
        # and fail only on those that do not; a run that changes hosts runs
        # nowhere unless every host answers.
        self.every_host = every_host
        self.transports: dict[str, Transport] = {}
        # Set when the deploy is interrupted: every host's running command is
        # stopped, and transfers end between two chunks.
        self.stop = threading.Event()
        self.local = LocalTransport(self.stop, frozenset(
            v.source for v in ctx.target.vars.values() if v.secret and v.source))
        self.undo: list[_Undo] = []
        self.teardown: list[tuple[str, object]] = []
        # Host steps run in threads: the undo log and the reporter are shared.
        self.lock = threading.Lock()
        self.parallel = parallel
        self.pool: ThreadPoolExecutor | None = None
        # Per host, what its live release holds (for sending only what changed).
        self.live: dict[str, delta.Live] = {}
        # Per live release, the tarball of what differs and the lists before it.
        self.sendings: dict[delta.Live, _Sending] = {}
        self.offer: relay.Offer | None = None  # the upload's relay, once it starts
        self.building = threading.Lock()
        # Per host, the commands that remove what the undo of kept changes needed.
        self.pending_keep: dict[str, list[str]] = {}
        self.stage: str | None = None  # the stage the reporter was last told of
        self.stage_ok = True
        # Per host, what to run again once its changes are undone (a reload).
        self.again: dict[str, list[Command]] = {}
        # The instance's lock: the hosts asked to take it, and whether the
        # first host did (None: not known yet).
        self.locked: set[str] = set()
        self.first_locked: bool | None = None
        self.held_by: list[str] = []  # what hosts said of the run that holds the lock, if not this one
        self.previous: dict[str, str] = {}  # per host, its live release before the run
        self.changed = False  # whether a step past the lock has begun on a host
        self.results: dict[int, dict[str, Result]] = {}  # per step (by id), per host

    def gone_holder(self) -> str | None:
        """The id of the run that holds the instance's lock, if it ran on this
        machine and is gone (killed): its lock and leftovers can be undone."""
        found = {instance.holder_here(text) for text in self.held_by}
        if len(found) == 1:
            here = found.pop()
            if here is not None and here[1] is None:
                return here[0]
        return None

    def outputs(self, step: steps.Step) -> dict[str, Result]:
        """What `step` ended with on each host it ran on."""
        return self.results.get(id(step), {})

    def run(self, plan: steps.Plan) -> None:
        outcome = "failed"
        # A run that takes the lock says so on this machine first: a later
        # run that finds it holding a lock asks here whether it lives.
        alive = self.record_run() if plan.lock else None
        released = False
        try:
            _remove_stale_workdirs(os.path.dirname(self.ctx.workdir))
            try:
                os.mkdir(self.ctx.workdir, 0o700)
            except FileExistsError:
                # Never exist_ok: a directory planted at our path is not ours to write into.
                raise StepFailed(f"work dir {self.ctx.workdir} already exists; not using it") from None
            self.teardown.append(("remove work dir", lambda: shutil.rmtree(self.ctx.workdir)))
            for group in session.groups(plan):
                if isinstance(group.steps[0][1], steps.HealthCheck):
                    self.check_health(*group.steps[0])
                elif group.hosts:
                    self.on_hosts(group)
                else:
                    stage, step = group.steps[0]
                    with self.lock:
                        self.enter(stage)
                    self.on_runner(stage, step)
            self.leave(True)
            self.keep_changes()
            outcome = "done"
        except BaseException as e:
            with interrupts.deferred():
                self.leave(False)
                problems = self.rollback()
            interrupted = isinstance(e, (interrupts.Interrupted, KeyboardInterrupt))
            if problems:
                outcome = "undo incomplete"
                what = f"interrupted ({e or 'SIGINT'})" if interrupted else str(e)
                raise UndoIncomplete(f"{what}\nTHE UNDO DID NOT COMPLETE; these hosts need a person:\n  "
                                     + "\n  ".join(problems)) from e
            outcome = "interrupted, undone" if interrupted else "failed, undone"
            raise
        finally:
            with interrupts.deferred():
                try:
                    released = self.finish(plan, outcome)
                    self.close()
                finally:
                    if alive is not None:
                        # A lock a host still holds for this run must read as a
                        # run that is gone, which a later run may take over.
                        alive.release(forget=released)

    def record_run(self) -> "records.RunLock | None":
        """This run, alive, in this machine's record (see records.py); without a
        registry of this user's here, a run goes on unrecorded: if it is
        killed, its lock is not taken over by itself (`deployer unlock` asks)."""
        try:
            record = records.RunLock(self.ctx.run_id)
            record.hold()
        except StepFailed as e:
            self.reporter.note(f"this run is not recorded on this machine ({e}): if it is killed, a later run"
                               " will not take its lock over by itself; `deployer unlock` will")
            return None
        return record

    def serving(self, ok: bool) -> str:
        """What each host serves now that the run is over, for its last line."""
        if ok:
            if not self.ctx.switches:
                return f"the live release is unchanged on every host ({len(self.ctx.host_names)})"
            count = len(self.ctx.host_names)
            return f"release {self.ctx.release} is live on every host ({count})" + _where(self.ctx)
        if not self.changed:
            return "nothing was changed on any host"
        if self.ctx.action == "unlock":
            return ""  # it has no undo of its own: its message says what failed, and it can run again
        before = {self.previous.get(h) for h in self.ctx.host_names}
        if None in before:
            return "every host is as it was before the run"
        if before == {""}:
            return "every host is as it was before the run; no release of this instance is live"
        if len(before) == 1:
            return f"every host is as it was before the run: release {before.pop()} is live"
        return "every host is as it was before the run: " + ", ".join(
            f"{h} serves {self.previous.get(h) or 'no release'}" for h in self.ctx.host_names)

    # -- stages, as the reporter sees them ---------------------------------------

    def enter(self, stage: str) -> None:
        """Report `stage` as begun, and the one before it as ended (lock held)."""
        if stage != self.stage:
            self.leave(True)
            self.stage, self.stage_ok = stage, True
            self.reporter.stage_started(stage)

    def leave(self, ok: bool) -> None:
        if self.stage is not None:
            self.reporter.stage_finished(self.stage, self.stage_ok and ok)
            self.stage = None

    # -- steps on hosts, a session per host --------------------------------------

    def on_hosts(self, group: session.Group) -> None:
        """A group of steps, in one session on each of its hosts, all hosts at once."""
        self.connect()
        for _, step in group.steps:
            if isinstance(step, steps.Upload) and step.relay is not None and self.offer is None:
                self.offer = relay.Offer.make(step.relay)
        gate = _Gate(self, group)
        results = self.fan_out(group.hosts, lambda host: self.host_session(group, host, gate))
        messages = []
        for j, (_, step) in enumerate(group.steps):
            failed = [(host, r[j]) for host, r in zip(group.hosts, results, strict=True)
                      if r[j] is not None and not r[j].ok]
            if failed:
                messages.append(_failure_message(step, failed, self.reporter.redact))
        if messages:
            raise StepFailed("\n".join(messages))

    def check_health(self, stage: str, step: steps.HealthCheck) -> None:
        """Every host asked over HTTP from the runner, all at once."""
        with self.lock:
            self.enter(stage)

        def one(i: int) -> Result:
            host = step.hosts[i]
            with self.lock:
                self.reporter.step_started(stage, step, host)
            started = time.monotonic()
            result = health.check(step.addresses[i], step.port, step.path, step.host_header, step.status,
                                  step.timeout, self.stop)
            with self.lock:
                if not result.ok:
                    self.stage_ok = False
                self.reporter.step_finished(stage, step, host, StepResult(result, time.monotonic() - started))
            return result

        results = self.fan_out(range(len(step.hosts)), one)
        failed = [(h, r) for h, r in zip(step.hosts, results, strict=True) if not r.ok]
        if failed:
            raise StepFailed(_failure_message(step, failed, self.reporter.redact))

    def host_session(self, group: session.Group, host: str, gate: "_Gate") -> list[Result | None]:
        """The group's steps on one host, in one session (in a thread of the pool)."""
        entries: list[session.Entry] = []
        # Per entry: the index of its step in group.steps (None for the
        # tidying entry), whether it is the step's last, and what to do
        # with its result besides reporting it.
        owners: list[tuple[int | None, bool, object]] = []
        results: list[Result | None] = [None] * len(group.steps)
        with self.lock:
            keep = self.pending_keep.pop(host, [])
        if keep:
            # What the undo log of a kept change needed: gone before the next
            # step, in its session (its result only matters if it failed).
            entries.append(session.Entry(" ; ".join(keep) + " ; true", timeout=UNDO_TIMEOUT))
            owners.append((None, True, None))
        for j, (_, step) in enumerate(group.steps):
            made = self.entries(step, host)
            for k, (entry, then) in enumerate(made):
                entries.append(entry)
                owners.append((j, k == len(made) - 1, then))
        started: dict[int, float] = {}

        def on_start(i: int) -> None:
            j = owners[i][0]
            if j is not None and j not in started:
                started[j] = time.monotonic()
                stage, step = group.steps[j]
                with self.lock:
                    self.changed |= not isinstance(step, steps.Lock)
                    if isinstance(step, steps.Run) and step.again_after_undo:
                        self.again.setdefault(host, []).append(step.command)
                gate.event(j, lambda: self.reporter.step_started(stage, step, host))

        def on_end(i: int, result: Result) -> None:
            j, last, then = owners[i]
            if j is None:
                if result.stderr.strip():
                    with self.lock:
                        self.reporter.note(f"{host}: could not tidy after the deploy: {result.stderr.strip()}")
                return
            if then is not None:
                then(result)
            if not last and result.ok:
                return
            stage, step = group.steps[j]
            results[j] = result
            with self.lock:
                self.results.setdefault(id(step), {})[host] = result
            # Only what the step did: a failed `mkdir` of an existing release
            # must not lead to removing that release.
            if isinstance(step, steps.Run) and result.ok and step.undo is not None:
                self.record(_Undo(host, f"undo {step.title}", step.undo, keep=step.keep))
            took = StepResult(result, time.monotonic() - started[j])

            def report() -> None:
                if not result.ok:
                    self.stage_ok = False
                self.reporter.step_finished(stage, step, host, took)
            gate.event(j, report)
            gate.progressed(host, j + 1)

        split = session.Split(entries, on_start, on_end)
        stdin = session.Input(split.token, entries)
        try:
            result = self.transports[host].run(session.command(self.ctx.run_id, entries).line(), stdin=stdin,
                                               timeout=split, out=split.out, err=split.err)
        except (StepFailed, *transport.ERRORS) as e:
            result = Result(1, "", _describe_error(e))
        except BaseException:
            split.finish(Result(1, "", "stopped"))
            raise
        finally:
            stdin.close()
            gate.progressed(host, len(group.steps))
            with self.lock:
                # A host that never said what it holds gets everything; hosts waiting for its list go on,
                # and so do those waiting to read the artifact from it, or for its lock.
                self.live.setdefault(host, delta.Live())
                if self.first_locked is None and host == group.hosts[0]:
                    self.first_locked = False
                if self.offer is not None and host == self.offer.plan.source:
                    self.offer.give_up()
        split.finish(result)
        return results

    def entries(self, step: steps.Step, host: str) -> list[tuple[session.Entry, object]]:
        """How one step runs in a session; the undo of a change is recorded
        before the session starts, and is safe to run if the change never
        happened: an interrupt between the change and the record must not
        lose it."""
        timeout = self.timeout(step)
        if isinstance(step, steps.Lock):
            first = host == step.hosts[0]
            with self.lock:
                self.locked.add(host)

            def taken(result: Result) -> None:
                with self.lock:
                    if first:
                        self.first_locked = result.ok
                    if "locked by " in result.stderr:
                        self.held_by.append(result.stderr)
            data = None if first else session.Deferred(self.lock_input)
            entry = session.Entry(step.command(first).line(), timeout=timeout + step.wait, data=data)
            return [(entry, taken)]
        if isinstance(step, steps.Run):
            if step.output_limit:
                return [(session.Entry(step.command.line(), timeout=timeout, keep=step.output_limit), None)]
            return [(session.Entry(step.command.line(), timeout=timeout), None)]
        if isinstance(step, steps.Upload):
            self.record(_Undo(host, f"undo {step.title}", step.undo))
            state = step.state_first if host == step.hosts[0] else step.state

            def learned(result: Result) -> None:
                with self.lock:
                    self.live[host] = delta.parse(result.stdout) if result.ok else delta.Live()
                    self.previous[host] = delta.live_release(result.stdout)

            unpack = session.Entry(step.command.line(), timeout=timeout,
                                   data=session.Deferred(lambda: self.sending(step, host)))
            made = [(session.Entry(state.line(), timeout=timeout, keep=delta.LIST_LIMIT), learned)]
            offer = self.offer
            if offer is None:
                return [*made, (unpack, None)]
            if host == offer.plan.source:
                # Withdrawn in the source's next session, and on failure.
                self.record(_Undo(host, "withdraw the relay key", offer.plan.close))
                with self.lock:
                    self.pending_keep.setdefault(host, []).append(offer.plan.close.line())

                def offered(result: Result) -> None:
                    with self.lock:
                        offer.open = result.ok and "is offered to the other hosts" in result.stdout
                        refused = [line for line in result.stdout.splitlines() if "is not offered" in line]
                        if result.ok and refused:
                            self.reporter.note(f"{host}: {refused[0]}; the runner sends it to each of them")
                return [*made, (unpack, offered)]

            def fetched(result: Result) -> None:
                said = result.stdout.strip()
                with self.lock:
                    offer.asked.add(host)
                    if result.ok and said == "fetched":
                        offer.fetched.add(host)
                    elif result.ok and said:
                        self.reporter.note(f"{host}: the artifact was {said}; the runner sends it instead")
            # It waits for the source to unpack, then reads within its own
            # limit: a slow source means the runner sends, not a failed step.
            fetch = session.Entry(offer.plan.fetch.line(), timeout=2 * timeout,
                                  data=session.Deferred(lambda: self.fetch_input(step, host)))
            return [*made, (fetch, fetched), (unpack, None)]
        if isinstance(step, (steps.Install, steps.Link)):
            self.record(_Undo(host, f"restore {step.path}", step.undo(), keep=step.keep()))
            data = None
            if isinstance(step, steps.Install) and not step.source:
                content = step.content.encode()
                data = session.Piece(len(content), lambda: io.BytesIO(content))
            return [(session.Entry(step.command().line(), timeout=timeout, data=data), None)]
        raise TypeError(f"{type(step).__name__} cannot run on a host")

    def choice(self, step: steps.Upload, host: str) -> "_Sending | None":
        """What makes the new release on `host`, once it is known what the
        host holds (and, for a host with the first host's live release,
        once the first host has sent its list); None until then."""
        first = step.hosts[0]
        with self.lock:
            live = self.live.get(host)
            if live is None or (live.base and live.listed is None and first not in self.live):
                return None
            if live.listed is None and live.base and self.live[first].base == live.base:
                live = delta.Live(live.base, live.drift, self.live[first].listed)
        return self.prepared(step, live)

    def sending(self, step: steps.Upload, host: str) -> session.Piece | None:
        """The unpack's stdin on `host` (see remote/sh/unpack.sh); None until known."""
        s = self.choice(step, host)
        if s is None:
            return None
        how, key = "sent", b""
        with self.lock:
            offer = self.offer
            if offer is not None and host == offer.plan.source:
                offer.path = s.path if s.size >= relay.MIN_SIZE else ""
                if offer.path:
                    how, key = "keep", b"%s %s\n" % (s.copy_sha, offer.public.encode())
            elif offer is not None and host not in offer.asked:
                return None  # not before the fetch has ended
            elif offer is not None and host in offer.fetched:
                how = "fetched"
        head = s.head(how) + key
        if how == "fetched":
            return session.Piece(len(head), lambda: io.BytesIO(head))
        return session.Piece(len(head) + s.size, lambda: _Prefixed(head, open(s.path, "rb")))

    def lock_input(self) -> session.Piece | None:
        """The lock's stdin on the hosts after the first: "go" once the first
        host's lock is taken, "stop" if it is not; None until known."""
        with self.lock:
            go = self.first_locked
        if go is None:
            return None
        data = b"go\n" if go else b"stop\n"
        return session.Piece(len(data), lambda: io.BytesIO(data))

    def fetch_input(self, step: steps.Upload, host: str) -> session.Piece | None:
        """The fetch's stdin on `host` (see remote/sh/fetch.sh): what it needs to
        read the artifact from the source, once the source offers it, or `-`
        when it does not or `host` needs another tarball; None until known."""
        s = self.choice(step, host)
        if s is None:
            return None
        offer = self.offer
        with self.lock:
            if offer.path is None or (offer.path == s.path and offer.open is None):
                return None
            go = offer.path == s.path and offer.open
        data = b"-\n"
        if go:
            source = self.transports[offer.plan.source]
            data = (b"%s %d\n%s\n%s\n" % (s.copy_sha, len(s.lists) + s.size, source.user.encode(),
                                             source.known_line(relay.ALIAS).encode()) + offer.private)
        return session.Piece(len(data), lambda: io.BytesIO(data))

    def prepared(self, step: steps.Upload, live: delta.Live) -> "_Sending":
        """The tarball and the lists for a host whose live release is `live`:
        made once per deploy for all the hosts that hold the same one."""
        with self.building:
            if live not in self.sendings:
                b = step.build
                plan = delta.against(b.manifest, live)
                path = step.local
                if plan.send is not None:
                    path = os.path.join(self.ctx.workdir, f"changed-{len(self.sendings)}.tar.gz")
                    packaging.build(b.source, b.rules, path, expect=b.manifest.digest, only=plan.send)
                lists = b"".join(b"%d\n%s" % (len(part), part)
                                 for part in (gzip.compress(plan.drop, mtime=0), gzip.compress(plan.add, mtime=0)))
                # One read for both: the tarball's sha256, and that of what a
                # host keeps for the others (the lists, then the tarball).
                tarball, copy = hashlib.sha256(), hashlib.sha256(lists)
                size = 0
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        tarball.update(chunk)
                        copy.update(chunk)
                        size += len(chunk)
                self.sendings[live] = _Sending(path, size, tarball.hexdigest().encode(), plan.base.encode(),
                                               plan.want.encode(), lists, copy.hexdigest().encode())
            return self.sendings[live]

    def fan_out(self, items, fn) -> list:
        """`fn` on every item at once (at most `parallel` at a time); results in order.

        The main thread only waits, in short slices, so Ctrl-C and SIGTERM
        land here and never inside the SSH library; and between the slices,
        not in them: raised inside `wait`, the interrupt could leave a lock of
        its waiter held, which the thread that ends a host's work then waits
        for forever (seen as a deploy that hung after SIGTERM). An interrupt
        sets the stop flag, waits until every host's command has stopped,
        then goes on to the rollback.
        """
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.parallel, "host", initializer=interrupts.block_in_thread)
        futures = [self.pool.submit(fn, item) for item in items]
        try:
            while not all(f.done() for f in futures):
                with interrupts.deferred():
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
            tunnel = OpenVpnTunnel(step.config, step.timeout, probe=step.probe)
            # Registered before open(): a half-started OpenVPN is stopped too.
            self.teardown.append(("close VPN", tunnel.close))
            tunnel.open()
            if tunnel.foreign:
                return Result(0, f"a tunnel to {step.probe} is already up, not deployer's: used, and left up", "")
            return Result(0, "tunnel up, shared with another deploy on this machine" if tunnel.shared
                          else "tunnel up", "")
        if isinstance(step, steps.Run):
            return self.local.run(step.command.line(), timeout=self.timeout(step))
        raise TypeError(f"{type(step).__name__} cannot run on the runner")

    def timeout(self, step: steps.Step) -> float:
        return getattr(step, "timeout", None) or self.ctx.target.step_timeout

    def record(self, undo: "_Undo") -> None:
        with self.lock:
            self.undo.append(undo)

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

        found = self.fan_out(target.hosts, open_one)
        errors = [e for e in found if e]
        if errors and not self.every_host:
            raise StepFailed("cannot connect to every host; nothing was changed on any host:\n  "
                             + "\n  ".join(errors))
        self.transports.update(opened)
        self.transports.update({h.name: _Unreachable(e) for h, e in zip(target.hosts, found, strict=True) if e})

    def rollback(self) -> list[str]:
        """Every host's changes undone, newest first, hosts at once, then
        what must run again there (Apache reloads the previous config); each
        command has a time limit, so a host that stopped answering cannot
        hold the rollback of the others. Returns what could not be undone."""
        if not self.undo:
            return []
        self.reporter.note(f"rolling back {len(self.undo)} change(s)")
        by_host: dict[str, list[_Undo]] = {}
        for u in self.undo:
            by_host.setdefault(u.host, []).append(u)

        def undo_host(host: str) -> list[str]:
            problems = []
            todo = [(u.title, u.command) for u in reversed(by_host[host])]
            todo += [(f"then again: {c.line()}", c) for c in self.again.get(host, ())]
            for title, command in todo:
                result = self.run_quietly(host, command.line())
                if not result.ok:
                    problems.append(f"{host}: {title}: {_detail(result)}")
            return problems

        problems = [p for found in self.fan_out(list(by_host), undo_host) for p in found]
        self.undo.clear()
        return [self.reporter.redact(p) for p in problems]

    def run_quietly(self, host: str, line: str) -> Result:
        """For rollback and tidying, which go on past a host that fails; a host
        whose connection died is connected to again, once."""
        t = self.transports[host]
        try:
            return t.run(line, timeout=UNDO_TIMEOUT)
        except (StepFailed, *transport.ERRORS) as e:
            if not t.reconnect():
                return Result(1, "", _describe_error(e))
        try:
            return t.run(line, timeout=UNDO_TIMEOUT)
        except (StepFailed, *transport.ERRORS) as e:
            return Result(1, "", _describe_error(e))

    def keep_changes(self) -> None:
        """The changes stand: drop the undo log. What it kept on the hosts is
        removed in each host's next session, or by `tidy` at the end."""
        with self.lock:
            for u in self.undo:
                if u.keep is not None:
                    self.pending_keep.setdefault(u.host, []).append(u.keep.line())
            self.undo.clear()

    def finish(self, plan: steps.Plan, outcome: str) -> bool:
        """The run's last command on each host: what kept changes left for
        their undo goes, old releases are pruned if the run succeeded (within
        AFTER_LIMIT: a slow prune must not keep the lock), then the history
        gets its line as the lock is released. On the first host last: a run
        waiting for the lock takes it there first."""
        after = [(step.hosts, f"timeout -k 5 {AFTER_LIMIT} {step.command.line()}")
                 for step in plan.after] if outcome == "done" else []
        release = (plan.lock.finish(context.history_line(self.ctx, outcome), outcome == "done").line()
                   if plan.lock else None)
        lines = {h: " ; ".join([*self.pending_keep.get(h, []), *(a for hosts, a in after if h in hosts),
                                *([release] if release and h in self.locked else [])])
                 for h in self.transports}
        self.pending_keep.clear()
        hosts = [h for h, line in lines.items() if line]
        first = plan.lock.hosts[0] if plan.lock else None
        ok = True
        for batch in ([h for h in hosts if h != first], [h for h in hosts if h == first]):
            ok &= self._on_each(batch, lines.get, "after the run")
        return ok

    def _on_each(self, hosts: list[str], line, what: str) -> bool:
        """`line(host)` on each of `hosts`, all at once; what fails is a note.
        Whether it succeeded on every host."""
        results = self.fan_out(hosts, lambda h: self.run_quietly(h, line(h)))
        for host, result in zip(hosts, results, strict=True):
            if not result.ok or result.stderr.strip():
                self.reporter.note(f"{host}: {what}: {_detail(result)}")
        return all(r.ok for r in results)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        for title, action in reversed(self.teardown):
            try:
                action()
            except Exception as e:  # noqa: BLE001 - teardown must go on to the next item
                self.reporter.note(f"{title} failed: {e}")
        self.teardown.clear()


class _Gate:
    """The reporter hears of stages in order, one at a time, while a session
    spanning stages runs ahead on some hosts: what a host does in a later
    stage is held back until every host is past the earlier one."""

    def __init__(self, ex: Executor, group: session.Group):
        self.ex = ex
        self.names = names = list(dict.fromkeys(stage for stage, _ in group.steps))
        self.stage_of = [names.index(stage) for stage, _ in group.steps]  # per step
        self.last = [max(j for j, at in enumerate(self.stage_of) if at == k) for k in range(len(names))]
        self.open = 0  # the stage reported as running
        self.held: list[tuple[int, object]] = []
        self.position = dict.fromkeys(group.hosts, 0)  # per host: steps it is past
        with ex.lock:
            ex.enter(names[0])

    def event(self, j: int, report) -> None:
        with self.ex.lock:
            if self.stage_of[j] == self.open:
                report()
            else:
                self.held.append((self.stage_of[j], report))

    def progressed(self, host: str, position: int) -> None:
        with self.ex.lock:
            self.position[host] = max(self.position[host], position)
            while (self.open + 1 < len(self.names)
                   and all(p > self.last[self.open] for p in self.position.values())):
                self.open += 1
                self.ex.enter(self.names[self.open])
                now = [r for at, r in self.held if at == self.open]
                self.held = [(at, r) for at, r in self.held if at != self.open]
                for report in now:
                    report()


@dataclass(frozen=True)
class _Sending:
    """A tarball of the files a host lacks, and what the unpack reads before it."""

    path: str
    size: int
    sha: bytes
    base: bytes
    want: bytes
    lists: bytes  # the gzipped drop and add lists, each after its size
    copy_sha: bytes  # of the lists and the tarball, as the relay's source keeps them

    def head(self, how: str) -> bytes:
        line = b"%s %s %s %s\n" % (self.sha, self.base, self.want, how.encode())
        return line if how == "fetched" else line + self.lists


class _Prefixed:
    """Some bytes, then a file: read in chunks, so the artifact is never in memory whole."""

    def __init__(self, head: bytes, f):
        self.head, self.f = head, f

    def read(self, n: int) -> bytes:
        if self.head:
            chunk, self.head = self.head[:n], self.head[n:]
            return chunk
        return self.f.read(n)

    def close(self) -> None:
        self.f.close()


class _Unreachable:
    """The transport of a host that did not answer when an every-host run
    connected: each command on it fails with the reason, so that host's
    step fails while the others' results stand."""

    def __init__(self, reason: str):
        self.reason = reason

    def run(self, line, stdin=b"", timeout=None, out=None, err=None) -> Result:
        raise StepFailed(self.reason)

    def reconnect(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _remove_stale_workdirs(parent: str) -> None:
    """The work dirs of runs on this machine that were killed (SIGKILL runs
    no teardown), with the tarballs they held: each name ends with its
    run's pid (context.py), and only this user's, whose pid is gone, go."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        m = re.fullmatch(r"deployer-.+-([0-9]+)", name)
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if m is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (PermissionError, OverflowError):
            pass


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


def _where(ctx: Context) -> str:
    """Where to look at a site served on this machine: its HOSTNAME (local.test)
    resolves nowhere, so the address is given with the Host header it needs."""
    if ctx.target.transport != "local" or not ctx.hostname:
        return ""
    url = f"http://127.0.0.1:{ctx.target.apache.port}/"
    return f"; see it: {Command.of(('curl', '-H', f'Host: {ctx.hostname}', url))}"
