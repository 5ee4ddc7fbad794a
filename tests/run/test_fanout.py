"""Fanout: whatever interrupts it, the work it started is stopped and over
before the interrupt goes on (to the rollback and the lock's release)."""

import os
import signal
import threading

import pytest

from deployer.run import interrupts
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
