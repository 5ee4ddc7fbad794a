"""A deploy's side of the tunnel: join it, or start its keeper; wait until
it is up; leave it, and stop it if this deploy was its last user."""

import fcntl
import os
import re
import shutil
import subprocess
import time

from deployer.errors import StepFailed
from deployer.vpn.identity import tunnel_key
from deployer.vpn.keeper import keeper_argv
from deployer.vpn.registry import private_dir, registry_dir
from deployer.vpn.state import (
    LOCK_TIMEOUT,
    POLL,
    READY,
    Locked,
    any_keeper,
    flock,
    keeper_pids,
    open_file,
    read,
    stop_keeper,
    tunnel_up,
)


class OpenVpnTunnel:
    def __init__(self, config: str, timeout: float, probe: str = "", registry: str | None = None):
        self.config = os.path.realpath(config)
        self.timeout = timeout
        self.probe = probe  # a host's address: is a tunnel to it already up?
        self.dir = os.path.abspath(registry or registry_dir())  # the keeper runs in /
        self.base = os.path.join(self.dir, f"tunnel-{tunnel_key(self.config)}")
        self.log = f"{self.base}.log"
        self.users: int | None = None  # our fd holding the shared lock, while we use the tunnel
        self.shared = False  # whether we joined a keeper another deploy started
        self.foreign = False  # a tunnel that is not ours was up: used, never stopped

    def open(self) -> None:
        if not shutil.which("openvpn"):
            raise StepFailed("openvpn is not installed (apt-get install openvpn)")
        private_dir(self.dir)
        self.users = open_file(f"{self.base}.users")
        deadline = time.monotonic() + self.timeout + LOCK_TIMEOUT
        # A keeper shutting down holds it exclusively until OpenVPN is gone.
        flock(self.users, fcntl.LOCK_SH, deadline, "the VPN tunnel of the run before to close")
        with Locked(f"{self.base}.setup", deadline):
            state = keeper_pids(self.base)
            if state is not None:
                self.shared = True
            elif tunnel_up(self.probe) and not any_keeper(self.dir):
                self.foreign = True
                return
            else:
                self._start_keeper()
            self._wait_ready(time.monotonic() + self.timeout)

    def _start_keeper(self) -> None:
        # It forks again and leaves (see keep): the keeper is nobody's child,
        # in a session of its own, with none of the build's environment, so
        # stopping the build that started it (TeamCity kills the process
        # tree, Jenkins the processes with its BUILD_ID) leaves the tunnel
        # to the other deploys that use it. Ctrl-C in a terminal is for the
        # deploy, which closes its own use of the tunnel. No PYTHONPATH: the
        # keeper finds our package by keeper_argv, not the build's word.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
        with open(os.devnull, "rb") as null:
            starter = subprocess.Popen(keeper_argv(self.config, self.base), stdin=null, stdout=null,
                                       stderr=null, start_new_session=True, env=env, cwd="/")
        starter.wait(10)
        deadline = time.monotonic() + 10
        while keeper_pids(self.base) is None:
            if time.monotonic() > deadline:
                raise StepFailed(f"the VPN keeper did not start (python -I ... deployer.vpn keep){self._tail()}")
            time.sleep(POLL)

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if READY in read(self.log):
                return
            if keeper_pids(self.base) is None:
                m = re.search(r"^deployer: openvpn exited \(code (-?[0-9]+)\)$", read(self.log), re.MULTILINE)
                code = f" (code {m.group(1)})" if m else ""
                raise StepFailed(f"openvpn exited{code} before the tunnel came up{self._tail()}")
            time.sleep(POLL)
        raise StepFailed(f"VPN not up after {self.timeout:g}s (no {READY!r} in its log){self._tail()}")

    @property
    def openvpn_pid(self) -> int | None:
        state = keeper_pids(self.base)
        return state[1] if state else None

    def close(self) -> None:
        """Stop using the tunnel; the last deploy that used it stops it, and
        waits, so its routes are gone when this returns."""
        users, self.users = self.users, None
        if users is None:
            return
        os.close(users)  # our shared lock goes with it
        if self.foreign:
            return
        last = open_file(f"{self.base}.users")
        try:
            try:
                fcntl.flock(last, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another deploy still uses it
            state = keeper_pids(self.base)
            if state is not None:
                stop_keeper(state)
        finally:
            os.close(last)

    def _tail(self, lines: int = 15) -> str:
        tail = read(self.log).splitlines()[-lines:]
        return ("\n  openvpn log (last lines):\n    " + "\n    ".join(tail)) if tail else ""


# -- what a tunnel is shared by ---------------------------------------------------
#
# Not the config's bytes: two build agents' checkouts of one config may differ
# by a comment or a blank line (or name its cert relatively, from two folders),
# and two clients with one certificate are what sharing exists to prevent
# (the server cuts one off). So the key is what OpenVPN connects with: the
# servers (remote: host, port, proto) and the client's certificate; without
# one (auth-user-pass only), the options as OpenVPN reads them, with the
# user-pass file's bytes. The config is a user's file: read bounded, and
# parsed in one pass over its lines.
