"""How commands and files reach a host: one small interface, two implementations.

`SshTransport` wraps a Fabric Connection but checks host keys against the
configured known_hosts: Fabric 3 hard-codes paramiko's AutoAddPolicy and never
loads known_hosts (fabric#1804, fabric#2071), which would trust any server.
"""

import base64
import hashlib
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from typing import Protocol

import paramiko
from fabric import Config, Connection

from deployer.config import Host
from deployer.errors import StepFailed
from deployer.quoting import PID_MARKER, Command, reporting_pid


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Tail:
    """The last `limit` bytes of a stream, and how many came before them.

    A migration that prints 300 MB must not take 300 MB of memory (nor put
    it in one JSON line): what is kept is the end, where errors are.
    """

    def __init__(self, limit: int = 256 * 1024):
        self.limit = limit
        self.data = bytearray()
        self.cut = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.cut += excess

    def text(self) -> str:
        kept = self.data.decode(errors="replace")
        return f"[{self.cut} earlier bytes of output not kept]\n{kept}" if self.cut else kept


# What Tail.text puts where it cut: a secret may have been cut in two there.
CUT_NOTE = re.compile(r"\[\d+ earlier bytes of output not kept\]\n")


class Transport(Protocol):
    def run(self, line: str, stdin: bytes = b"") -> Result: ...
    def put(self, local: str, remote: str) -> None: ...
    def readlink(self, path: str) -> str | None: ...
    def close(self) -> None: ...


class NotALink(Exception):
    """The path exists and is not a symlink: deployer will not replace it."""


# What a transport may raise mid-step: the step fails on that host, the
# executor goes on to the next host and then rolls back.
ERRORS = (OSError, NotALink, paramiko.SSHException)
_CHUNK = 65536


class LocalTransport:
    """This machine, through /bin/sh: the embedded default and the runner's own steps."""

    def run(self, line: str, stdin: bytes = b"") -> Result:
        # A session of its own, so an interrupted deploy stops the whole
        # command (shell and children), not just the shell.
        proc = subprocess.Popen(["/bin/sh", "-c", line], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.PIPE, start_new_session=True)
        try:
            out, err = self._pump(proc, stdin)
            code = proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
        return Result(code, out.text(), err.text())

    @staticmethod
    def _pump(proc: subprocess.Popen, stdin: bytes) -> tuple[Tail, Tail]:
        """Feed stdin and keep the tails of stdout and stderr, all at once, so
        neither side waits on a full pipe."""
        tails = {proc.stdout: Tail(), proc.stderr: Tail()}
        offset = 0
        with selectors.DefaultSelector() as sel:
            for stream in tails:
                sel.register(stream, selectors.EVENT_READ)
            if stdin:
                sel.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
            while sel.get_map():
                for key, _ in sel.select():
                    if key.fileobj is proc.stdin:
                        try:
                            offset += os.write(proc.stdin.fileno(), stdin[offset:offset + _CHUNK])
                        except BrokenPipeError:
                            offset = len(stdin)
                        if offset >= len(stdin):
                            sel.unregister(proc.stdin)
                            proc.stdin.close()
                        continue
                    chunk = os.read(key.fd, _CHUNK)
                    if chunk:
                        tails[key.fileobj].add(chunk)
                    else:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
        return tails[proc.stdout], tails[proc.stderr]

    def put(self, local: str, remote: str) -> None:
        # Exclusive: a file or link planted at `remote` fails the copy.
        with open(local, "rb") as src, open(remote, "xb") as dst:
            shutil.copyfileobj(src, dst)

    def readlink(self, path: str) -> str | None:
        try:
            if not stat.S_ISLNK(os.lstat(path).st_mode):
                raise NotALink(path)
        except FileNotFoundError:
            return None
        return os.readlink(path)

    def close(self) -> None:
        pass


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


def _pid_of(err: bytes) -> int | None:
    """The pid `reporting_pid` wrote, once its whole line has arrived."""
    start = err.find(PID_MARKER)
    end = err.find(b"\n", start)
    if start < 0 or end < 0:
        return None
    return int(err[start + len(PID_MARKER):end])


