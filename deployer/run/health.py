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
from deployer.run.failures import failure_message
from deployer.run.fanout import Fanout
from deployer.run.progress import Progress

ATTEMPT_TIMEOUT = 5.0  # seconds for one request, connection included
PAUSE = 0.5  # between attempts


def check_all(step: steps.HealthCheck, stage: str, fanout: Fanout, progress: Progress) -> list[str]:
    """Every host of `step` asked from the runner, all at once; what failed."""

    def one(i: int) -> Result:
        host = step.hosts[i]
        progress.say(lambda r: r.step_started(stage, step, host))
        started = time.monotonic()
        result = check(step.addresses[i], step.port, step.path, step.host_header, step.status, step.timeout,
                       fanout.stop)
        progress.step_finished(stage, step, host, StepResult(result, time.monotonic() - started))
        return result

    results = fanout.map(range(len(step.hosts)), one)
    failed = [(h, r) for h, r in zip(step.hosts, results, strict=True) if not r.ok]
    return [failure_message(step, failed, progress.reporter.redact)] if failed else []


def check(address: str, port: int, path: str, host_header: str, status: int, timeout: float,
          stop: threading.Event) -> Result:
    """GET `path` until it answers `status` (Result ok, with what it answered)
    or `timeout` seconds have passed (not ok, with the last answer or error)."""
    deadline = time.monotonic() + timeout
    attempts, last = 0, "no answer"
    while True:
        attempts += 1
        seconds = max(0.1, min(ATTEMPT_TIMEOUT, deadline - time.monotonic()))
        conn = http.client.HTTPConnection(address, port, timeout=seconds)
        # The socket timeout bounds each read, not the answer: a host that
        # sends a byte a second would hold it. This bounds the whole attempt.
        cut_off = threading.Event()
        cut = threading.Timer(seconds, _cut, (conn, cut_off))
        cut.start()
        try:
            conn.request("GET", path, headers={"Host": host_header, "User-Agent": "deployer health check",
                                               "Connection": "close"})
            response = conn.getresponse()
            if response.status == status:
                return Result(0, f"{response.status} {response.reason} after {attempts} attempt(s)", "")
            body = response.read(300).decode("utf-8", "replace")
            last = f"{response.status} {response.reason}: {body.strip()[:200]}"
        except (OSError, http.client.HTTPException) as e:  # a timeout is an OSError
            last = f"no whole answer within {seconds:g} s" if cut_off.is_set() else f"{type(e).__name__}: {e}"
        finally:
            cut.cancel()
            conn.close()
        if time.monotonic() + PAUSE >= deadline or stop.wait(PAUSE):
            return Result(1, "", f"GET http://{address}:{port}{path} (Host: {host_header}) did not answer"
                                 f" {status} within {timeout:g} s ({attempts} attempts); last: {last}")


def _cut(conn: http.client.HTTPConnection, cut_off: threading.Event) -> None:
    cut_off.set()  # before the socket goes: the reader's error comes after
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
