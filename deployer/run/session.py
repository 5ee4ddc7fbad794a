"""Steps run together in one remote shell per host, and that shell's output
split back into each step's result.

A session costs a process start on the host and a round trip, and over an
office VPN the round trips add up, so consecutive steps share one when the
plan allows it: same hosts, and the later step does not have to wait for
the others to end on every host (`Step.waits`).
"""

import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from deployer import steps
from deployer.connectors.base import Reader
from deployer.connectors.result import Result, Tail
from deployer.quoting import Command
from deployer.remote import hostscripts


@dataclass(frozen=True)
class Group:
    """Steps that run one after another in one session on each of `hosts`
    (or on the runner, when `hosts` is empty: then it holds one step)."""

    hosts: tuple[str, ...]
    steps: tuple[tuple[str, steps.Step], ...]  # (stage, step)


def groups(plan: steps.Plan) -> list[Group]:
    out: list[Group] = []
    for stage, step in plan.steps():
        last = out[-1] if out else None
        if (last is not None and step.hosts and last.hosts == step.hosts and not step.waits
                and not _ends(last.steps[-1][1]) and not isinstance(step, steps.HealthCheck)):
            out[-1] = Group(last.hosts, (*last.steps, (stage, step)))
        else:
            out.append(Group(step.hosts, ((stage, step),)))
    return out


def without(group: Group, hosts) -> Group:
    """`group` on its hosts but `hosts` (those a run has left out); a health
    check asks only the addresses of those that remain."""
    keep = tuple(h for h in group.hosts if h not in hosts)

    def fewer(step: steps.Step) -> steps.Step:
        if isinstance(step, steps.HealthCheck):
            kept = [(h, a) for h, a in zip(step.hosts, step.addresses, strict=True) if h not in hosts]
            return replace(step, hosts=tuple(h for h, _ in kept), addresses=tuple(a for _, a in kept))
        return step

    return Group(keep, tuple((stage, fewer(step)) for stage, step in group.steps))


def _ends(step: steps.Step) -> bool:
    """A health check runs on the runner, in no session."""
    return isinstance(step, steps.HealthCheck)


@dataclass(frozen=True)
class Entry:
    """One command line of a session: `data` is what it reads on stdin, if it reads."""

    line: str
    data: "Piece | Deferred | None" = None
    timeout: float = 600.0
    keep: int = 256 * 1024  # bytes of its stdout kept (the end)
    held: bool = False  # waits for the run's end, which an interrupt does not stop (run/held.py)


@dataclass(frozen=True)
class Made:
    """An entry of a host's session for one step, with what to do when it
    starts there and with its result (besides reporting it)."""

    entry: Entry
    then: Callable[[Result], None] | None = None
    started: Callable[[], None] | None = None


class Piece:
    """Bytes of known length for one step's stdin, opened when the session
    gets to them."""

    def __init__(self, size: int, open_: Callable[[], Reader]):
        self.size, self.open = size, open_


class Deferred:
    """A Piece that can be made only once the session has answered something:
    `make` returns None until then. `wake`, if given, is a file descriptor
    that turns readable once it may not (or may: see Bell): a transport
    that waits on it needs no poll, and looks again within a second anyway
    (a session held through the rest of a run would poll for seconds)."""

    def __init__(self, make: Callable[[], Piece | None], wake: int | None = None):
        self.make, self.wake = make, wake

    def release(self) -> None:
        """Its session is over: what it holds for waiting goes."""


