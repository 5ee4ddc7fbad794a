"""The one executor: runs a Plan step by step, each step on all its hosts at
once, and always cleans up.

Per-host results, not exceptions that stop the world: a step runs on every
host it names, then fails if any host failed. How to undo each change is
recorded (the undo log, undo.py); if the deploy fails or is interrupted
before the commit point (the switch of the live path), the log is replayed
backwards on every host so the hosts are left as they were. Teardown (VPN,
connections, the work dir) runs on every exit path.

Its parts, each with the state it alone uses: the threads (fanout.py), the
connections (connections.py), what the reporter hears (progress.py), the
undo log, the lock's taking (locking.py) and the upload (upload.py). How
each kind of step runs is found in a table (`on_host`, `on_runner`), one
handler a kind.
"""

import io
import os
import re
import shutil
import stat
import threading
import time

from deployer import context, steps
from deployer.artifact import delta
from deployer.connectors.local import LocalTransport
from deployer.connectors.result import Result
from deployer.context import Context
from deployer.errors import DeployError, PartlyDone, StepFailed, UndoIncomplete
from deployer.output import Reporter, StepResult
from deployer.quoting import Command
from deployer.remote import instance
from deployer.run import health, interrupts, records, session
from deployer.run.connections import UNDO_TIMEOUT, Connections
from deployer.run.failures import Failures, describe_error, detail, failure_message
from deployer.run.fanout import Fanout
from deployer.run.held import HOLD_MARGIN, Held
from deployer.run.host_session import HostSession
from deployer.run.locking import Locking
from deployer.run.on_runner import OnRunner
from deployer.run.progress import Gate, Progress
from deployer.run.undo import Undo, UndoLog
from deployer.run.upload import Uploads

RUNNER = ""  # the host name under which steps on this machine are reported
AFTER_LIMIT = 90  # seconds for what runs after a run that succeeded (pruning), within UNDO_TIMEOUT


