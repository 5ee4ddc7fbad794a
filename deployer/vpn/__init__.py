"""The OpenVPN tunnel of a deploy, shared by every deploy on this machine
whose VPN config connects with the same certificate to the same servers
(tunnel_key: not the file's bytes, which two checkouts' copies need not
share).

Two build agents on one machine deploying two instances through one VPN
config must not each start a client: a second OpenVPN client with the same
certificate cuts off the first. So the first deploy starts a keeper (this
module's `keep`, in an isolated Python that imports nothing from the
config's folder), a small process of its own that runs OpenVPN, and every
deploy that uses the tunnel holds a shared flock on the tunnel's `users`
file for as long as it does. The keeper looks every half second: once
nobody holds that lock (the last deploy ended, or was killed: the kernel
releases a dead process's locks), it stops OpenVPN and exits. The deploy
that finds itself last stops the keeper at once and waits for OpenVPN to be
gone, so its routes are down when the deploy returns. OpenVPN dies with its
keeper (`setpriv --pdeathsig`, from util-linux).

The tunnel counts as up only when OpenVPN's log says "Initialization
Sequence Completed" (its exit code proves nothing), within the config's
timeout; a failure quotes the end of the log. A tunnel to the hosts that is
already up and is not ours (a VPN the machine keeps) is used as it is and
left up.

Relative file names in the config are its folder's (OpenVPN is given
--cd FOLDER).
The registry (a directory per user: /run/deployer-UID, else
$XDG_RUNTIME_DIR/deployer, else $XDG_STATE_HOME/deployer or
~/.local/state/deployer, never a name in a shared folder such as /tmp that
another user could take first; mode 0700, which must be ours and not a
link) holds per tunnel: `.users`, `.setup` (a lock while a
deploy starts or stops the keeper), `.state` (the keeper's and OpenVPN's
pids) and `.log` (OpenVPN's output).
"""

import base64
import fcntl
import hashlib
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Mapping

import deployer
from deployer.errors import StepFailed