class Bell:
    """Wakes the transports that wait on Deferreds made here when `ring()`
    says what their `make` reads has changed: another host's answer.
    Without it, 64 hosts waiting for the relay's turn each looked 50 times
    a second. A Deferred made with a `key` (its host) is woken by `ring()`
    and by `ring(key)`, not by another key's: what one host said is most
    often news to that host alone, and waking every waiter on each host's
    answer made n² looks a run (2,000 at 32 hosts warm; 560 keyed)."""

    def __init__(self):
        self.lock = threading.Lock()
        # Of each pipe made and not closed: read end -> (write end, key).
        self.wakers: dict[int, tuple[int, object]] = {}
        self.closed = False

    def deferred(self, make: Callable[[], "Piece | None"], key: object = None) -> "Deferred":
        return _Rung(self, make, key)

    def ring(self, key: object = None) -> None:
        with self.lock:
            for waker, its in self.wakers.values():
                if key is not None and its != key:
                    continue
                try:
                    os.write(waker, b"x")
                except BlockingIOError:
                    pass  # full: its waiter is awake already

    def pipe(self, key: object = None) -> int | None:
        """A pipe of its own for one waiter (one pipe wakes every poller until
        one reads it: it cannot serve many), rung once already: a ring before
        it was made must not be missed. None if none can be made (out of
        descriptors, or the run is over): its waiter polls instead."""
        try:
            wake, waker = os.pipe()
        except OSError:
            return None
        for fd in (wake, waker):
            os.set_blocking(fd, False)
        os.write(waker, b"x")
        with self.lock:
            if not self.closed:
                self.wakers[wake] = (waker, key)
                return wake
        os.close(wake)
        os.close(waker)
        return None

    def drop(self, wake: int) -> None:
        with self.lock:
            waker, _ = self.wakers.pop(wake, (None, None))
        if waker is not None:
            os.close(wake)
            os.close(waker)

    def close(self) -> None:
        """The run is over: no transport waits any more."""
        with self.lock:
            wakers, self.wakers, self.closed = self.wakers, {}, True
        for wake, (waker, _) in wakers.items():
            os.close(wake)
            os.close(waker)


class _Rung(Deferred):
    """A Bell's Deferred. Its pipe is made only once a transport waits on it
    (at 100 hosts, a pipe for each Deferred of the plan would take 600 of
    the runner's 1,024 descriptors), drained before each look (a ring after
    the look wakes the next wait), and closed once it is taken or its
    session is over (Input.end): only its own transport looks at it."""

    def __init__(self, bell: Bell, make: Callable[[], "Piece | None"], key: object = None):
        self.bell, self.look, self.key, self.fd = bell, make, key, None
        self.made = False  # a pipe was asked for (made or not: one try)

    @property
    def wake(self) -> int | None:
        if not self.made:
            self.made, self.fd = True, self.bell.pipe(self.key)
        return self.fd

    def make(self) -> "Piece | None":
        if self.fd is not None:
            try:
                os.read(self.fd, 4096)
            except BlockingIOError:
                pass
        piece = self.look()
        if piece is not None:
            self.release()
        return piece

    def release(self) -> None:
        if self.fd is not None:
            self.bell.drop(self.fd)
            self.fd = None


def command(run_id: str, entries: list[Entry]) -> Command:
    return hostscripts.session(run_id, tuple((e.line, e.data is not None) for e in entries))


class Input:
    """A session's stdin: the token line, then each reading step's size line
    and bytes, read a chunk at a time (an artifact is never in memory whole)."""

    def __init__(self, token: bytes, entries: list[Entry]):
        self.parts: list[bytes | Piece | Deferred] = [token + b"\n"]
        for e in entries:
            if isinstance(e.data, Piece):
                self.parts += [b"%d\n" % e.data.size, e.data]
            elif e.data is not None:
                self.parts.append(e.data)
        self.reader = None

    def wake(self) -> int | None:
        """What to wait on for the next bytes, when read() has said they are
        not known yet and the Deferred that holds them gave a descriptor."""
        part = self.parts[0] if self.parts else None
        return part.wake if isinstance(part, Deferred) else None

    def read(self, n: int) -> bytes | None:
        """The next bytes; None when the next ones are not known yet."""
        while self.parts:
            part = self.parts[0]
            if isinstance(part, Deferred):
                piece = part.make()
                if piece is None:
                    return None
                self.parts[:1] = [b"%d\n" % piece.size, piece]
                continue
            if isinstance(part, bytes):
                self.parts.pop(0)
                if part:
                    return part
                continue
            if self.reader is None:
                self.reader = part.open()
            chunk = self.reader.read(n)
            if chunk:
                return chunk
            self.close()
            self.parts.pop(0)
        return b""

    def close(self) -> None:
        """Close the piece being read, if it has a file open."""
        close = getattr(self.reader, "close", None)
        if close is not None:
            close()
        self.reader = None

    def end(self) -> None:
        """The session is over, whether or not it read everything."""
        self.close()
        for part in self.parts:
            if isinstance(part, Deferred):
                part.release()


