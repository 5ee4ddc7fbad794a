"""A host over SSH: a Fabric Connection that checks host keys against the
configured known_hosts (Fabric 3 hard-codes paramiko's AutoAddPolicy and
never loads known_hosts, fabric#1804, fabric#2071, which would trust any
server), commands on bare paramiko channels so that an interrupt can stop
them (each reports its process group's pid first), with a watchdog for a
host that stops answering."""

import base64
import hashlib
import re
import select
import threading
import time

import paramiko
from fabric import Config, Connection

from deployer.config import Host
from deployer.connectors.base import (
    ANSWER_FLOOR,
    ANSWER_TIMEOUT,
    CHUNK,
    GRACE,
    TIMED_OUT,
    WAKE_WAIT,
    Feed,
    Limit,
    Sink,
    Stdin,
    Stopped,
    as_limit,
    timed_out,
)
from deployer.connectors.result import Result, Tail
from deployer.errors import StepFailed
from deployer.quoting import PID_MARKER, reporting_pid
from deployer.remote import hostscripts

ERRORS = (OSError, EOFError, paramiko.SSHException)


def fingerprint(key: paramiko.PKey) -> str:
    """As OpenSSH prints it, so it can be compared with `ssh-keygen -lf`."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, key: paramiko.PKey):
        super().__init__(fingerprint(key))
        self.key = key


class _RejectUnknown(paramiko.RejectPolicy):
    """RejectPolicy, raising a type of its own so no error text is parsed."""

    def missing_host_key(self, client, hostname, key):
        raise UnknownHostKey(key)


# What a host may write on stderr before the pid line (a shell's startup
# files may print something first). Past it, the host is not answering as a
# shell does: the step fails there, rather than hold whatever it sends.
PID_HEAD_LIMIT = 4096
_PID_LINE = re.compile(re.escape(PID_MARKER) + rb"0*([1-9][0-9]{0,9})\n")


class _PidLine:
    """The `deployer-pid:N` line that `reporting_pid` writes first, found in
    stderr as it arrives: at most PID_HEAD_LIMIT bytes are held, and each is
    searched once for the marker and once for the line's end."""

    def __init__(self, host: str):
        self.host = host
        self.head = bytearray()
        self.marker_from = 0  # no marker starts before this
        self.end_from = 0  # no line ends between the marker and this
        self.pid: int | None = None

    def add(self, chunk: bytes) -> bytes:
        """Stderr that arrived before the pid is known: once it is, what came
        beside the pid line, else b"". Fails the step if no pid line comes."""
        take = chunk[:PID_HEAD_LIMIT - len(self.head)]
        self.head += take
        start = self.head.find(PID_MARKER, self.marker_from)
        if start < 0:
            self.marker_from = max(0, len(self.head) - len(PID_MARKER) + 1)
        else:
            self.marker_from = start
            end = self.head.find(b"\n", max(start, self.end_from))
            if end >= 0:
                m = _PID_LINE.fullmatch(self.head, start, end + 1)
                if m is None or int(m[1]) < 2:
                    raise StepFailed(f"{self.host}: the host's pid line is not a process id:"
                                     f" {_printable(self.head[start:end][:80])}; the step is failed there")
                self.pid = int(m[1])
                return bytes(self.head[:start] + self.head[end + 1:]) + chunk[len(take):]
            self.end_from = len(self.head)
        if len(self.head) >= PID_HEAD_LIMIT:
            raise StepFailed(f"{self.host}: the host wrote {PID_HEAD_LIMIT} bytes of stderr and no"
                             f" {PID_MARKER.decode()} line: not a shell deployer can run commands in (a"
                             " ForceCommand?); the step is failed there, and what it may still run there"
                             " cannot be stopped by deployer")
        return b""


def _printable(data: bytes) -> str:
    return "".join(c if c.isprintable() else "?" for c in data.decode(errors="replace"))


