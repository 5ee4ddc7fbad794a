"""Work on every host at once, from a pool of threads, in a way an
interrupt can always get out of."""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

from deployer.run import interrupts


class Fanout:
    """At most `parallel` items at a time. `stop` is the run's stop flag:
    set on an interrupt, every host's running command stops (the
    transports watch it); `wake()` then rouses the transports parked on
    another host's answer (session.Bell), which would see it only within
    WAKE_WAIT."""

    def __init__(self, parallel: int, stop: threading.Event, wake: Callable[[], None] = lambda: None):
        self.parallel = parallel
        self.stop = stop
        self.wake = wake
        self.pool: ThreadPoolExecutor | None = None

    def map(self, items, fn) -> list:
        """`fn` on every item at once; results in order.

        The main thread only waits, in short slices, so Ctrl-C and SIGTERM
        land here and never inside the SSH library; and between the slices,
        not in them: raised inside `wait`, the interrupt could leave a lock of
        its waiter held, which the thread that ends a host's work then waits
        for forever (seen as a deploy that hung after SIGTERM). An interrupt
        sets the stop flag, waits until every host's command has stopped,
        then goes on (to the rollback).
        """
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.parallel, "host", initializer=interrupts.block_in_thread)
        futures = []
        try:
            # An interrupt that came as the work was handed out (a SIGTERM
            # as a stage starts) must find every item it started here and
            # stop it: else a host's work went on unseen while the run undid
            # and released the others (seen in CI as a lock left on the
            # first host, taken after the run's end).
            with interrupts.deferred():
                for item in items:
                    futures.append(self.pool.submit(fn, item))
            while not all(f.done() for f in futures):
                with interrupts.deferred():
                    wait(futures, timeout=0.1)
        except BaseException:
            self.stop.set()
            self.wake()
            wait(futures)
            self.stop.clear()
            raise
        return [f.result() for f in futures]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
