"""A deploy's side of the tunnel: join it, or start its keeper; wait until
it is up; leave it, and stop it if this deploy was its last user and wants
no linger."""

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
    STOP_TIMEOUT,
    Locked,
    any_keeper,
    flock,
    keeper_pids,
    keeper_state,
    open_file,
    read,
    stop_keeper,
    stop_orphan,
    tunnel_up,
    up,
    write_linger,
)

# A start of OpenVPN that has not come up within a third of the timeout (at
# least this) is stopped and started again: a server that still holds our
# last session (point-to-point, one peer) may ignore that start for good.
ATTEMPT_MIN = 10.0
# What an error quotes of OpenVPN's log: its last lines, each cut to a width.
TAIL_LINES, TAIL_WIDTH, TAIL_READ = 15, 300, 64 * 1024


class OpenVpnTunnel:
    def __init__(self, config: str, timeout: float, probe: str = "", registry: str | None = None,
                 linger: float = 0.0):
        self.config = os.path.realpath(config)
        self.timeout = timeout
        self.probe = probe  # a host's address: is a tunnel to it already up?
        self.linger = linger  # seconds the tunnel stays up after its last run, if this run is it
        self.dir = os.path.abspath(registry or registry_dir())  # the keeper runs in /
        self.base = os.path.join(self.dir, f"tunnel-{tunnel_key(self.config)}")
        self.log = f"{self.base}.log"
        self.users: int | None = None  # our fd holding the shared lock, while we use the tunnel
        self.shared = False  # whether we joined a keeper another run started
        self.foreign = False  # a tunnel that is not ours was up: used, never stopped
        self.came_up = False

    def open(self) -> None:
        if not shutil.which("openvpn"):
            raise StepFailed("openvpn is not installed (apt-get install openvpn)")
        private_dir(self.dir)
        self.users = open_file(f"{self.base}.users")
        deadline = time.monotonic() + self.timeout + LOCK_TIMEOUT
        # A keeper shutting down holds it exclusively until OpenVPN is gone.
        flock(self.users, fcntl.LOCK_SH, deadline, "the VPN tunnel of the run before to close")
        # One deploy at a time looks for the keeper and starts one: two runs
        # that start together never start two clients for one config.
        with Locked(f"{self.base}.setup", deadline):
            running = keeper_state(self.base) is not None
            if not running and tunnel_up(self.probe) and not any_keeper(self.dir):
                self.foreign = True
                return
            write_linger(self.base, self.linger)  # the newest run's word counts, also if it is killed
            if running:
                self.shared = True
            else:
                stop_orphan(self.base, self.config)
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
        attempt = max(ATTEMPT_MIN, self.timeout / 3)
        with open(os.devnull, "rb") as null:
            starter = subprocess.Popen(keeper_argv(self.config, self.base, attempt), stdin=null, stdout=null,
                                       stderr=null, start_new_session=True, env=env, cwd="/")
        starter.wait(10)
        deadline = time.monotonic() + 10
        while keeper_state(self.base) is None:
            if time.monotonic() > deadline:
                raise StepFailed(f"the VPN keeper did not start (python -I ... deployer.vpn keep){self._tail()}")
            time.sleep(POLL)

    def _wait_ready(self, deadline: float) -> None:
        starts = 0
        while time.monotonic() < deadline:
            state = keeper_state(self.base)
            if state is None:
                raise StepFailed(f"openvpn exited{self._exit_code()} before the tunnel came up{self._tail()}")
            starts = state.starts
            if up(read(self.log, state.offset)):
                self.came_up = True
                return
            time.sleep(POLL)
        tries = f"openvpn started {starts} times, none came up" if starts > 1 else f"no {READY!r} in its log"
        raise StepFailed(f"VPN not up after {self.timeout:g}s ({tries}){self._tail()}")

    def said(self) -> str:
        """What the run's output says of the tunnel, once open."""
        if self.foreign:
            return f"a tunnel to {self.probe} is already up, not deployer's: used, and left up"
        how = "tunnel up (already: another run on this machine started it)" if self.shared else "tunnel up"
        if self.linger <= 0:
            return f"{how}; closed when the last run that uses it ends"
        return (f"{how}; it stays up {self.linger:g}s after the last run that uses it ends, for a next run"
                " (vpn/linger)")

    @property
    def openvpn_pid(self) -> int | None:
        state = keeper_pids(self.base)
        return state[1] if state and state[1] else None

    def close(self) -> None:
        """Stop using the tunnel. With a linger (and a tunnel that came up)
        the keeper closes it once no run has used it that long; else the
        last run that used it stops it, and waits, so its routes are gone
        when this returns."""
        users, self.users = self.users, None
        if users is None:
            return
        try:
            if not self.foreign:
                write_linger(self.base, self.linger if self.came_up else 0.0)
        except OSError:
            pass  # the keeper goes by the word of the run before
        finally:
            os.close(users)  # our shared lock goes with it
        if self.foreign or (self.linger > 0 and self.came_up):
            return
        last = open_file(f"{self.base}.users")
        try:
            if self._last(last):
                state = keeper_pids(self.base)
                if state is not None:
                    stop_keeper(state)
        finally:
            os.close(last)

    def _last(self, fd: int) -> bool:
        """Whether this run was the tunnel's last user: True once `fd` holds
        the users lock exclusively. While the keeper holds it (it looks
        whether anyone still uses the tunnel, or it is closing it: it read
        the linger of 0 we wrote), wait, bounded: so that the routes are
        gone when close() returns whoever stops OpenVPN."""
        deadline = time.monotonic() + STOP_TIMEOUT + LOCK_TIMEOUT
        while time.monotonic() < deadline:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return False  # another run still uses it
            except BlockingIOError:
                time.sleep(POLL)
        return False

    def _exit_code(self) -> str:
        found = re.findall(r" deployer: openvpn exited \(code (-?[0-9]+)\)$", read(self.log, limit=TAIL_READ),
                           re.MULTILINE)
        return f" (code {found[-1]})" if found else ""

    def _tail(self) -> str:
        """The end of OpenVPN's log for an error: bounded, and printable (the
        server's words are in it), with where the whole log is kept."""
        # Imported here: the keeper, which imports this package, needs none of it.
        from deployer.output.text import printable_lines, shown

        lines = printable_lines(read(self.log, limit=TAIL_READ)).splitlines()[-TAIL_LINES:]
        if not lines:
            return ""
        cut = [line if len(line) <= TAIL_WIDTH else line[:TAIL_WIDTH] + "..." for line in lines]
        return (f"\n  openvpn log (last lines; all of it in {shown(self.log)}):\n    " + "\n    ".join(cut))


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
