"""Ctrl-C and SIGTERM (TeamCity's "stop build") as an exception, and the places
where they must wait: rollback and teardown run whole or the hosts and the
VPN are left half-done."""

import contextlib
import signal
import threading

SIGNALS = {signal.SIGINT, signal.SIGTERM}


class Interrupted(BaseException):
    """Unwinds like KeyboardInterrupt, so every finally runs."""


@contextlib.contextmanager
def deferred():
    """Hold SIGINT/SIGTERM until the block ends; one that arrived meanwhile is
    delivered (and raises) when it does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def block_in_thread() -> None:
    """For threads the deploy starts: the signals go to the main thread only,
    which decides what an interrupt stops (a thread that took one would let
    its Python handler run in the main thread even inside `deferred`)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def install(on_repeat) -> dict:
    """Raise Interrupted on the first signal; call on_repeat() on later ones, so a
    second Ctrl-C cannot cut the rollback short. Returns the previous handlers."""
    seen = []

    def handler(signum, frame):
        if seen:
            on_repeat()
            return
        seen.append(signum)
        raise Interrupted(signal.Signals(signum).name)

    return {s: signal.signal(s, handler) for s in SIGNALS}


def restore(previous: dict) -> None:
    for s, h in previous.items():
        signal.signal(s, h)
