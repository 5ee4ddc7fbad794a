"""An OpenVPN client for the length of one deploy.

OpenVPN runs as our child in a session of its own (the effect of `--daemon`
without its flaws): its pid is known the moment it starts, so an interrupt at
any point can stop it, and waiting for it reaps it. Its exit code proves
nothing about the tunnel (`--daemon` exits 0 even when the server is
unreachable), so the tunnel counts as up only when the log says
"Initialization Sequence Completed". The wait is bounded, and a failure
quotes the end of OpenVPN's own log.
"""

import os
import shutil
import subprocess
import time

from deployer.errors import StepFailed

READY = "Initialization Sequence Completed"
# A deploy killed with SIGKILL (TeamCity's last word) runs no teardown: the
# kernel then sends OpenVPN SIGTERM, and it takes its routes down. Set by
# setpriv (util-linux) just before it execs OpenVPN, with no preexec_fn,
# which is unsafe with threads. The signal comes when the thread that
# started OpenVPN ends: the vpn step runs in the main thread.
_DIES_WITH_US = ("setpriv", "--pdeathsig", "TERM", "--") if shutil.which("setpriv") else ()
_POLL = 0.1
_STOP_TIMEOUT = 10.0


class OpenVpnTunnel:
    def __init__(self, config: str, workdir: str, timeout: float):
        self.config = config
        self.log = os.path.join(workdir, "openvpn.log")
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None

    def open(self) -> None:
        if not shutil.which("openvpn"):
            raise StepFailed("openvpn is not installed (apt-get install openvpn)")
        with open(self.log, "wb") as log:
            # Options errors go to stderr before any --log would take over:
            # both streams go to one file, which is all we quote.
            self.proc = subprocess.Popen(
                [*_DIES_WITH_US, "openvpn", "--config", self.config], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if READY in self._log_text():
                return
            code = self.proc.poll()
            if code is not None:
                raise StepFailed(f"openvpn exited (code {code}) before the tunnel came up{self._tail()}")
            time.sleep(_POLL)
        raise StepFailed(f"VPN not up after {self.timeout:g}s (no {READY!r} in its log){self._tail()}")

    def close(self) -> None:
        """Stop OpenVPN and wait for it, so its routes are gone when we return."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _log_text(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _tail(self, lines: int = 15) -> str:
        tail = self._log_text().splitlines()[-lines:]
        return ("\n  openvpn log (last lines):\n    " + "\n    ".join(tail)) if tail else ""