class Executor:
    def __init__(self, ctx: Context, reporter: Reporter, parallel: int = 1, every_host: bool = False):
        self.ctx = ctx
        # Set when the deploy is interrupted: every host's running command is
        # stopped, and transfers end between two chunks.
        self.stop = threading.Event()
        self.fanout = Fanout(parallel, self.stop, wake=self.wake_waiters)
        local = LocalTransport(self.stop, frozenset(v.source for v in ctx.target.vars.values()
                                                    if v.secret and v.source))
        self.hosts = Connections(ctx.target, local, self.fanout, every_host)
        self.progress = Progress(reporter)
        self.undo = UndoLog()
        self.locking = Locking()
        self.uploads = Uploads(ctx.workdir, self.progress, self.undo, self.hosts.transports)
        self.teardown: list[tuple[str, object]] = []
        self.changed = False  # whether a step past the lock has begun on a host
        self.lasting: list[steps.Run] = []  # the steps begun whose effects no undo reverts (migrate, hooks)
        self.results: dict[int, dict[str, Result]] = {}  # per step (by id), per host
        # Hosts that failed within the plan's max_failed, put back and left
        # out of the rest of the run: why, per host.
        self.dropped: dict[str, str] = {}
        self.stuck: dict[str, list[str]] = {}  # of those, the hosts whose undo did not complete: what failed
        self.plan = steps.Plan(())
        # Per host, its last session, held open for the run's end (see held.py).
        self.held: dict[str, Held] = {}
        self.on_host = {steps.Lock: self.locking.entries, steps.Run: self._command,
                        steps.Upload: self.uploads.entries, steps.Install: self._install, steps.Link: self._link}
        self.on_runner = OnRunner(local, self.teardown, self.timeout)

    def wake_waiters(self) -> None:
        """The run is stopping: the sessions parked on another host's answer see it now."""
        self.locking.bell.ring()
        self.uploads.bell.ring()

    @property
    def reporter(self) -> Reporter:
        return self.progress.reporter

    @property
    def previous(self) -> dict[str, str]:
        """Per host, its live release before the run (a rollback sets it: it reads the hosts first)."""
        return self.uploads.previous

    @previous.setter
    def previous(self, value: dict[str, str]) -> None:
        self.uploads.previous = value

    def gone_holder(self) -> str | None:
        return self.locking.gone_holder()

    def outputs(self, step: steps.Step) -> dict[str, Result]:
        """What `step` ended with on each host it ran on."""
        return self.results.get(id(step), {})

    def run(self, plan: steps.Plan) -> None:
        outcome = "failed"
        # A run that takes the lock says so on this machine first: a later
        # run that finds it holding a lock asks here whether it lives.
        alive = self.record_run() if plan.lock else None
        released = False
        self.plan = plan
        self.hosts.budget = 0 if plan.lock is None else plan.max_failed
        try:
            remove_stale_workdirs(os.path.dirname(self.ctx.workdir))
            try:
                os.mkdir(self.ctx.workdir, 0o700)
            except FileExistsError:
                # Never exist_ok: a directory planted at our path is not ours to write into.
                raise StepFailed(f"work dir {self.ctx.workdir} already exists; not using it") from None
            self.teardown.append(("remove work dir", lambda: shutil.rmtree(self.ctx.workdir)))
            groups = session.groups(plan)
            last = self.last_sessions(plan, groups)
            for i, group in enumerate(groups):
                self.run_group(group, last.get(i, {}))
            self.progress.leave(True)
            self.undo.keep()
            outcome = "done"
        except BaseException as e:
            with interrupts.deferred():
                self.progress.leave(False)
                # A host left out whose undo did not complete needs a person too.
                problems = [p for found in self.stuck.values() for p in found] + self.rollback()
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
                    try:
                        released = self.finish(plan, outcome)
                    finally:
                        self.close()
                finally:
                    if alive is not None:
                        # A lock a host still holds for this run must read as a
                        # run that is gone, which a later run may take over.
                        alive.release(forget=released)
        if self.dropped:
            said = (f"{len(self.dropped)} of {len(self.ctx.host_names)} hosts failed, within max_failed"
                    f" {self.plan.max_failed}: the run went on without them, and undid what it had changed there: "
                    + "; ".join(f"{h}: {why}" for h, why in self.dropped.items()))
            if self.stuck:
                raise UndoIncomplete(f"{said}\nTHE UNDO DID NOT COMPLETE; these hosts need a person:\n  "
                                     + "\n  ".join(p for found in self.stuck.values() for p in found)
                                     + f"\n{self.serving(True)}")
            raise PartlyDone(said)

    def record_run(self) -> "records.RunLock | None":
        """This run, alive, in this machine's record (see records.py); without a
        registry of this user's here, a run goes on unrecorded: if it is
        killed, its lock is not taken over by itself (`deployer unlock` asks)."""
        try:
            record = records.RunLock(self.ctx.run_id)
            record.hold()
        except StepFailed as e:
            self.progress.note(f"this run is not recorded on this machine ({e}): if it is killed, a later run"
                               " will not take its lock over by itself; `deployer unlock` will")
            return None
        return record

    def serving(self, ok: bool) -> str:
        """What each host serves now that the run is over, for its last line."""
        if ok:
            count = len(self.ctx.host_names)
            if self.dropped:
                return self._partly(count)
            if not self.ctx.switches:
                return f"the live release is unchanged on every host ({count})"
            return f"release {self.ctx.release} is live on every host ({count})" + _where(self.ctx)
        if not self.changed:
            return "nothing was changed on any host"
        if self.ctx.action == "unlock":
            return ""  # it has no undo of its own: its message says what failed, and it can run again
        stays = self._not_undone()
        # Not "every host is as it was" once a migrate or a hook has run: only what deployer changed is.
        undone = "every host's files are as they were" if stays else "every host is as it was"
        return undone + self._before() + "".join(f"; NOT undone: {what}" for what in stays)

    def _partly(self, count: int) -> str:
        """The last line of a run that left hosts out within max_failed."""
        done = count - len(self.dropped)
        out = [f"release {self.ctx.release} is live on {done} of {count} hosts" if self.ctx.switches
               else f"done on {done} of {count} hosts"]
        back = [h for h in self.dropped if h not in self.stuck]
        before = {self.previous.get(h) for h in back}
        serve = "serves" if len(back) == 1 else "serve"
        if back:
            out.append(f"{', '.join(back)} {serve} {_serves(before.pop())} as before the run"
                       if len(before) == 1 and None not in before
                       else f"{', '.join(back)} {'is' if len(back) == 1 else 'are'} as before the run")
        if self.stuck:
            out.append(f"{', '.join(self.stuck)} {'needs' if len(self.stuck) == 1 else 'need'} a person")
        return "; ".join([*out, *(f"NOT undone: {what}" for what in self._not_undone())])

    def _before(self) -> str:
        before = {self.previous.get(h) for h in self.ctx.host_names}
        if None in before:
            return " before the run"
        if before == {""}:
            return " before the run; no release of this instance is live"
        if len(before) == 1:
            return f" before the run: {_serves(before.pop())} is live"
        hosts = self.ctx.host_names
        return " before the run: " + ", ".join(f"{h} serves {_serves(self.previous[h])}" for h in hosts)

    def _not_undone(self) -> list[str]:
        """What the run's own commands did that no undo reverts: the database
        a migrate changed (the migrations Django said it applied), a hook."""
        out = []
        for step in self.lasting:
            ran = self.outputs(step)
            # Where it ran: not the hosts it never reached (left out before it).
            where = ", ".join(h for h in step.hosts if h in ran or h not in self.dropped) or "this machine"
            said = migrations(" ".join(r.stdout for r in ran.values())) if step.title.startswith("migrate") else ""
            out.append(f"{step.title} ran on {where}{said}; what it changed stays" if not said
                       else f"{step.title} ran on {where}, and the database is not rolled back:{said}")
        return out

    def last_sessions(self, plan: steps.Plan, groups: list[session.Group]) -> dict[int, dict[str, float]]:
        """Per group, the hosts whose last session it is, each with how long
        that session may wait for the run's end: every later step at its
        limit, and HOLD_MARGIN. Only in a run that has an end on the hosts
        (a lock to release)."""
        if plan.lock is None:
            return {}
        last: dict[str, int] = {}
        for i, group in enumerate(groups):
            if group.hosts and not isinstance(group.steps[0][1], steps.HealthCheck):
                last.update(dict.fromkeys(group.hosts, i))
        # Each group at its steps' limits (a pause at its length), its own included: its other hosts may still run.
        bound = [sum(max(self.timeout(s), getattr(s, "seconds", 0.0)) for _, s in g.steps) for g in groups]
        out: dict[int, dict[str, float]] = {}
        for host, i in last.items():
            out.setdefault(i, {})[host] = sum(bound[i:]) + HOLD_MARGIN
        return out

    def run_group(self, group: session.Group, held: dict[str, float]) -> None:
        if self.dropped and group.hosts:
            group = session.without(group, self.dropped)
            if not group.hosts:
                return
        stage, step = group.steps[0]
        if isinstance(step, steps.HealthCheck):
            self.progress.enter(stage)
            failed = health.check_all(step, stage, self.fanout, self.progress)
        elif group.hosts:
            failed = self.on_hosts(group, held)
        else:
            self.progress.enter(stage)
            failed = self.on_this_machine(stage, step)
        if failed:
            self.settle(failed)

    def settle(self, failed: Failures) -> None:
        """Steps failed on some hosts: within the plan's max_failed, those
        hosts are put back (their own changes undone) and left out of the
        rest of the run; beyond it, or on the lock's first host or this
        machine, the run fails (and every host is put back)."""
        hosts = list(dict.fromkeys(h for _, on in failed for h, _ in on))
        first = self.plan.lock.hosts[0] if self.plan.lock else None
        # A lock another run holds is never "a host that failed": that run
        # must be waited for, or taken over if it is gone.
        if (RUNNER in hosts or first in hosts or any(isinstance(step, steps.Lock) for step, _ in failed)
                or len(self.dropped) + len(hosts) > self.plan.max_failed):
            raise StepFailed("\n".join(
                f"{step.title}: {detail(on[0][1])}" if on[0][0] == RUNNER
                else failure_message(step, on, self.reporter.redact) for step, on in failed))
        self.drop({h: next(step.title for step, on in failed if any(h == x for x, _ in on)) for h in hosts})

    def drop(self, why: dict[str, str]) -> None:
        """`why`'s hosts left out of the rest of the run, their changes undone."""
        self.dropped.update(why)
        self.progress.note(f"{', '.join(why)} failed; within max_failed {self.plan.max_failed}"
                           f" ({len(self.dropped)} used), left out of the rest of the run, and what the run"
                           " changed there is undone")
        # A host that died is why most hosts fail: its undo failing too
        # stops nothing else (the run's end says it needs a person). Not
        # interrupted half way: its entries have left the log.
        with interrupts.deferred():
            problems = self.rollback(list(why))
        for host in why:
            if mine := [p for p in problems if p.startswith(f"{host}: ")]:
                self.stuck[host] = mine
                self.progress.note(f"{host}: THE UNDO DID NOT COMPLETE; it needs a person: " + "; ".join(mine))

    # -- steps on hosts, a session per host --------------------------------------

    def on_hosts(self, group: session.Group, held: dict[str, float]) -> Failures:
        """A group of steps, in one session on each of its hosts, all hosts at
        once; the steps that failed, each with its hosts' results. The
        sessions of `held`'s hosts wait on for the run's end."""
        if not self.hosts.transports:
            self.teardown.append(("close connections", self.hosts.close))
            missing = self.hosts.connect()
            if missing:
                self.drop(missing)
                group = session.without(group, self.dropped)
        self.uploads.begin(group)
        gate = Gate(self.progress, group)
        for host in group.hosts:
            if host in held:
                self.held[host] = Held(held[host], UNDO_TIMEOUT)
        results = self.fanout.map(group.hosts, lambda host: self.host_session(group, host, gate, host in held))
        for j, (_, step) in enumerate(group.steps):
            self.results[id(step)] = {h: r[j] for h, r in zip(group.hosts, results, strict=True)
                                      if r[j] is not None}
        return [(step, failed) for j, (_, step) in enumerate(group.steps)
                if (failed := [(h, r[j]) for h, r in zip(group.hosts, results, strict=True)
                               if r[j] is not None and not r[j].ok])]

    def host_session(self, group: session.Group, host: str, gate: Gate, held: bool) -> list[Result | None]:
        """The group's steps on one host, in one session (in a thread of the
        pool), `held` open for the run's end if it is the host's last."""
        one = HostSession(group, host, gate, self.progress, self.undo.take_tidying(host), self.started,
                          self.held[host] if held else None)
        for j, (_, step) in enumerate(group.steps):
            handler = steps.of_kind(self.on_host, step)
            if handler is None:
                raise TypeError(f"{type(step).__name__} cannot run on a host")
            one.add(j, handler(step, host, self.timeout(step)))

        def over() -> None:
            self.uploads.ended(host)
            self.locking.ended(host, host == group.hosts[0])
        return one.run(self.hosts[host], self.ctx.run_id, over)

    def started(self, step: steps.Step) -> None:
        # Only True is written (from the host threads): no update can be lost.
        if step.changes:
            self.changed = True
        if getattr(step, "lasting", False) and step not in self.lasting:
            self.lasting.append(step)  # list.append is atomic: at worst a step is listed twice

    # How each kind of step runs on a host (the table `on_host`): its entries
    # in the host's session. The undo of a file's change is recorded before
    # the session starts, and is safe to run if the change never happened:
    # an interrupt between the change and the record must not lose it.

    def _command(self, step: steps.Run, host: str, timeout: float) -> list[session.Made]:
        entry = session.Entry(step.command.line(), timeout=timeout, **(
            {"keep": step.output_limit} if step.output_limit else {}))

        undo = None if step.undo is None else Undo(host, f"undo {step.title}", step.undo, keep=step.keep)
        if undo is not None and step.undo_safe:
            self.undo.record(undo)
            undo = None

        def ran(result: Result) -> None:
            # Only what the step did: a failed `mkdir` of an existing release
            # must not lead to removing that release.
            if result.ok and undo is not None:
                self.undo.record(undo)
        after = step.after_undo
        again = (lambda: self.undo.again_after(host, after.title, after.command)) if after else None
        return [session.Made(entry, then=ran, started=again)]

    def _install(self, step: steps.Install, host: str, timeout: float) -> list[session.Made]:
        self.undo.record(Undo(host, f"restore {step.path}", step.undo(), keep=step.keep()))
        data = None
        if not step.source:
            content = step.content.encode()
            data = session.Piece(len(content), lambda: io.BytesIO(content))
        return [session.Made(session.Entry(step.command().line(), timeout=timeout, data=data))]

    def _link(self, step: steps.Link, host: str, timeout: float) -> list[session.Made]:
        self.undo.record(Undo(host, f"restore {step.path}", step.undo(), keep=step.keep()))
        return [session.Made(session.Entry(step.command().line(), timeout=timeout))]

    # -- steps on this machine ---------------------------------------------------

    def on_this_machine(self, stage: str, step: steps.Step) -> Failures:
        self.progress.say(lambda r: r.step_started(stage, step, RUNNER))
        started = time.monotonic()
        # Until the step says otherwise it did not succeed (an interrupt lands here).
        result = Result(1, "", "interrupted")
        try:
            result = self.on_runner.run(step)
        except (DeployError, OSError) as e:
            result = Result(1, "", describe_error(e))
        finally:
            self.progress.step_finished(stage, step, RUNNER, StepResult(result, time.monotonic() - started))
        return [] if result.ok else [(step, [(RUNNER, result)])]

    def timeout(self, step: steps.Step) -> float:
        return getattr(step, "timeout", None) or self.ctx.target.step_timeout

    # -- rollback, the run's end, teardown ---------------------------------------

    def rollback(self, hosts: list[str] | None = None) -> list[str]:
        """Every host's changes undone (see UndoLog.replay), or only those of
        `hosts`; what could not be."""
        problems = self.undo.replay(self.hosts.run_quietly, self.fanout.map, self.progress.note, hosts)
        return [self.reporter.redact(p) for p in problems]

    def finish(self, plan: steps.Plan, outcome: str) -> bool:
        """The run's last command on each host, in its held session if it
        has one: what kept changes left for their undo goes, old releases
        are pruned if the run succeeded (within AFTER_LIMIT: a slow prune
        must not keep the lock), then the history gets its line as the lock
        is released. On the first host last: a run waiting for the lock
        takes it there first."""
        done = outcome == "done"
        after = [(step.hosts, f"timeout -k 5 {AFTER_LIMIT} {step.command.line()}")
                 for step in plan.after] if done else []

        def release(host: str) -> list[str]:
            if not plan.lock or host not in self.locking.asked:
                return []
            # A host put back within max_failed: its history says so, not "done".
            put_back = host in self.dropped
            said = ("undo incomplete" if host in self.stuck else instance.LEFT_OUT) if put_back else outcome
            return [plan.lock.finish(context.history_line(self.ctx, said), done and not put_back).line()]

        lines = {h: " ; ".join([*self.undo.take_tidying(h),
                                *(a for hosts, a in after if h in hosts and h not in self.dropped), *release(h)])
                 for h in self.hosts.transports}
        hosts = [h for h, line in lines.items() if line]
        self.end_held(set(self.held) - set(hosts))
        first = plan.lock.hosts[0] if plan.lock else None
        ok = True
        for batch in ([h for h in hosts if h != first], [h for h in hosts if h == first]):
            ok &= self._end_on(batch, lines)
        return ok

    def _end_on(self, hosts: list[str], lines: dict[str, str]) -> bool:
        """Each host's line, all hosts at once, in its held session if it has
        one; what fails is a note. Whether it succeeded on every host."""
        def one(host: str) -> Result:
            held = self.held.pop(host, None)
            result = None
            if held is not None:
                held.give(lines[host])
                result = held.wait()
            return result if result is not None else self.hosts.run_quietly(host, lines[host])
        results = self.fanout.map(hosts, one)
        for host, result in zip(hosts, results, strict=True):
            if not result.ok or result.stderr.strip():
                self.progress.note(f"{host}: after the run: {detail(result)}")
        return all(r.ok for r in results)

    def end_held(self, hosts) -> None:
        """The held sessions of `hosts` end with nothing more to run: each
        has a few seconds, then the connections' closing ends it."""
        ending = [self.held.pop(h) for h in hosts]
        for held in ending:
            held.give("")
        until = time.monotonic() + 5
        for held in ending:
            held.wait(max(0.0, until - time.monotonic()))

    def close(self) -> None:
        self.end_held(list(self.held))
        self.fanout.close()
        self.uploads.close()
        self.locking.close()
        for title, action in reversed(self.teardown):
            try:
                action()
            except Exception as e:  # noqa: BLE001 - teardown must go on to the next item
                self.progress.note(f"{title} failed: {e}")
        self.teardown.clear()


