"""The health check: one host asked over HTTP, from the runner, until it
answers as expected or its time is up. Every wait is bounded: a connection
or an answer that does not come counts as a failed attempt."""

import http.client
import socket
import threading
import time

from deployer import steps
from deployer.connectors.result import Result
from deployer.output import StepResult
from deployer.run.failures import Failures
from deployer.run.fanout import Fanout
from deployer.run.progress import Progress

ATTEMPT_TIMEOUT = 5.0  # seconds for one request, connection included
PAUSE = 0.5  # between attempts
# How long the same 3xx or 4xx must last to fail the check before its time
# is up: longer than old daemons of a graceful reload may still answer.
SETTLED = 5.0


def check_all(step: steps.HealthCheck, stage: str, fanout: Fanout, progress: Progress) -> Failures:
    """Every host of `step` asked from the runner, all at once; the hosts
    that failed, with their results (none: no failure)."""

    def one(i: int) -> Result:
        host = step.hosts[i]
        progress.say(lambda r: r.step_started(stage, step, host))
        started = time.monotonic()
        result = check(step, step.addresses[i], fanout.stop)
        progress.step_finished(stage, step, host, StepResult(result, time.monotonic() - started))
        return result

    results = fanout.map(range(len(step.hosts)), one)
    failed = [(h, r) for h, r in zip(step.hosts, results, strict=True) if not r.ok]
    return [(step, failed)] if failed else []


# Of the statuses a health check may get and not expect, those that waiting
# can change: a timeout, too early, too many requests. Any other 3xx or 4xx
# is how the app is configured (an HTTPS redirect, a missing route, ALLOWED_HOSTS).
_MAY_CHANGE = {408, 425, 429}


def check(step: steps.HealthCheck, address: str, stop: threading.Event) -> Result:
    """GET the step's path at `address` until it answers one of its statuses
    (Result ok, with what it answered) or its time is up (not ok, with the
    last answer or error). The same 3xx or 4xx it does not expect, for
    SETTLED seconds (not once: a reload may be in flight), fails it sooner."""
    deadline = time.monotonic() + step.timeout
    attempts, last = 0, "no answer"
    final: tuple[int, float] | None = None  # a lasting status, since when
    url = f"http://{address}:{step.port}{step.path}"
    while True:
        attempts += 1
        seconds = max(0.1, min(ATTEMPT_TIMEOUT, deadline - time.monotonic()))
        conn = http.client.HTTPConnection(address, step.port, timeout=seconds)
        # The socket timeout bounds each read, not the answer: a host that
        # sends a byte a second would hold it. This bounds the whole attempt.
        cut_off = threading.Event()
        cut = threading.Timer(seconds, _cut, (conn, cut_off))
        cut.start()
        answered = None
        try:
            conn.request("GET", step.path, headers={**dict(step.headers), "Host": step.host_header,
                                                    "User-Agent": "deployer health check", "Connection": "close"})
            response = conn.getresponse()
            answered = response.status
            if answered in step.statuses:
                return Result(0, f"{response.status} {response.reason} after {attempts} attempt(s)", "")
            # The Location of a redirect says what the app wants instead (https://, another host).
            location = response.getheader("Location", "")[:200]
            body = response.read(300).decode("utf-8", "replace")
            last = (f"{response.status} {response.reason}" + (f" (Location: {location})" if location else "")
                    + f": {body.strip()[:200]}")
        except (OSError, http.client.HTTPException) as e:  # a timeout is an OSError
            last = f"no whole answer within {seconds:g} s" if cut_off.is_set() else f"{type(e).__name__}: {e}"
        finally:
            cut.cancel()
            conn.close()
        lasting = answered is not None and 300 <= answered < 500 and answered not in _MAY_CHANGE
        if not lasting or final is None or final[0] != answered:
            final = (answered, time.monotonic()) if lasting else None
        elif time.monotonic() - final[1] >= SETTLED:
            return Result(1, "", f"GET {url} (Host: {step.host_header}) answered {last}, not {step.expects}, for"
                                 f" {SETTLED:g} s; a {answered} does not change by waiting: the app's settings, or"
                                 " the health check's status or headers, need a change")
        if time.monotonic() + PAUSE >= deadline or stop.wait(PAUSE):
            return Result(1, "", f"GET {url} (Host: {step.host_header}) did not answer {step.expects} within"
                                 f" {step.timeout:g} s ({attempts} attempts); last: {last}")


def _cut(conn: http.client.HTTPConnection, cut_off: threading.Event) -> None:
    cut_off.set()  # before the socket goes: the reader's error comes after
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
