"""Which of this machine's runs are alive, by the runner's own state.

A host's lock says which run holds it, and that it ran on this machine; a
host can write anything there, so whether that run is alive is never taken
from it. Each run that takes an instance's lock holds an flock on a file of
its own in the user's registry (vpn.registry_dir: this user's only) for as
long as it lives; the kernel lets go of it when the run ends, SIGKILL
included. A file nobody holds is a run that is gone; no file at all is a run
this machine cannot speak for (another user's, another machine's, or made
up), which is never taken to be gone.
"""

import fcntl
import os
import time

from deployer.config import names
from deployer.errors import StepFailed
from deployer.vpn import private_dir, registry_dir
from deployer.vpn.registry import elsewhere as other_registries

# The file of a killed run is what lets a later run know it is gone: kept a
# while (the registry under /run goes with a reboot anyway), then swept.
KEEP_SECONDS = 30 * 86400


def _path(registry: str, run_id: str) -> str:
    return os.path.join(registry, f"run-{run_id}.lock")


class RunLock:
    """Held by a live run: made under a name of its own, locked, and only then
    renamed to the run's name, so nobody sees it unlocked while the run lives."""

    def __init__(self, run_id: str, registry: str | None = None):
        self.registry = registry or registry_dir()
        self.path = _path(self.registry, names.RUN_ID.fullmatch(run_id)[0])
        self.fd: int | None = None

    def hold(self) -> None:
        try:
            private_dir(self.registry)
            new = f"{self.path}.{os.getpid()}.new"
            fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.rename(new, self.path)
        except OSError as e:
            raise StepFailed(f"cannot record this run in {self.registry}: {e.strerror or e}") from None
        self.fd = fd
        _sweep(self.registry)

    def release(self, forget: bool = True) -> None:
        """Let go; with `forget`, leave no record (else it reads as a run that is gone)."""
        if self.fd is None:
            return
        if forget:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = None


def forget(run_id: str, registry: str | None = None) -> None:
    """What a gone run left has been dealt with on every host: its record
    goes, so that a lock a host later writes in its name is not taken over
    by itself (it then reads as a run this machine cannot speak for)."""
    if not names.RUN_ID.fullmatch(run_id):
        return
    for folder in _folders(registry, None):
        if _alive_in(_path(folder, run_id)) == 0:
            try:
                os.unlink(_path(folder, run_id))
            except OSError:
                pass


def alive(run_id: str, registry: str | None = None, elsewhere: list[str] | None = None) -> int | None:
    """Run `run_id` of this user on this machine: its pid while it lives, 0
    once it is gone, None when this machine has no record of it. Looked for
    in this environment's registry, then in the user's others (`elsewhere`;
    by default vpn's, unless `registry` is given alone): a run that a CI
    agent running as a service recorded is found from the same user's login."""
    if not names.RUN_ID.fullmatch(run_id):
        return None
    for folder in _folders(registry, elsewhere):
        found = _alive_in(_path(folder, run_id))
        if found is not None:
            return found
    return None


def _folders(registry: str | None, elsewhere: list[str] | None) -> list[str]:
    try:
        folders = [registry or registry_dir()]
    except StepFailed:  # no registry of ours in this environment
        folders = []
    if registry is None or elsewhere is not None:
        folders += [f for f in (other_registries() if elsewhere is None else elsewhere) if f not in folders]
    return folders


def _alive_in(path: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 16).strip()
            return int(pid) if pid.isdigit() and int(pid) > 0 else os.getpid()
        return 0
    finally:
        os.close(fd)


def _sweep(registry: str) -> None:
    """Files of runs gone long ago; one still held is never removed."""
    cutoff = time.time() - KEEP_SECONDS
    try:
        entries = [e for e in os.scandir(registry)
                   if e.name.startswith("run-") and e.is_file(follow_symlinks=False)]
    except OSError:
        return
    for e in entries[:1000]:
        try:
            if e.stat(follow_symlinks=False).st_mtime < cutoff and alive(e.name[4:-5], registry) == 0:
                os.unlink(e.path)
        except (OSError, ValueError):
            pass
