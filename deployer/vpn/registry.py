"""Where this user's tunnels keep their state: a folder nobody else can
take first or change (see the package's docstring)."""

import os
import pwd
import stat
from collections.abc import Mapping

from deployer.errors import StepFailed


def registry_dir(*, uid: int | None = None, environ: Mapping[str, str] | None = None,
                 run_writable: bool | None = None) -> str:
    """This user's folder for the tunnels' state (see the module's docstring);
    the keywords stand in for this process's, in tests."""
    uid = os.getuid() if uid is None else uid
    env = os.environ if environ is None else environ
    if os.access("/run", os.W_OK) if run_writable is None else run_writable:
        return f"/run/deployer-{uid}"
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and os.path.isdir(runtime) and not _not_only_ours(runtime, uid):
        return os.path.join(runtime, "deployer")
    # Never a name in a shared folder such as /tmp/deployer-UID: another
    # user who made it first would make every VPN deploy of ours fail.
    return os.path.join(_state_home(uid, env), "deployer")


def elsewhere(*, uid: int | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The folders registry_dir gives this user in another environment, that
    are there and are this user's alone: a CI agent run as a service (no
    XDG_RUNTIME_DIR) keeps its state in ~/.local/state/deployer, the same
    user's SSH login in /run/user/UID/deployer. Never made here."""
    uid = os.getuid() if uid is None else uid
    env = os.environ if environ is None else environ
    home = env.get("HOME") or _passwd_home(uid)
    state = env.get("XDG_STATE_HOME", "")
    found = []
    for folder in (f"/run/deployer-{uid}", os.path.join(env.get("XDG_RUNTIME_DIR", ""), "deployer"),
                   f"/run/user/{uid}/deployer", os.path.join(state, "deployer"),
                   os.path.join(home, ".local", "state", "deployer")):
        if (os.path.isabs(folder) and os.path.isdir(folder) and not os.path.islink(folder)
                and not _not_only_ours(folder, uid) and os.path.realpath(folder) not in found):
            found.append(os.path.realpath(folder))
    return found


def _state_home(uid: int, env: Mapping[str, str]) -> str:
    """$XDG_STATE_HOME, else ~/.local/state (made if need be): refused unless
    nobody but this user (and root) can change it or a folder it is in."""
    home = env.get("HOME") or _passwd_home(uid)
    state = env.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # a relative one is to be ignored (the XDG spec)
        if not os.path.isabs(home) or not os.path.isdir(home) or os.stat(home).st_uid != uid:
            raise StepFailed(f"no folder of this user's own for deployer's VPN state: /run is not writable,"
                             f" XDG_RUNTIME_DIR is not set (or not this user's alone), and the home folder"
                             f" {home or '(none)'} is not this user's; set XDG_RUNTIME_DIR or XDG_STATE_HOME"
                             f" to a folder of its own")
        state = os.path.join(home, ".local", "state")
    try:
        os.makedirs(state, 0o700, exist_ok=True)
    except OSError as e:
        raise StepFailed(f"cannot make {state} for deployer's VPN state: {e.strerror}") from None
    why = _not_only_ours(state, uid)
    if why:
        raise StepFailed(f"{state} will not hold deployer's VPN state: {why}; set XDG_STATE_HOME or"
                         f" XDG_RUNTIME_DIR to a folder of this user's own")
    return os.path.realpath(state)


def _passwd_home(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return ""


def _not_only_ours(path: str, uid: int) -> str:
    """Why another user could replace `path` or what it holds, or "": each
    folder from / to it must be root's or uid's, writable by its owner alone
    or sticky (as /tmp is, where nobody may move another's name), and `path`
    itself uid's and writable by uid alone."""
    parts = os.path.realpath(path).split(os.sep)[1:]
    for i in range(len(parts) + 1):
        folder = os.sep + os.sep.join(parts[:i])
        try:
            st = os.stat(folder)
        except OSError as e:
            return f"{folder}: {e.strerror}"
        last = i == len(parts)
        if not stat.S_ISDIR(st.st_mode):
            return f"{folder} is not a folder"
        if st.st_uid not in ((uid,) if last else (0, uid)):
            return f"{folder} belongs to user {st.st_uid}"
        if st.st_mode & 0o022 and (last or not st.st_mode & stat.S_ISVTX):
            return f"others may write in {folder}"
    return ""


def private_dir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise StepFailed(f"{path} is not a directory of this user's only (mode 0700); deployer keeps its VPN"
                         " state there and will not use it: remove it")