class _Watchdog:
    """Past every bound of its own (the command's limit, the stop's grace, the
    answers it waits for), a run that is still stuck in the SSH library is
    ended by closing the connection under it. It follows a limit that moves."""

    def __init__(self, limit: Limit, give_up, answer: float):
        self.limit, self.give_up, self.answer = limit, give_up, answer
        self.lock = threading.Lock()
        self.cancelled = False
        self.arm(self.limit.seconds())

    def arm(self, wait: float | None) -> None:
        wait = 3600.0 if wait is None else max(0.0, wait)
        self.timer = threading.Timer(wait + 2 * GRACE + 2 * self.answer, self.fire)
        self.timer.daemon = True
        self.timer.start()

    def fire(self) -> None:
        with self.lock:
            if self.cancelled:
                return
            deadline = self.limit.deadline()
            if deadline is not None and time.monotonic() < deadline:
                # The session went on to its next step, which has a limit of its own.
                self.arm(deadline - time.monotonic())
                return
        self.give_up()

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            self.timer.cancel()


class _Transport(paramiko.Transport):
    """paramiko's transport, its thread waking once a second instead of ten
    times to see whether it was closed. Ten times cost an idle connection
    0.38 ms of the runner's CPU a second (16 idle connections to a local
    sshd, 10 s): 1.2 s over a 64-host run of 50 s, growing with the hosts
    and the run's length alike. Closing is no slower: close() closes the
    socket itself and does not wait for the thread; only the handshake's and
    keepalive's timers are now looked at once a second, against limits of
    seconds."""

    _active_check_timeout = 1.0


def read_known_hosts(path: str) -> paramiko.HostKeys:
    """A known_hosts file, read once for all the hosts of a run: paramiko's
    clients each read it whole, checking each line against every line
    before it, n² work per host and n³ a run (64 hosts on a 64-line file:
    84 ms of the runner's CPU, against 20 ms read once)."""
    try:
        return paramiko.HostKeys(path)
    except OSError as e:
        raise StepFailed(f"cannot read known_hosts {path}: {e.strerror or e}") from None


