"""How commands and files reach a host: one small interface, two implementations.

`SshTransport` wraps a Fabric Connection but checks host keys against the
configured known_hosts: Fabric 3 hard-codes paramiko's AutoAddPolicy and never
loads known_hosts (fabric#1804, fabric#2071), which would trust any server.
"""

import base64
import hashlib
import os
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


class Transport(Protocol):
    def run(self, line: str) -> Result: ...
    def put(self, local: str, remote: str) -> None: ...
    def read(self, path: str) -> bytes | None: ...
    def readlink(self, path: str) -> str | None: ...
    def close(self) -> None: ...


class NotALink(Exception):
    """The path exists and is not a symlink: deployer will not replace it."""


# What a transport may raise mid-step: the step fails on that host, the
# executor goes on to the next host and then rolls back.
ERRORS = (OSError, NotALink, paramiko.SSHException)


class LocalTransport:
    """This machine, through /bin/sh: the embedded default and the runner's own steps."""

    def run(self, line: str) -> Result:
        # A session of its own, so an interrupted deploy stops the whole
        # command (shell and children), not just the shell.
        proc = subprocess.Popen(["/bin/sh", "-c", line], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate()
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
        return Result(proc.returncode, stdout, stderr)

    def put(self, local: str, remote: str) -> None:
        shutil.copyfile(local, remote)

    def read(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

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

    def run(self, line: str) -> Result:
        # A bare paramiko channel rather than Fabric's run: invoke's runner
        # waits for the remote command to end even when we are interrupted,
        # so Ctrl-C would take as long as the slowest migration.
        chan = self.conn.client.get_transport().open_session()
        out, err = bytearray(), bytearray()
        pid = None
        try:
            chan.exec_command(reporting_pid(line))
            chan.shutdown_write()
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    if pid is None:
                        pid = _pid_of(err)
                elif chan.exit_status_ready() or chan.closed:
                    break
                else:
                    time.sleep(0.005)
            # Anything that arrived between the last read and the exit status.
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            code = chan.recv_exit_status()
        except BaseException:
            if pid is not None:
                self.stop_group(pid)
            raise
        finally:
            chan.close()
        pid = pid if pid is not None else _pid_of(err)
        if pid is not None:
            err = err.replace(b"%s%d\n" % (PID_MARKER, pid), b"", 1)
        return Result(code, out.decode(errors="replace"), err.decode(errors="replace"))

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
        self.sftp().put(local, remote)

    def read(self, path: str) -> bytes | None:
        try:
            with self.sftp().open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def readlink(self, path: str) -> str | None:
        try:
            if not stat.S_ISLNK(self.sftp().lstat(path).st_mode):
                raise NotALink(path)
        except FileNotFoundError:
            return None
        return self.sftp().readlink(path)

    def close(self) -> None:
        self.conn.close()
