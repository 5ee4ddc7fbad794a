"""A tunnel's files in the registry, as the deploys and the keeper share
them: locks with a deadline, the keeper's state, OpenVPN's log, the linger,
whether the keeper lives."""

import contextlib
import fcntl
import ipaddress
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass

from deployer.errors import StepFailed

READY = "Initialization Sequence Completed"
# OpenVPN's words when it restarts by itself (ping-restart, a TLS error, a
# signal): the tunnel is down until READY comes again; and when it exits.
RESTARTING = "process restarting"
EXITING = "process exiting"
# OpenVPN dies with its keeper, however the keeper ends. Set by setpriv just
# before it execs OpenVPN, with no preexec_fn (unsafe with threads).
DIES_WITH_US = ("setpriv", "--pdeathsig", "TERM", "--") if shutil.which("setpriv") else ()
POLL = 0.1
KEEPER_POLL = 0.5
STOP_TIMEOUT = 10.0
LOCK_TIMEOUT = 30.0  # for the setup lock, and for a keeper that is shutting down
# The log of every start is kept (appended to); a keeper that starts with a
# log past LOG_LIMIT moves it to .log.1 first, so two generations at most.
LOG_LIMIT = 1024 * 1024
# What is read of a start's lines to see whether it is up, at most (its end).
LOG_READ = 256 * 1024
LINGER_MAX = 3600.0  # targets.yaml's bound too (config.model.VPN_LINGER_MAX): the keeper imports no config


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


def read(path: str, offset: int = 0, limit: int = LOG_READ) -> str:
    """The file from `offset` on, its last `limit` bytes at most; "" if it is
    not there. A link or anything but a regular file is not read: only the
    keeper and the deploys write these names, in a folder of our own."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        start = max(offset, st.st_size - limit)
        return os.pread(fd, max(0, st.st_size - start), start).decode("utf-8", "replace")
    finally:
        os.close(fd)


def write(path: str, text: str) -> None:
    """`text` in `path` at once: written to a new file of a name nobody can
    guess (two runs may write at once), then renamed over it; never through
    a link someone put at either name (rename replaces a link itself)."""
    fd, new = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f"{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(new, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(new)
        raise


def up(text: str) -> bool:
    """Whether the lines of one start say the tunnel is up now: READY, and
    no restart of OpenVPN's own nor its exit since."""
    return READY in text and text.rfind(READY) > max(text.rfind(RESTARTING), text.rfind(EXITING))


@dataclass(frozen=True)
class KeeperState:
    keeper: int
    openvpn: int  # 0 between two starts
    # The two below have defaults: a keeper of the deployer before them
    # wrote two pids only, and is still known (not joined by a second one).
    starts: int = 1  # how many times this keeper has started OpenVPN
    offset: int = 0  # where the current start's lines begin in the log

    def line(self) -> str:
        return f"{self.keeper} {self.openvpn} {self.starts} {self.offset}\n"


def recorded(base: str) -> KeeperState | None:
    """The state the keeper wrote last, alive or not."""
    try:
        return KeeperState(*(int(w) for w in read(f"{base}.state", limit=4096).split()))
    except (TypeError, ValueError):
        return None


def keeper_state(base: str) -> KeeperState | None:
    """The keeper's state, if that keeper is alive."""
    state = recorded(base)
    if state is None:
        return None
    try:
        with open(f"/proc/{state.keeper}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    # The pid could be another process's by now: it must be this keeper.
    if b"deployer.vpn" not in argv or base.encode() not in argv:
        return None
    return state


def keeper_pids(base: str) -> tuple[int, int] | None:
    """The keeper's and OpenVPN's pids (0 between two starts), if that keeper is alive."""
    state = keeper_state(base)
    return (state.keeper, state.openvpn) if state else None


def any_keeper(registry: str) -> bool:
    """Whether a keeper of ours runs for any config (its tunnel is not foreign)."""
    try:
        names = os.listdir(registry)
    except OSError:
        return False
    return any(keeper_state(os.path.join(registry, n[:-len(".state")])) for n in names if n.endswith(".state"))


def read_linger(base: str) -> float:
    """Seconds the tunnel stays up once nobody uses it, as the newest run
    said; 0 (close at once) when it cannot be read."""
    try:
        seconds = float(read(f"{base}.linger", limit=64))
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), LINGER_MAX) if seconds == seconds else 0.0


def write_linger(base: str, seconds: float) -> None:
    write(f"{base}.linger", f"{seconds:g}\n")


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
    signal_pid(keeper, signal.SIGTERM)
    if not gone((openvpn, keeper), STOP_TIMEOUT + 2):
        for pid in (openvpn, keeper):
            signal_pid(pid, signal.SIGKILL)
        gone((openvpn, keeper), STOP_TIMEOUT)


def stop_orphan(base: str, config: str) -> None:
    """The OpenVPN of a keeper that is gone, if it still runs (killed with
    SIGKILL, the keeper cannot wait for it; OpenVPN's own exit, told by
    pdeathsig, takes a second or two when it says goodbye to the server):
    stopped and waited for, so that this config never has two clients."""
    state = recorded(base)
    if state is None or not state.openvpn or keeper_state(base) is not None:
        return
    try:
        with open(f"/proc/{state.openvpn}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return
    if b"--config" not in argv or config.encode() not in argv:
        return  # that pid is another process's by now
    signal_pid(state.openvpn, signal.SIGTERM)
    if not gone((state.openvpn,), STOP_TIMEOUT):
        signal_pid(state.openvpn, signal.SIGKILL)
        gone((state.openvpn,), STOP_TIMEOUT)


def signal_pid(pid: int, sig: int) -> None:
    if pid > 0:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def gone(pids: tuple[int, ...], timeout: float) -> bool:
    """Whether all of `pids` are gone within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
