"""What every transport is: how commands reach a host, files included (on
its stdin), behind one small interface (run, reconnect, close), and what
the two implementations share: time limits, the stop flag, the stdin feed."""

import time
from typing import Protocol

from deployer.connectors.result import Result
from deployer.remote import hostscripts
from deployer.run.interrupts import Interrupted


class Reader(Protocol):
    def read(self, n: int) -> bytes: ...


Stdin = bytes | Reader  # what a command reads: bytes, or a file read in chunks


class Sink(Protocol):
    """Where a command's output goes: a Tail, or a session's splitter."""

    def add(self, chunk: bytes) -> None: ...
    def text(self) -> str: ...


class Limit(Protocol):
    """A time limit that can move: each step of a session has its own."""

    def deadline(self) -> float | None: ...  # time.monotonic() past which the command is stopped
    def seconds(self) -> float | None: ...   # the limit, as the message about it says
    # Whether the command is a session held for the run's end, at its wait
    # (run/held.py): the run's stop flag does not stop it, the run's end does.
    def holding(self) -> bool: ...


class _Fixed:
    def __init__(self, seconds: float | None):
        self.limit = seconds
        self.end: float | None = None

    def deadline(self) -> float | None:
        # From the first time it is asked: once the command runs.
        if self.end is None and self.limit is not None:
            self.end = time.monotonic() + self.limit
        return self.end

    def seconds(self) -> float | None:
        return self.limit

    def holding(self) -> bool:
        return False


def as_limit(timeout: "float | None | Limit") -> Limit:
    return timeout if hasattr(timeout, "deadline") else _Fixed(timeout)


class Transport(Protocol):
    def run(self, line: str, stdin: Stdin = b"", timeout: float | None | Limit = None,
            out: Sink | None = None, err: Sink | None = None) -> Result: ...
    def reconnect(self) -> bool: ...
    def close(self) -> None: ...


# What a transport may raise mid-step: the step fails on that host, the
# executor goes on to the next host and then rolls back.


CHUNK = 65536
POLL = 0.05      # how often a waiting command looks at the stop flag and its deadline
WAKE_WAIT = 1.0  # the same, while its stdin waits on a descriptor (session.Deferred)
GRACE = hostscripts.STOP_GRACE
TIMED_OUT = 124   # the exit code of a command stopped at its time limit, as timeout(1) has it
# The most that opening a channel may take, whatever connect_timeout says: a
# host that takes longer is not there.
ANSWER_TIMEOUT = 30.0
ANSWER_FLOOR = 10.0


def timed_out(result_err: str, timeout: float) -> str:
    return f"{result_err}[deployer: stopped after {timeout:g} s, the time limit of this step]\n"


class Stopped(Interrupted):
    """The deploy is being interrupted: a command running for it was stopped."""


class Feed:
    """A command's stdin, handed out a chunk at a time: a file is never read
    whole into memory, and the stop flag is looked at between chunks."""

    def __init__(self, stdin: Stdin):
        self.reader = stdin if not isinstance(stdin, bytes) else None
        self.buffer = stdin if isinstance(stdin, bytes) else b""
        self.done = not stdin

    def pending(self) -> bytes:
        """The next bytes to send; b"" with `done` still False when the
        reader has none yet (it returned None: what comes next depends on
        what the command answers first)."""
        if not self.buffer and self.reader is not None:
            chunk = self.reader.read(CHUNK)
            if chunk is None:
                return b""
            self.buffer = chunk
            if not self.buffer:
                self.done = True
        return self.buffer[:CHUNK]

    def sent(self, n: int) -> None:
        self.buffer = self.buffer[n:]
        if not self.buffer and self.reader is None:
            self.done = True
