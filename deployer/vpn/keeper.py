"""The keeper: the small process that runs OpenVPN for every deploy that
uses the tunnel, starts it again when a start fails, keeps it up a while
after the last run (the linger), and stops it. Started isolated (python
-I, from /), so that nothing in the config's folder is imported."""

import fcntl
import os
import signal
import stat
import subprocess
import sys
import time

import deployer
from deployer.vpn.identity import udp_only
from deployer.vpn.state import (
    DIES_WITH_US,
    KEEPER_POLL,
    LOG_LIMIT,
    RESTARTING,
    STOP_TIMEOUT,
    KeeperState,
    open_file,
    read,
    read_linger,
    recorded,
    up,
    write,
)

_KEEPER_BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
                "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")
# An OpenVPN that exits this soon after its start refused its config or a
# file it names: twice in a row, and it is not started again (it would
# fail the same way until the deploy's timeout).
QUICK_EXIT = 1.0
RESTART_PAUSE = 1.0


def keeper_argv(config: str, base: str, attempt: float) -> list[str]:
    """`python -m deployer.vpn keep CONFIG BASE ATTEMPT`, isolated; its cmdline
    holds "deployer.vpn" and BASE as words of their own, which keeper_state
    looks for."""
    return [sys.executable, "-I", "-c", _KEEPER_BOOT, _package_parent(), "deployer.vpn", "keep", config, base,
            f"{attempt:g}"]


def _package_parent() -> str:
    """The folder that holds the deployer package this process runs: trusted,
    since its code already runs here."""
    return os.path.dirname(os.path.dirname(os.path.abspath(deployer.__file__)))


def keep(config: str, base: str, attempt: float) -> int:
    """The keeper: OpenVPN up for as long as a deploy holds the users lock,
    and `linger` seconds more (see Keeper). A start that has not come up
    within `attempt` seconds is stopped and started again."""
    if os.fork() > 0:
        os._exit(0)  # the deploy that started us waits only for this
    os.setsid()
    keeper = Keeper(config, base, attempt)
    signal.signal(signal.SIGTERM, lambda *_: keeper.stopping.append(1))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        keeper.run()
    finally:
        keeper.stop()
    return 0


class Keeper:
    """OpenVPN's starts, one at a time (the one before is gone before the
    next begins), for as long as somebody needs the tunnel. OpenVPN reads its
    files from the config's folder (--cd, before --config): relative file
    names in it (an auth-user-pass file, a cert) are the folder's, as with
    systemd's openvpn units; we ourselves run in /."""

    def __init__(self, config: str, base: str, attempt: float):
        self.config, self.base, self.attempt = config, base, attempt
        self.stopping: list[int] = []
        self.users = open_file(f"{base}.users")
        self.log = _open_log(f"{base}.log")
        self.proc: subprocess.Popen | None = None
        self.starts, self.started, self.offset, self.came_up = 0, 0.0, 0, False
        self.quick_exits = 0  # starts in a row that exited within QUICK_EXIT
        self.idle_since: float | None = None
        self.idle_offset = 0

    def run(self) -> None:
        self.start()
        while not self.stopping:
            text = read(f"{self.base}.log", self.offset)
            if self.in_use():
                self.idle_since = None
                if not self.tend(text):
                    return
            elif self.closing(text):
                return  # holding the users lock until we are gone, so that no deploy joins
            else:
                fcntl.flock(self.users, fcntl.LOCK_UN)  # lingering: a next run may join
            time.sleep(KEEPER_POLL)

    def start(self) -> None:
        self.starts += 1
        self.say(f"starting openvpn (start {self.starts} of this keeper)")
        self.offset = os.lseek(self.log, 0, os.SEEK_END)
        self.proc = subprocess.Popen(_openvpn_argv(self.config), stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.started, self.came_up = time.monotonic(), False
        write(f"{self.base}.state", KeeperState(os.getpid(), self.proc.pid, self.starts, self.offset).line())
        try:  # watched from the start: whether it exits at once does not depend on when we look
            self.proc.wait(QUICK_EXIT)
            self.quick_exits += 1
        except subprocess.TimeoutExpired:
            self.quick_exits = 0

    def in_use(self) -> bool:
        """Whether a run holds the users lock; if none does, we hold it, exclusively."""
        try:
            fcntl.flock(self.users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True

    def closing(self, text: str) -> bool:
        """Nobody uses the tunnel: whether to close it now. At once if it is
        not up (nobody waits for it) or the newest run said linger 0; else
        once it has lingered that long, or if OpenVPN restarted meanwhile (a
        lingering tunnel is not brought back: on a point-to-point server it
        would take the place of another machine's client)."""
        linger = read_linger(self.base)
        if self.proc is None or self.proc.poll() is not None or not up(text) or linger <= 0:
            return True
        if self.idle_since is None:
            self.idle_since, self.idle_offset = time.monotonic(), os.lseek(self.log, 0, os.SEEK_END)
            self.say(f"no run uses the tunnel: it stays up {linger:g}s for a next one")
            return False
        return (time.monotonic() - self.idle_since >= linger
                or RESTARTING in read(f"{self.base}.log", self.idle_offset))

    def tend(self, text: str) -> bool:
        """Somebody needs the tunnel: start OpenVPN again if it exited, or if
        this start has not come up in time. False: give up."""
        code = self.proc.poll() if self.proc else None
        if code is not None:
            return self.after_exit(code)
        if not self.came_up:
            self.came_up = up(text)
            if not self.came_up and time.monotonic() - self.started > self.attempt:
                self.say(f"openvpn not up {self.attempt:g}s after its start: stopped, to start it again")
                self.stop_openvpn()
                self.start()
        return True

    def after_exit(self, code: int) -> bool:
        self.say(f"openvpn exited (code {code})")  # the deploy's error quotes this line's code
        if self.quick_exits >= 2:
            self.say(f"it exited twice within {QUICK_EXIT:g}s of its start: not started again")
            return False
        time.sleep(RESTART_PAUSE)
        if self.stopping:
            return False
        self.start()
        return True

    def stop_openvpn(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
            self.say(f"openvpn stopped (code {self.proc.returncode})")

    def stop(self) -> None:
        self.stop_openvpn()
        state = recorded(self.base)
        if state is not None and state.keeper == os.getpid():
            os.unlink(f"{self.base}.state")

    def say(self, text: str) -> None:
        """A line of ours in OpenVPN's log, in its shape, so one log tells all."""
        os.write(self.log, f"{time.strftime('%Y-%m-%d %H:%M:%S')} deployer: {text}\n".encode())


def _open_log(path: str) -> int:
    """The tunnel's log, appended to: the lines of a failed start stay for
    the person who looks after the next run succeeded. Past LOG_LIMIT it is
    moved to .log.1 first (one older generation is kept)."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_size > LOG_LIMIT:
            os.replace(path, f"{path}.1")
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _openvpn_argv(config: str) -> list[str]:
    """OpenVPN on `config`, told to say goodbye to a UDP server when it stops
    (--explicit-exit-notify): a point-to-point server then frees its one
    peer at once, where it would otherwise hold our gone session until its
    own timeout and ignore the next run's client. Given before --config, so
    the config's own setting wins; only when every server of the config is
    UDP (OpenVPN before 2.5 refuses it with TCP; 2.6 ignores it)."""
    notify = ("--explicit-exit-notify", "1") if udp_only(config) else ()
    return [*DIES_WITH_US, "openvpn", *notify, "--cd", os.path.dirname(config), "--config", config]