def remove_stale_workdirs(parent: str) -> None:
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


# Django's migrate, one line a migration: "  Applying hello.0001_initial... OK".
# [ \t], not \s: \s would match line breaks, and a host's run of them makes the search quadratic.
_APPLYING = re.compile(r"^[ \t]*Applying ([A-Za-z0-9_]+\.[A-Za-z0-9_]+)\.\.\.(.*)$", re.MULTILINE)


def migrations(output: str) -> str:
    """The migrations Django's output says were applied (and the one it was
    applying when it failed), in words; "" if it names none. The names are
    checked against their shape: a host's text is never shown as it is."""
    applied, failed = [], ""
    for m in _APPLYING.finditer(output):
        if m.group(2).strip().startswith("OK"):
            applied.append(m.group(1))
        else:
            failed = m.group(1)
    said = f" applied {', '.join(applied)}" if applied else ""
    return said + (f"{';' if said else ''} failed while applying {failed}" if failed else "")


def _serves(release: str) -> str:
    if not release:
        return "no release"
    return release if release == delta.NOT_A_RELEASE else f"release {release}"


def _where(ctx: Context) -> str:
    """Where to look at a site served on this machine: its HOSTNAME (local.test)
    resolves nowhere, so the address is given with the Host header it needs."""
    if ctx.target.transport != "local" or not ctx.hostname:
        return ""
    url = f"http://127.0.0.1:{ctx.target.apache.port}/"
    return f"; see it: {Command.of(('curl', '-H', f'Host: {ctx.hostname}', url))}"