class SshTransport:
    """One SSH connection to one host, opened once and reused for the whole deploy."""

    def __init__(self, host: Host, known_hosts: str, timeout: float, stop: threading.Event | None = None,
                 keys: paramiko.HostKeys | None = None):
        """`keys`: `known_hosts` as read_known_hosts read it, once for every host of a run."""
        self.host = host
        self.stop = stop or threading.Event()
        kwargs: dict = {"timeout": timeout, "banner_timeout": timeout, "auth_timeout": timeout,
                        "transport_factory": _Transport}
        if host.identity_file:
            kwargs.update(key_filename=host.identity_file, look_for_keys=False)
        # targets.yaml is the only source: no ~/.ssh/config (whose ProxyJump
        # would make Fabric open a gateway that trusts any host key), no
        # Fabric/Invoke config files, no gateway.
        config = Config(lazy=True, ssh_config=paramiko.SSHConfig())
        self.conn = Connection(host.address, user=host.user, port=host.port, config=config,
                               gateway=False, connect_kwargs=kwargs)
        # Only this host's keys, under the name paramiko looks them up by.
        name = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
        ours = self.conn.client.get_host_keys()
        for kind, key in ((read_known_hosts(known_hosts) if keys is None else keys).lookup(name) or {}).items():
            ours.add(name, kind, key)
        self.conn.client.set_missing_host_key_policy(_RejectUnknown())
        self.known_hosts = known_hosts
        # How long the host may take to open a command's session, or to say
        # a stopped one is gone: as long as it may take to answer a connect
        # (a dead link answers nothing, and TCP can take many minutes to
        # notice), but never less than ANSWER_FLOOR: a loaded sshd or a PAM
        # stall is not a dead host, and one taken for dead gets no rollback.
        self.answer = max(ANSWER_FLOOR, min(timeout, ANSWER_TIMEOUT))
        self.lost = False
        self.unreachable = False

    def open(self) -> None:
        try:
            self.conn.open()
        except paramiko.BadHostKeyException as e:
            raise StepFailed(
                f"{self.host.name}: host key CHANGED: the server offers {fingerprint(e.key)},"
                f" {self.known_hosts} has another key for it; refusing to connect"
            ) from None
        except UnknownHostKey as e:
            raise StepFailed(
                f"{self.host.name}: host key {e} is not in {self.known_hosts}; refusing to"
                " connect (check the fingerprint, then add the key to that file)"
            ) from None
        except paramiko.SSHException as e:
            raise StepFailed(f"{self.host.name}: SSH failed: {e}") from None
        except OSError as e:
            raise StepFailed(f"{self.host.name}: cannot connect: {e.strerror or e}") from None
        # Traffic on an idle connection (a long migrate on another host), so
        # that a firewall or the VPN does not drop it as dead.
        self.conn.transport.set_keepalive(15)

    def run(self, line: str, stdin: Stdin = b"", timeout: float | None | Limit = None,
            out: Sink | None = None, err: Sink | None = None) -> Result:
        # A bare paramiko channel rather than Fabric's run: invoke's runner
        # waits for the remote command to end even when we are interrupted,
        # so Ctrl-C would take as long as the slowest migration.
        if self.lost:
            raise StepFailed(f"{self.host.name}: the connection was lost earlier in this deploy")
        limit = as_limit(timeout)
        watchdog = _Watchdog(limit, self.give_up, self.answer)
        try:
            return self._run(line, stdin, limit, out or Tail(), err or Tail())
        except ERRORS as e:
            if self.lost:
                raise StepFailed(f"{self.host.name}: no answer, connection closed ({type(e).__name__})") from None
            raise
        finally:
            watchdog.cancel()

    @property
    def user(self) -> str:
        """Who we log in as (targets.yaml, else the local user name)."""
        return self.conn.user

    def known_line(self, alias: str) -> str:
        """The host's key, checked against our known_hosts when we connected,
        as a known_hosts line for `alias`: a host given it can check this one."""
        key = self.conn.transport.get_remote_server_key()
        return f"{alias} {key.get_name()} {key.get_base64()}"

    def give_up(self) -> None:
        self.lost = True
        self.conn.close()

    def reconnect(self) -> bool:
        """A new connection to a host whose connection died (an sshd that was
        restarted, a link that came back): the undo must still reach it.
        Tried until it fails once: a host that is gone costs one connect
        timeout, not one per undo command."""
        if self.unreachable:
            return False
        self.conn.close()
        try:
            self.open()
        except StepFailed:
            self.unreachable = True
            return False
        self.lost = False
        return True

    def open_channel(self) -> paramiko.Channel:
        try:
            return self.conn.client.get_transport().open_session(timeout=self.answer)
        except ERRORS:
            # Not there: every later command on this host fails at once
            # instead of waiting as long again (a rollback runs several).
            self.give_up()
            raise

    def _run(self, line: str, stdin: Stdin, limit: Limit, out: Sink, err: Sink) -> Result:
        chan = self.open_channel()
        pid_line = _PidLine(self.host.name)
        pid = None
        feed = Feed(stdin)
        # Woken by the channel's data or end (paramiko's pipe for select;
        # poll, not select: past 1,024 open files select fails).
        ready = select.poll()
        ready.register(chan.fileno(), select.POLLIN)
        # What stdin still to come is waited on with, if its reader says (session.Input).
        wake, waking = getattr(stdin, "wake", None), None
        try:
            chan.exec_command(reporting_pid(line))
            if feed.done:
                chan.shutdown_write()
            while True:
                if self.stop.is_set() and not limit.holding():
                    raise Stopped("stopped")
                busy = False
                if not feed.done and chan.send_ready():
                    # Interleaved with reading: a command that writes while
                    # we send must not fill its window and stall us both.
                    chunk = feed.pending()
                    try:
                        if chunk:
                            feed.sent(chan.send(chunk))
                            busy = True
                        if feed.done:
                            chan.shutdown_write()
                    except OSError:
                        # The command stopped reading (it failed): its exit
                        # status and stderr, still to come, say why.
                        feed.done = True
                if chan.recv_ready():
                    out.add(chan.recv(CHUNK))
                    busy = True
                if chan.recv_stderr_ready():
                    chunk = chan.recv_stderr(CHUNK)
                    if pid is None:
                        chunk = pid_line.add(chunk)
                        pid = pid_line.pid
                    err.add(chunk)
                    busy = True
                if not busy:
                    # The exit status can overtake output that sshd still holds
                    # for want of window: done only once it has sent EOF too.
                    if (chan.exit_status_ready() and chan.eof_received) or chan.closed:
                        break
                    deadline = limit.deadline()
                    if deadline is not None and time.monotonic() > deadline:
                        # A dead link ends here too: nothing answers, the time runs out.
                        if pid is not None:
                            self.stop_group(pid)
                        return Result(TIMED_OUT, out.text(), timed_out(err.text(), limit.seconds()))
                    # Waits that cost nothing while a host works: a thread a
                    # host woke every 5 ms, 64 hosts took 4 s of the runner's
                    # CPU a deploy. Only what the channel cannot tell is asked
                    # sooner: room in its window for what we have to send
                    # (5 ms). Stdin that another host's answer decides has a
                    # descriptor to wait on (session.Deferred: a Bell, or a held
                    # session's script), and is looked at once a second besides,
                    # for its deadline; without one, every 20 ms.
                    fd = wake() if wake is not None and not feed.done else None
                    if fd != waking:
                        if waking is not None:
                            ready.unregister(waking)
                        if fd is not None:
                            ready.register(fd, select.POLLIN)
                        waking = fd
                    if not feed.done and feed.buffer:
                        time.sleep(0.005)
                    else:
                        ready.poll(WAKE_WAIT * 1000 if fd is not None else 250 if feed.done else 20)
            # Anything that arrived between the last read and the exit status.
            while chan.recv_ready():
                out.add(chan.recv(CHUNK))
            while chan.recv_stderr_ready():
                chunk = chan.recv_stderr(CHUNK)
                err.add(chunk if pid is not None else pid_line.add(chunk))
                pid = pid_line.pid
            code = chan.recv_exit_status()
        except BaseException as e:
            if pid is None and isinstance(e, Stopped):
                pid = self._late_pid(chan, pid_line)
            if pid is not None:
                self.stop_group(pid)
            raise
        finally:
            chan.close()
        if pid is None:
            err.add(bytes(pid_line.head))
        return Result(code, out.text(), err.text())

    def _late_pid(self, chan: paramiko.Channel, pid_line: _PidLine) -> int | None:
        """The pid of a command stopped before its pid line was read. Closing
        its channel would not stop it: it may have its stdin already (the
        lock's "go") and act after the run's undo (a lock taken once the
        run's end had released the others: seen in CI). sshd accepted the
        command, so the line comes soon: waited for as long as the host may
        take to answer. None if the command ended or never said it."""
        ready = select.poll()
        ready.register(chan.fileno(), select.POLLIN)
        until = time.monotonic() + self.answer
        try:
            while pid_line.pid is None and not chan.closed and not chan.exit_status_ready():
                if chan.recv_stderr_ready():
                    pid_line.add(chan.recv_stderr(CHUNK))
                elif chan.recv_ready():
                    chan.recv(CHUNK)  # not wanted; read, or its wake never clears
                elif (left := until - time.monotonic()) > 0:
                    ready.poll(min(left, 0.1) * 1000)
                else:
                    break
        except (StepFailed, *ERRORS):
            return None
        return pid_line.pid

    def stop_group(self, pid: int) -> None:
        """Stop the remote command and its children (closing the channel alone
        leaves them running on the host): TERM, KILL after GRACE, and back
        only when the group is gone or the host stops answering."""
        try:
            chan = self.open_channel()
            try:
                chan.exec_command(hostscripts.stop_group(pid, GRACE).line())
                if not chan.status_event.wait(2 * GRACE + self.answer):
                    self.give_up()
            finally:
                chan.close()
        except ERRORS:
            pass  # best effort: the host may be gone; the rollback and VPN teardown come next

    def close(self) -> None:
        self.conn.close()
