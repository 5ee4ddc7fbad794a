"""An OpenVPN client for the length of one deploy.

`openvpn --daemon` exits 0 even when the server is unreachable, so its exit
code proves nothing: the tunnel counts as up only when the log says
"Initialization Sequence Completed". The wait is bounded, and a failure
quotes the end of OpenVPN's own log.
"""

import os
import signal
import subprocess
import time

from deployer.errors import StepFailed

READY = "Initialization Sequence Completed"
_POLL = 0.1


class OpenVpnTunnel:
    def __init__(self, config: str, workdir: str, timeout: float):
        self.config = config
        self.log = os.path.join(workdir, "openvpn.log")
        self.pidfile = os.path.join(workdir, "openvpn.pid")
        self.timeout = timeout
        self.pid: int | None = None

    def open(self) -> None:
        argv = ["openvpn", "--config", self.config, "--daemon", "deployer-openvpn",
                "--log", self.log, "--writepid", self.pidfile]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=self.timeout)
        except FileNotFoundError:
            raise StepFailed("openvpn is not installed (apt-get install openvpn)") from None
        except subprocess.TimeoutExpired:
            raise StepFailed(f"openvpn did not daemonize within {self.timeout:g}s") from None
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout).strip()
            raise StepFailed(f"openvpn refused to start (exit {proc.returncode})"
                             f"{': ' + said if said else ''}{self._tail()}")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            self.pid = self.pid or self._read_pid()
            if READY in self._log_text():
                return
            if self.pid is not None and not _alive(self.pid):
                self.pid = None
                raise StepFailed(f"openvpn exited before the tunnel came up{self._tail()}")
            time.sleep(_POLL)
        raise StepFailed(f"VPN not up after {self.timeout:g}s (no {READY!r} in its log){self._tail()}")

    def close(self) -> None:
        """Stop the daemon and wait for it, so its routes are gone when we return."""
        pid = self.pid or self._read_pid()
        self.pid = None
        if pid is None or not _alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(_POLL)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    def _read_pid(self) -> int | None:
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _log_text(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _tail(self, lines: int = 15) -> str:
        tail = self._log_text().splitlines()[-lines:]
        return ("\n  openvpn log (last lines):\n    " + "\n    ".join(tail)) if tail else ""


def _alive(pid: int) -> bool:
    """Whether the daemon still runs. Not `kill(pid, 0)`: the daemon double-forked,
    so its parent is init, which may leave it a zombie for a while after it
    exited, and a zombie answers signal 0."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
