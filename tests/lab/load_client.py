"""An HTTP client in the private network, run by the lab's load test with
the system's Python inside the VPN server's namespace (so stdlib only).

Asks every host for the instance's /health until the stop file appears (or
MAX_SECONDS pass, or MAX_REQUESTS are made): per host, FRESH threads on a new
connection each time and one thread on a keep-alive connection, each pausing
PAUSE seconds between requests. Prints one JSON object, with times as
CLOCK_MONOTONIC (which the test shares) at the start of a request:
  ok          the count of answers
  failed      [time, host] of every failure
  failures    [time, host, what] of the first MAX_FAILURES
  reconnects  [time, host] of each kept-alive connection the server closed
              between requests
  releases    per host, the releases that answered, in the order they did:
              [release, first, last] of each stretch of answers from one.

A request on a reused kept-alive connection that the server closed before
the status line of an answer is sent again once on a new connection, as
browsers and load balancers do (RFC 9112, 9.3.1): Apache closes idle
kept-alive connections when it reloads. Anything else is a failure: an
error, a status other than 200, or a second close."""

import http.client
import json
import os
import sys
import threading
import time

FRESH = 2
PAUSE = 0.05  # seconds between a thread's requests: a busy site, and CPU left for the deploys
MAX_SECONDS = 1800  # the stop file ends it long before
MAX_REQUESTS = 2_000_000
MAX_FAILURES = 200
CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = self.requests = 0
        self.failed: list[list] = []
        self.failures: list[list] = []
        self.reconnects: list[list] = []
        self.releases: dict[str, list[list]] = {}

    def count(self) -> bool:
        with self.lock:
            self.requests += 1
            return self.requests <= MAX_REQUESTS

    def answer(self, host: str, started: float, release: str) -> None:
        with self.lock:
            self.ok += 1
            seen = self.releases.setdefault(host, [])
            if seen and seen[-1][0] == release:
                seen[-1][1:] = min(seen[-1][1], started), max(seen[-1][2], started)
            else:
                seen.append([release, started, started])

    def fail(self, host: str, started: float, what: str) -> None:
        with self.lock:
            self.failed.append([started, host])
            if len(self.failures) < MAX_FAILURES:
                self.failures.append([started, host, what[:300]])

    def reconnect(self, host: str, started: float) -> None:
        with self.lock:
            self.reconnects.append([started, host])

    def report(self) -> str:
        with self.lock:
            return json.dumps({"ok": self.ok, "failed": self.failed, "failures": self.failures,
                               "reconnects": self.reconnects, "releases": self.releases})


def send(conn: http.client.HTTPConnection, name: str) -> http.client.HTTPResponse:
    conn.request("GET", "/health", headers={"Host": name})
    return conn.getresponse()


def read(answer: http.client.HTTPResponse) -> tuple[int, bytes]:
    return answer.status, answer.read(4096)


def record(tally: Tally, host: str, started: float, status: int, body: bytes) -> None:
    if status != 200:
        tally.fail(host, started, f"{status} {body[:200]!r}")
        return
    try:
        tally.answer(host, started, json.loads(body)["release_dir"])
    except (ValueError, KeyError) as e:
        tally.fail(host, started, f"200 but {type(e).__name__}: {body[:200]!r}")


def fresh(tally: Tally, host: str, name: str, done) -> None:
    while not done() and tally.count():
        started = time.monotonic()
        conn = http.client.HTTPConnection(host, 80, timeout=20)
        try:
            record(tally, host, started, *read(send(conn, name)))
        except (OSError, http.client.HTTPException) as e:
            tally.fail(host, started, f"{type(e).__name__}: {e}")
        finally:
            conn.close()
        time.sleep(PAUSE)


def kept(tally: Tally, host: str, name: str, done) -> None:
    conn = http.client.HTTPConnection(host, 80, timeout=20)
    while not done() and tally.count():
        started = time.monotonic()
        # http.client opens a new connection by itself after an answer that
        # closed the last one (Connection: close): that one is not reused.
        reused = conn.sock is not None
        try:
            try:
                answer = send(conn, name)
            except CLOSED:
                if not reused:
                    raise
                tally.reconnect(host, started)
                conn.close()
                answer = send(conn, name)
            record(tally, host, started, *read(answer))
        except (OSError, http.client.HTTPException) as e:
            tally.fail(host, started, f"{type(e).__name__}: {e}")
            conn.close()
        time.sleep(PAUSE)
    conn.close()


def main(hosts: list[str], name: str, stop: str) -> None:
    tally = Tally()
    deadline = time.monotonic() + MAX_SECONDS

    def done() -> bool:
        return os.path.exists(stop) or time.monotonic() > deadline

    threads = [threading.Thread(target=work, args=(tally, host, name, done))
               for host in hosts for work in [kept] + [fresh] * FRESH]
    for t in threads:
        t.start()
    for t in threads:
        t.join(MAX_SECONDS + 30)
    print(tally.report())


if __name__ == "__main__":
    main(sys.argv[1].split(","), sys.argv[2], sys.argv[3])
