"""A network namespace of the store tests' own, dl-s3test-<pid>: 198.18.9.2/24
inside, on a veth whose end here is 198.18.9.1/24, and a real S3-compatible
server (tests/s3server.py) on 198.18.9.2 in it. No other address is used."""

import os
import subprocess
from pathlib import Path

import pytest

from tests import s3server

NETNS = f"dl-s3test-{os.getpid()}"
HERE, THERE = "198.18.9.1", "198.18.9.2"
# veth names: 15 characters at most.
OUTER, INNER = f"dls3o{os.getpid()}", f"dls3i{os.getpid()}"

why_not = s3server.available() or (None if os.geteuid() == 0 else "needs root (network namespaces)")


def _ip(*args: str, netns: str | None = None, ok: tuple[str, ...] = ()) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if done.returncode and not any(s in done.stderr for s in ok):
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


@pytest.fixture(scope="session")
def netns():
    if why_not:
        pytest.skip(why_not)
    # No packet for 198.18.0.0/15 may leave this machine, whatever runs next.
    _ip("route", "add", "unreachable", "198.18.0.0/15", ok=("File exists",))
    _ip("netns", "add", NETNS)
    try:
        _ip("link", "add", OUTER, "type", "veth", "peer", "name", INNER, "netns", NETNS)
        _ip("addr", "add", f"{HERE}/24", "dev", OUTER)
        _ip("link", "set", OUTER, "up")
        _ip("addr", "add", f"{THERE}/24", "dev", INNER, netns=NETNS)
        _ip("link", "set", INNER, "up", netns=NETNS)
        _ip("link", "set", "lo", "up", netns=NETNS)
        yield NETNS
    finally:
        _ip("netns", "delete", NETNS)
        _ip("link", "delete", OUTER, ok=("Cannot find device",))


@pytest.fixture(scope="session")
def s3(netns, tmp_path_factory) -> s3server.S3Server:
    # Ports of its own (its gRPC sockets in /tmp are seen from every namespace).
    server = s3server.start(netns, THERE, Path(tmp_path_factory.mktemp("s3")), offset=100)
    try:
        yield server
    finally:
        server.stop()