READY = "Initialization Sequence Completed"
# OpenVPN dies with its keeper, however the keeper ends. Set by setpriv just
# before it execs OpenVPN, with no preexec_fn (unsafe with threads).
_DIES_WITH_US = ("setpriv", "--pdeathsig", "TERM", "--") if shutil.which("setpriv") else ()
_POLL = 0.1
_KEEPER_POLL = 0.5
_STOP_TIMEOUT = 10.0
_LOCK_TIMEOUT = 30.0  # for the setup lock, and for a keeper that is shutting down


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
        self.users = _open(f"{self.base}.users")
        deadline = time.monotonic() + self.timeout + _LOCK_TIMEOUT
        # A keeper shutting down holds it exclusively until OpenVPN is gone.
        _flock(self.users, fcntl.LOCK_SH, deadline, "the VPN tunnel of the run before to close")
        with _Locked(f"{self.base}.setup", deadline):
            state = _state(self.base)
            if state is not None:
                self.shared = True
            elif _tunnel_up(self.probe) and not _any_keeper(self.dir):
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
        # keeper finds our package by _keeper_argv, not the build's word.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
        with open(os.devnull, "rb") as null:
            starter = subprocess.Popen(_keeper_argv(self.config, self.base), stdin=null, stdout=null,
                                       stderr=null, start_new_session=True, env=env, cwd="/")
        starter.wait(10)
        deadline = time.monotonic() + 10
        while _state(self.base) is None:
            if time.monotonic() > deadline:
                raise StepFailed(f"the VPN keeper did not start (python -I ... deployer.vpn keep){self._tail()}")
            time.sleep(_POLL)

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if READY in _read(self.log):
                return
            if _state(self.base) is None:
                m = re.search(r"^deployer: openvpn exited \(code (-?[0-9]+)\)$", _read(self.log), re.MULTILINE)
                code = f" (code {m.group(1)})" if m else ""
                raise StepFailed(f"openvpn exited{code} before the tunnel came up{self._tail()}")
            time.sleep(_POLL)
        raise StepFailed(f"VPN not up after {self.timeout:g}s (no {READY!r} in its log){self._tail()}")

    @property
    def openvpn_pid(self) -> int | None:
        state = _state(self.base)
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
        last = _open(f"{self.base}.users")
        try:
            try:
                fcntl.flock(last, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another deploy still uses it
            state = _state(self.base)
            if state is not None:
                _stop(state)
        finally:
            os.close(last)

    def _tail(self, lines: int = 15) -> str:
        tail = _read(self.log).splitlines()[-lines:]
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

_FILE_LIMIT = 1024 * 1024
# The first of these the config has is the client's identity (the last
# `cert` of a config counts, as in OpenVPN).
_IDENTITY = ("cert", "pkcs12", "key")
_SPACE = re.compile(r"[ \t\v\f\r]+")


def tunnel_key(config: str) -> str:
    """16 hex digits: equal for two configs that make OpenVPN connect with the
    same certificate to the same servers, different for different certificates."""
    options = list(_options(_read_bounded(config, "the VPN config").decode("utf-8", "surrogateescape")))
    folder = _folder(options, os.path.dirname(config))
    last = {words[0]: (words, inline) for words, inline in options if len(words) > 1}
    identity = next((_identity(last[name], folder) for name in _IDENTITY if name in last), None)
    if identity is not None:
        material = {"remotes": _remotes(options), "identity": identity}
    else:
        userpass = last.get("auth-user-pass")
        material = {"options": options, "auth-user-pass": userpass and _file_identity(userpass, folder)}
    # A config it includes may hold either: its bytes count whole.
    material["config"] = [_file_identity(option, folder) for option in options if option[0][0] == "config"]
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _read_bounded(path: str, what: str) -> bytes:
    """A user's file, at most _FILE_LIMIT bytes: a bigger one, or one that is
    not a regular file (a FIFO would block), fails, naming it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StepFailed(f"{what} {path} is not a regular file")
        chunks, size = [], 0
        while size <= _FILE_LIMIT and (chunk := os.read(fd, _FILE_LIMIT + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > _FILE_LIMIT:
        raise StepFailed(f"{what} {path} is over 1 MiB: deployer reads no more of it (an OpenVPN config and"
                         " its certificates take a few KiB)")
    return b"".join(chunks)


def _options(text: str):
    """(words, inline) per option, as OpenVPN reads a config: comments and
    blank lines are none, `--name` is `name`, and an inline block
    `<name>`...`</name>` is the option `name` with its content (lines
    stripped, blank ones dropped) as its one argument."""
    lines = iter(text.split("\n"))
    for line in lines:
        words = _words(line)
        if not words:
            continue
        if words[0].startswith("--"):
            words[0] = words[0][2:]
        if len(words) == 1 and len(words[0]) > 2 and words[0][0] == "<" and words[0][-1] == ">":
            name = words[0][1:-1]
            close, body = f"</{name}>", []
            for inner in lines:
                if inner.lstrip().startswith(close):
                    break
                if inner.strip():
                    body.append(inner.strip())
            yield (name, "\n".join(body)), True
        else:
            yield tuple(words), False


def _words(line: str) -> list[str]:
    """A line's words as OpenVPN splits them: a word that starts with # or ;
    starts a comment; "double" and 'single' quotes and backslashes as in its
    parse_line. One pass over the line."""
    if '"' not in line and "'" not in line and "\\" not in line:
        words = []
        for w in _SPACE.split(line):
            if w[:1] in ("#", ";"):
                break
            if w:
                words.append(w)
        return words
    words, word, quote, escaped, started = [], [], "", False, False
    for c in line:
        if escaped or c == "\\" and quote != "'":
            if escaped:
                word.append(c)
                started = True
            escaped = not escaped
        elif quote:
            if c == quote:
                words.append("".join(word))
                word, quote, started = [], "", False
            else:
                word.append(c)
        elif c in " \t\v\f\r":
            if started:
                words.append("".join(word))
                word, started = [], False
        elif not started and c in "#;":
            break
        elif not started and c in "\"'":
            quote = c
        else:
            word.append(c)
            started = True
    if started or quote:
        words.append("".join(word))
    return words


def _folder(options: list, folder: str) -> str:
    """Where OpenVPN opens the config's relative names: its folder (--cd),
    then wherever a `cd` option in it goes."""
    for words, _ in options:
        if words[0] == "cd" and len(words) > 1:
            folder = os.path.join(folder, words[1])
    return folder


def _remotes(options: list) -> list[tuple[str, str, str]]:
    """Every server the config may connect to, as (host, port, udp|tcp),
    sorted: the order says which is tried first, not which they are."""
    out = set()

    def add(block: list) -> None:
        found = [w for w, inline in block if not inline and w[0] == "remote" and len(w) > 1]
        port = _last(block, ("port", "rport"), default_port)
        proto = _last(block, ("proto",), default_proto)
        for w in found:
            out.add((w[1].lower(), w[2] if len(w) > 2 else port, _transport(w[3] if len(w) > 3 else proto)))

    default_port = _last(options, ("port", "rport"), "1194")
    default_proto = _last(options, ("proto",), "udp")
    add(options)
    for words, inline in options:
        if inline and words[0] == "connection":
            add(list(_options(words[1])))
    return sorted(out)


def _last(options: list, names: tuple[str, ...], default: str) -> str:
    value = default
    for words, inline in options:
        if not inline and words[0] in names and len(words) > 1:
            value = words[1]
    return value


def _transport(proto: str) -> str:
    """udp4, udp6 and udp are one server's UDP; tcp-client, tcp4... its TCP."""
    proto = proto.lower()
    return proto[:3] if proto.startswith(("udp", "tcp")) else proto


def _identity(option: tuple, folder: str) -> str:
    """The client's certificate (or PKCS#12 bundle, or key) as one digest,
    written inline or in a file alike: the server knows a client by it."""
    (name, value), inline = option[0][:2], option[1]
    if inline:
        data = _base64(value) if name == "pkcs12" else value.encode("utf-8", "surrogateescape")
    else:
        path = os.path.join(folder, value)
        try:
            data = _read_bounded(path, f"the VPN config's {name}")
        except OSError:
            return f"unreadable {path}"  # OpenVPN will say why it cannot start
    if name == "cert":
        data = _pem_body(data.decode("ascii", "replace"), "CERTIFICATE")
    elif name == "key":
        data = b"".join(data.split())
    return hashlib.sha256(data).hexdigest()


def _pem_body(text: str, label: str) -> bytes:
    """The first PEM block's bytes (a certificate's DER, the client's own
    before any chain), whatever text or line breaks surround it."""
    begin = text.find(f"-----BEGIN {label}")
    start = text.find("-----", begin + 11) if begin >= 0 else -1
    end = text.find("-----END", start + 5) if start >= 0 else -1
    if end < 0:
        return b"".join(text.encode("ascii", "replace").split())
    return _base64(text[start + 5:end])


def _base64(text: str) -> bytes:
    """Decoded, line breaks and all; the text itself if it is not base64."""
    squeezed = "".join(text.split())
    try:
        return base64.b64decode(squeezed, validate=True)
    except ValueError:
        return squeezed.encode("utf-8", "surrogateescape")


def _file_identity(option: tuple, folder: str) -> str:
    """A file a config names, by its bytes; by its name if it cannot be read."""
    words, inline = option
    if inline or len(words) < 2:
        return "inline" if inline else "none"
    path = os.path.join(folder, words[1])
    try:
        return hashlib.sha256(_read_bounded(path, f"the VPN config's {words[0]}")).hexdigest()
    except OSError:
        return f"unreadable {path}"


# The keeper's Python is isolated (-I: no PYTHONPATH, no user site-packages,
# neither the working directory nor a script's on sys.path) and runs in /.
# It runs as whoever deploys, root on a build agent, and `-m` in the config's
# folder imported whatever a checkout put there (a deployer/vpn.py beside
# client.ovpn). Our own package comes first on sys.path instead, so the
# keeper is this deployer also when the interpreter has none installed; its
# folder is an argument, never spliced into the code.
_KEEPER_BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
                "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def _keeper_argv(config: str, base: str) -> list[str]:
    """`python -m deployer.vpn keep CONFIG BASE`, isolated; its cmdline holds
    "deployer.vpn" and BASE as words of their own, which _state looks for."""
    return [sys.executable, "-I", "-c", _KEEPER_BOOT, _package_parent(), "deployer.vpn", "keep", config, base]


def _package_parent() -> str:
    """The folder that holds the deployer package this process runs: trusted,
    since its code already runs here."""
    return os.path.dirname(os.path.dirname(os.path.abspath(deployer.__file__)))


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


def _open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _flock(fd: int, how: int, deadline: float, waiting_for: str) -> None:
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise StepFailed(f"gave up waiting for {waiting_for}") from None
            time.sleep(_POLL)


class _Locked:
    def __init__(self, path: str, deadline: float):
        self.path, self.deadline = path, deadline

    def __enter__(self):
        self.fd = _open(self.path)
        try:
            _flock(self.fd, fcntl.LOCK_EX, self.deadline, "another deploy starting the VPN tunnel")
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _state(base: str) -> tuple[int, int] | None:
    """The keeper's and OpenVPN's pids, if that keeper is alive."""
    try:
        keeper, openvpn = (int(w) for w in _read(f"{base}.state").split())
        with open(f"/proc/{keeper}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (ValueError, OSError):
        return None
    # The pid could be another process's by now: it must be this keeper.
    if b"deployer.vpn" not in argv or base.encode() not in argv:
        return None
    return keeper, openvpn


def _any_keeper(registry: str) -> bool:
    """Whether a keeper of ours runs for any config (its tunnel is not foreign)."""
    try:
        names = os.listdir(registry)
    except OSError:
        return False
    return any(_state(os.path.join(registry, n[:-len(".state")])) for n in names if n.endswith(".state"))


def _tunnel_up(address: str) -> bool:
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


def _stop(state: tuple[int, int]) -> None:
    """Stop the keeper (it stops OpenVPN) and wait until OpenVPN is gone."""
    keeper, openvpn = state
    try:
        os.kill(keeper, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + _STOP_TIMEOUT + 2
    while _alive(openvpn) or _alive(keeper):
        if time.monotonic() > deadline:
            for pid in (openvpn, keeper):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        time.sleep(_POLL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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
    users = _open(f"{base}.users")
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
                time.sleep(_KEEPER_POLL)
    finally:
        if proc.poll() is not None and not stopping:
            os.write(log, f"deployer: openvpn exited (code {proc.returncode})\n".encode())
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if _read(state).split()[:1] == [str(os.getpid())]:
            os.unlink(state)
    return 0


def _openvpn_argv(config: str) -> list[str]:
    return [*_DIES_WITH_US, "openvpn", "--cd", os.path.dirname(config), "--config", config]

