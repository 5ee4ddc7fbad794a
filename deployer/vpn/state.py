"""A tunnel's files in the registry, as the deploys and the keeper share
them: locks with a deadline, the keeper's state, whether it lives."""

import fcntl
import ipaddress
import os
import shutil
import signal
import subprocess
import time

from deployer.errors import StepFailed

READY = "Initialization Sequence Completed"
# OpenVPN dies with its keeper, however the keeper ends. Set by setpriv just
# before it execs OpenVPN, with no preexec_fn (unsafe with threads).
DIES_WITH_US = ("setpriv", "--pdeathsig", "TERM", "--") if shutil.which("setpriv") else ()
POLL = 0.1
KEEPER_POLL = 0.5
STOP_TIMEOUT = 10.0
LOCK_TIMEOUT = 30.0  # for the setup lock, and for a keeper that is shutting down


def open_file(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def flock(fd: int, how: int, deadline: float, waiting_for: str) -> None:
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise StepFailed(f"gave up waiting for {waiting_for}") from None
            time.sleep(POLL)


class Locked:
    def __init__(self, path: str, deadline: float):
        self.path, self.deadline = path, deadline

    def __enter__(self):
        self.fd = open_file(self.path)
        try:
            flock(self.fd, fcntl.LOCK_EX, self.deadline, "another deploy starting the VPN tunnel")
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def keeper_pids(base: str) -> tuple[int, int] | None:
    """The keeper's and OpenVPN's pids, if that keeper is alive."""
    try:
        keeper, openvpn = (int(w) for w in read(f"{base}.state").split())
        with open(f"/proc/{keeper}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (ValueError, OSError):
        return None
    # The pid could be another process's by now: it must be this keeper.
    if b"deployer.vpn" not in argv or base.encode() not in argv:
        return None
    return keeper, openvpn


def any_keeper(registry: str) -> bool:
    """Whether a keeper of ours runs for any config (its tunnel is not foreign)."""
    try:
        names = os.listdir(registry)
    except OSError:
        return False
    return any(keeper_pids(os.path.join(registry, n[:-len(".state")])) for n in names if n.endswith(".state"))


def tunnel_up(address: str) -> bool:
    """Whether `address` (an IP) is routed through a tunnel device already."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    r = subprocess.run(["ip", "-o", "route", "get", address], capture_output=True, text=True, timeout=5,
                       stdin=subprocess.DEVNULL)
    words = r.stdout.split()
    dev = words[words.index("dev") + 1] if r.returncode == 0 and "dev" in words else ""
    return dev.startswith(("tun", "tap"))


def stop_keeper(state: tuple[int, int]) -> None:
    """Stop the keeper (it stops OpenVPN) and wait until OpenVPN is gone."""
    keeper, openvpn = state
    try:
        os.kill(keeper, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + STOP_TIMEOUT + 2
    while alive(openvpn) or alive(keeper):
        if time.monotonic() > deadline:
            for pid in (openvpn, keeper):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        time.sleep(POLL)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
