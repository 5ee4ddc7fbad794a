"""An HTTP client in the private network, run by the lab's load test with
the system's Python inside the VPN server's namespace (so stdlib only).

Asks every host for the instance's /health until the stop file appears (or
MAX_SECONDS pass, or MAX_REQUESTS are made): per host, FRESH threads on a new
connection each time and one thread on a keep-alive connection. Prints one
JSON object: the count of answers, every failure (capped), how many times a
kept-alive connection was closed by the server between requests, and, per
host, the releases that answered in the order they did: [release, first,
last], the times (CLOCK_MONOTONIC, which the test shares) the first and last
request of each stretch of answers from that release started.

A request on a kept-alive connection that the server closed before sending
a byte of an answer is sent again once on a new connection, as browsers and
load balancers do (RFC 9112, 9.3.1): Apache closes idle kept-alive
connections when it reloads. Anything else is a failure: an error, a status
other than 200, or a second close."""

import http.client
import json
import os
import sys
import threading
import time

FRESH = 2
MAX_SECONDS = 300
MAX_REQUESTS = 500_000
MAX_FAILURES = 200
CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = self.requests = self.reconnects = 0
        self.failures: list[list] = []
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
            if len(self.failures) < MAX_FAILURES:
                self.failures.append([started, host, what[:300]])
            else:
                self.failures[-1][2] = "and more"


def ask(conn: http.client.HTTPConnection, name: str) -> tuple[int, bytes]:
    conn.request("GET", "/health", headers={"Host": name})
    answer = conn.getresponse()
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
            record(tally, host, started, *ask(conn, name))
        except (OSError, http.client.HTTPException) as e:
            tally.fail(host, started, f"{type(e).__name__}: {e}")
        finally:
            conn.close()


def kept(tally: Tally, host: str, name: str, done) -> None:
    conn = http.client.HTTPConnection(host, 80, timeout=20)
    reused = False
    while not done() and tally.count():
        started = time.monotonic()
        try:
            try:
                answer = ask(conn, name)
            except CLOSED:
                if not reused:
                    raise
                with tally.lock:
                    tally.reconnects += 1
                conn.close()
                answer = ask(conn, name)
            record(tally, host, started, *answer)
            reused = True
        except (OSError, http.client.HTTPException) as e:
            tally.fail(host, started, f"{type(e).__name__}: {e}")
            conn.close()
            reused = False
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
    print(json.dumps({"ok": tally.ok, "reconnects": tally.reconnects,
                      "failures": tally.failures, "releases": tally.releases}))


if __name__ == "__main__":
    main(sys.argv[1].split(","), sys.argv[2], sys.argv[3])
