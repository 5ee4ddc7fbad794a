"""Fanout: whatever interrupts it, the work it started is stopped and over
before the interrupt goes on (to the rollback and the lock's release)."""

import os
import signal
import threading
import time

import pytest

from deployer.connectors import local
from deployer.connectors.local import LocalTransport
from deployer.run import interrupts, session
from deployer.run.fanout import Fanout


@pytest.mark.parametrize("after", [1, 3])
def test_a_sigterm_while_work_is_handed_out_stops_what_was_started_before_it_goes_on(after):
    stop = threading.Event()
    fanout = Fanout(4, stop)
    seen: list[tuple[int, bool]] = []

    def work(item: int) -> None:
        # A host's session: it runs until the stop flag says otherwise.
        seen.append((item, stop.wait(10)))

    def items():
        for item in range(4):
            if item == after:
                os.kill(os.getpid(), signal.SIGTERM)  # as TeamCity's "stop build" does
            yield item

    previous = interrupts.install(lambda: None)
    try:
        with pytest.raises(interrupts.Interrupted):
            fanout.map(items(), work)
        # Every item handed out has ended, told to stop; none is left running.
        assert sorted(seen) == [(i, True) for i in range(len(seen))] and len(seen) >= after, seen
    finally:
        interrupts.restore(previous)
        stop.set()
        fanout.close()


def test_a_stop_wakes_the_sessions_parked_on_another_hosts_answer(monkeypatch):
    # Parked on a Bell, a session looks at the stop flag only when rung or
    # every WAKE_WAIT (30 s here): the stop rings it, as the executor's does.
    monkeypatch.setattr(local, "WAKE_WAIT", 30.0)
    stop = threading.Event()
    bell = session.Bell()
    fanout = Fanout(2, stop, wake=bell.ring)
    transport = LocalTransport(stop)
    parked = threading.Event()

    def work(item: int) -> None:
        def never():
            parked.set()
            return None  # the answer it waits for never comes
        transport.run("cat > /dev/null", stdin=session.Input(b"", [session.Entry("x", data=bell.deferred(never))]),
                      timeout=60)

    def items():
        yield 0
        parked.wait(10)
        time.sleep(0.2)  # into its wait
        raise interrupts.Interrupted("SIGTERM")

    started = time.monotonic()
    try:
        with pytest.raises(interrupts.Interrupted):
            fanout.map(items(), work)
    finally:
        bell.close()
        fanout.close()
    assert time.monotonic() - started < 10