class Split:
    """Splits a session's stdout and stderr at the marks the session script
    writes after each step, and says when each step ends and the next begins.

    `ended(i, result)` is called once both streams have passed step i's
    mark. A Split is also the time limit given to the session's transport:
    each step has its own (`deadline`).
    """

    def __init__(self, entries: list[Entry], started: Callable[[int], None],
                 ended: Callable[[int, Result], None]):
        self.token = secrets.token_hex(16).encode()
        self.entries = list(entries)
        self.started, self.ended = started, ended
        self.marks: list[dict[int, int]] = [{}, {}]  # per stream: step index -> exit code
        self.parts: list[list[Tail]] = [[Tail(entries[0].keep)], [Tail()]]
        self.out, self.err = _Stream(self, 0), _Stream(self, 1)
        self.current = 0
        self.failed = False
        self.since: float | None = None
        started(0)

    # The transport's time limit, per step; it starts when the transport
    # first asks, once the command runs (opening a channel has its own).
    def deadline(self) -> float:
        if self.since is None:
            self.since = time.monotonic()
        return self.since + self.seconds()

    def seconds(self) -> float:
        return self.entries[min(self.current, len(self.entries) - 1)].timeout

    def holding(self) -> bool:
        return self.running and self.entries[self.current].held

    def limit(self, index: int, seconds: float) -> None:
        """Step `index` has `seconds` from now (or from its start, if it has
        not started): a held step given its work has the time that work needs."""
        self.entries[index] = replace(self.entries[index], timeout=seconds)
        if index == self.current:
            self.since = time.monotonic()

    def _marked(self, stream: int, index: int, code: int) -> None:
        self.marks[stream][index] = code
        if index + 1 < len(self.entries):
            self.parts[stream].append(Tail(self.entries[index + 1].keep) if stream == 0 else Tail())
        while self.current in self.marks[0] and self.current in self.marks[1]:
            i, code = self.current, self.marks[0][self.current]
            self.ended(i, Result(code, self.parts[0][i].text(), self.parts[1][i].text()))
            self.current += 1
            self.since = time.monotonic()
            self.failed = code != 0
            if self.running:
                self.started(self.current)

    def finish(self, r: Result) -> None:
        """The session is over: the step it stopped in, if any, ends with the
        session's own result (a time limit, a lost connection, a stop)."""
        if self.running:
            self.failed = True
            detail = r.stderr if r.stderr.strip() else "the session ended before this step did"
            self.ended(self.current, Result(r.exit_code or 1, r.stdout, detail))

    @property
    def running(self) -> bool:
        return self.current < len(self.entries) and not self.failed


class _Stream:
    """One of a session's output streams, cut at the marks into the steps' tails."""

    def __init__(self, split: Split, which: int):
        self.split, self.which = split, which
        # Bounded: a host knows the token (it is on its stdin), and int() of
        # 5,000 digits raises.
        self.mark = re.compile(rb"\n" + re.escape(split.token) + rb" ([0-9]{1,9}) ([0-9]{1,3})\n")
        self.longest = len(split.token) + 24
        self.buffer = bytearray()

    def add(self, chunk: bytes) -> None:
        self.buffer += chunk
        while (m := self.mark.search(self.buffer)) is not None:
            # Read before the buffer changes: a match slices it lazily.
            index, code, start, end = int(m[1]), int(m[2]), m.start(), m.end()
            self._keep(self.buffer[:start])
            del self.buffer[:end]
            self.split._marked(self.which, index, code)
        # All but what could be the start of a mark still to come.
        cut = len(self.buffer) - self.longest
        if cut > 0:
            self._keep(self.buffer[:cut])
            del self.buffer[:cut]

    def _keep(self, data: bytes) -> None:
        if data:
            self.split.parts[self.which][-1].add(bytes(data))

    def text(self) -> str:
        self._keep(self.buffer)
        self.buffer.clear()
        return self.split.parts[self.which][-1].text()