def _without_pid(err: bytes, pid: int) -> bytes:
    return bytes(err).replace(b"%s%d\n" % (PID_MARKER, pid), b"", 1)


class SshTransport:
    """One SSH connection to one host, opened once and reused for the whole deploy."""

    def __init__(self, host: Host, known_hosts: str, timeout: float):
        self.host = host
        kwargs: dict = {"timeout": timeout, "banner_timeout": timeout, "auth_timeout": timeout}
        if host.identity_file:
            kwargs.update(key_filename=host.identity_file, look_for_keys=False)
        # targets.yaml is the only source: no ~/.ssh/config (whose ProxyJump
        # would make Fabric open a gateway that trusts any host key), no
        # Fabric/Invoke config files, no gateway.
        config = Config(lazy=True, ssh_config=paramiko.SSHConfig())
        self.conn = Connection(host.address, user=host.user, port=host.port, config=config,
                               gateway=False, connect_kwargs=kwargs)
        self.conn.client.load_host_keys(known_hosts)
        self.conn.client.set_missing_host_key_policy(_RejectUnknown())
        self.known_hosts = known_hosts
        self._sftp = None

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

    def run(self, line: str, stdin: bytes = b"") -> Result:
        # A bare paramiko channel rather than Fabric's run: invoke's runner
        # waits for the remote command to end even when we are interrupted,
        # so Ctrl-C would take as long as the slowest migration.
        chan = self.conn.client.get_transport().open_session()
        out, err = Tail(), Tail()
        head = bytearray()  # stderr until the pid line has arrived whole
        pid = None
        offset = 0
        try:
            chan.exec_command(reporting_pid(line))
            if not stdin:
                chan.shutdown_write()
            while True:
                busy = False
                if offset < len(stdin) and chan.send_ready():
                    # Interleaved with reading: a command that writes while
                    # we send must not fill its window and stall us both.
                    offset += chan.send(stdin[offset:offset + _CHUNK])
                    if offset >= len(stdin):
                        chan.shutdown_write()
                    busy = True
                if chan.recv_ready():
                    out.add(chan.recv(_CHUNK))
                    busy = True
                if chan.recv_stderr_ready():
                    chunk = chan.recv_stderr(_CHUNK)
                    if pid is None:
                        head += chunk
                        pid = _pid_of(head)
                        chunk, head = (_without_pid(head, pid), bytearray()) if pid is not None else (b"", head)
                    err.add(chunk)
                    busy = True
                if not busy:
                    if chan.exit_status_ready() or chan.closed:
                        break
                    time.sleep(0.005)
            # Anything that arrived between the last read and the exit status.
            while chan.recv_ready():
                out.add(chan.recv(_CHUNK))
            while chan.recv_stderr_ready():
                err.add(chan.recv_stderr(_CHUNK))
            code = chan.recv_exit_status()
        except BaseException:
            if pid is not None:
                self.stop_group(pid)
            raise
        finally:
            chan.close()
        err.add(bytes(head))
        return Result(code, out.text(), err.text())

    def stop_group(self, pid: int) -> None:
        """Interrupted: stop the remote command and its children (closing the
        channel alone leaves them running on the host)."""
        chan = self.conn.client.get_transport().open_session()
        try:
            chan.exec_command(Command.of(("kill", "-TERM", "--", f"-{pid}")).line())
            chan.status_event.wait(5)
        except (OSError, paramiko.SSHException):
            pass  # best effort: the rollback and VPN teardown come next
        finally:
            chan.close()

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.conn.sftp()
        return self._sftp

    def put(self, local: str, remote: str) -> None:
        # "x": SFTP's exclusive create, so a file or link planted at `remote`
        # fails the upload instead of being written through.
        with open(local, "rb") as src, self.sftp().open(remote, "wbx") as dst:
            dst.set_pipelined(True)
            shutil.copyfileobj(src, dst, 32768)

    def readlink(self, path: str) -> str | None:
        try:
            if not stat.S_ISLNK(self.sftp().lstat(path).st_mode):
                raise NotALink(path)
        except FileNotFoundError:
            return None
        return self.sftp().readlink(path)

    def close(self) -> None:
        self.conn.close()
