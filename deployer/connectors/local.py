"""This machine, through /bin/sh: the embedded default and the runner's own steps."""

import os
import select
import selectors
import signal
import subprocess
import threading
import time

from deployer.connectors.base import (
    CHUNK,
    GRACE,
    POLL,
    TIMED_OUT,
    WAKE_WAIT,
    Feed,
    Limit,
    Sink,
    Stdin,
    Stopped,
    as_limit,
    timed_out,
)
from deployer.connectors.result import Result, Tail


class LocalTransport:
    """This machine, through /bin/sh: the embedded default and the runner's own steps.

    `stop` is the deploy's stop flag: set, every running command is stopped
    (TERM, then KILL after GRACE) and its run raises Stopped.
    """

    def __init__(self, stop: threading.Event | None = None, hidden: frozenset[str] = frozenset()):
        self.stop = stop or threading.Event()
        # The variables secrets are read from: not for hooks, migrate or any
        # other command here (the values reach the vhost only).
        self.hidden = hidden

    def run(self, line: str, stdin: Stdin = b"", timeout: float | None | Limit = None,
            out: Sink | None = None, err: Sink | None = None) -> Result:
        # A session of its own, so an interrupted deploy stops the whole
        # command (shell and children), not just the shell.
        env = {k: v for k, v in os.environ.items() if k not in self.hidden}
        proc = subprocess.Popen(["/bin/sh", "-c", line], stdout=subprocess.PIPE, env=env,
                                stderr=subprocess.PIPE, stdin=subprocess.PIPE, start_new_session=True)
        limit = as_limit(timeout)
        out, err = out or Tail(), err or Tail()
        try:
            if not self._pump(proc, stdin, limit, out, err):
                _stop_local_group(proc)
                return Result(TIMED_OUT, out.text(), timed_out(err.text(), limit.seconds()))
            code = proc.wait()
        except BaseException:
            _stop_local_group(proc)
            raise
        return Result(code, out.text(), err.text())

    def _pump(self, proc: subprocess.Popen, stdin: Stdin, limit: Limit, out: Sink, err: Sink) -> bool:
        """Feed stdin and pass stdout and stderr on, all at once, so neither
        side waits on a full pipe; False if the time limit came first."""
        tails = {proc.stdout: out, proc.stderr: err}
        feed = Feed(stdin)
        wake = getattr(stdin, "wake", None)
        feeding = proc.stdin.fileno()
        with selectors.DefaultSelector() as sel:
            for stream in tails:
                sel.register(stream, selectors.EVENT_READ)
            if stdin:
                sel.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
            # Until the output is closed and the command has ended (a daemon
            # it left may hold no pipe while the command still runs).
            while sel.get_map() or proc.poll() is None:
                if self.stop.is_set() and not limit.holding():
                    raise Stopped("stopped")
                deadline = limit.deadline()
                if deadline is not None and time.monotonic() > deadline:
                    return False
                if not sel.get_map():
                    time.sleep(POLL)
                    continue
                if list(sel.get_map()) == [feeding] and proc.poll() is not None:
                    # Ended, its output closed: what stdin would still be fed (the
                    # rest of a session, waiting for an answer) has no reader.
                    sel.unregister(proc.stdin)
                    proc.stdin.close()
                    continue
                for key, _ in sel.select(POLL):
                    if key.fileobj is proc.stdin:
                        chunk = feed.pending()
                        if not chunk and not feed.done:
                            # What comes next is not there yet: it may have a
                            # descriptor to wait on (session.Deferred), and the
                            # output too, which may be what it waits for.
                            fd = wake() if wake is not None else None
                            if fd is not None:
                                parked = select.poll()
                                parked.register(fd, select.POLLIN)
                                for other in sel.get_map().values():
                                    if other.fileobj is not proc.stdin:
                                        parked.register(other.fd, select.POLLIN)
                                parked.poll(WAKE_WAIT * 1000)
                            else:
                                time.sleep(POLL / 10)
                            continue
                        try:
                            feed.sent(os.write(proc.stdin.fileno(), chunk))
                        except BrokenPipeError:
                            feed.done = True
                        if feed.done:
                            sel.unregister(proc.stdin)
                            proc.stdin.close()
                        continue
                    chunk = os.read(key.fd, CHUNK)
                    if chunk:
                        tails[key.fileobj].add(chunk)
                    else:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
        return True

    def reconnect(self) -> bool:
        return False  # nothing to reconnect: a command that failed here failed

    def close(self) -> None:
        pass


def _stop_local_group(proc: subprocess.Popen) -> None:
    """TERM the command's process group, KILL it after GRACE, and return only
    when no process of it is left: stopped means stopped."""
    for sig, wait in ((signal.SIGTERM, GRACE), (signal.SIGKILL, GRACE)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, or the group never empties
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait()
                return
            time.sleep(POLL)
    proc.wait()
