"""The keeper: the small process that runs OpenVPN for every deploy that
uses the tunnel, and stops it once none does. Started isolated (python
-I, from /), so that nothing in the config's folder is imported."""

import fcntl
import os
import signal
import subprocess
import sys
import time

import deployer
from deployer.vpn.state import DIES_WITH_US, KEEPER_POLL, STOP_TIMEOUT, open_file, read

_KEEPER_BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
                "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def keeper_argv(config: str, base: str) -> list[str]:
    """`python -m deployer.vpn keep CONFIG BASE`, isolated; its cmdline holds
    "deployer.vpn" and BASE as words of their own, which keeper_pids looks for."""
    return [sys.executable, "-I", "-c", _KEEPER_BOOT, _package_parent(), "deployer.vpn", "keep", config, base]


def _package_parent() -> str:
    """The folder that holds the deployer package this process runs: trusted,
    since its code already runs here."""
    return os.path.dirname(os.path.dirname(os.path.abspath(deployer.__file__)))


def keep(config: str, base: str) -> int:
    """The keeper: OpenVPN up for as long as a deploy holds the users lock.
    OpenVPN reads its files from the config's folder (--cd, before --config):
    relative file names in it (an auth-user-pass file, a cert) are the
    folder's, as with systemd's openvpn units; we ourselves run in /."""
    if os.fork() > 0:
        os._exit(0)  # the deploy that started us waits only for this
    os.setsid()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    users = open_file(f"{base}.users")
    log = os.open(f"{base}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    proc = subprocess.Popen(_openvpn_argv(config), stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)
    state = f"{base}.state"
    with open(f"{state}.new", "w") as f:
        f.write(f"{os.getpid()} {proc.pid}\n")
    os.replace(f"{state}.new", state)
    try:
        while not stopping and proc.poll() is None:
            try:
                # Nobody uses the tunnel any more: held until we are gone,
                # so that no deploy joins a tunnel that is closing.
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(KEEPER_POLL)
    finally:
        if proc.poll() is not None and not stopping:
            os.write(log, f"deployer: openvpn exited (code {proc.returncode})\n".encode())
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if read(state).split()[:1] == [str(os.getpid())]:
            os.unlink(state)
    return 0


def _openvpn_argv(config: str) -> list[str]:
    return [*DIES_WITH_US, "openvpn", "--cd", os.path.dirname(config), "--config", config]
