"""SshTransport takes hosts from targets.yaml only and always checks host keys."""

import io
import os
import threading
import time

import pytest

from deployer.config import Host
from deployer.connectors.local import LocalTransport
from deployer.connectors.ssh import PID_HEAD_LIMIT, SshTransport, _PidLine, _RejectUnknown
from deployer.errors import StepFailed
from deployer.run import session
from tests.conftest import start_sshd


def test_ssh_config_cannot_add_a_gateway_or_change_the_host(tmp_path, monkeypatch):
    # A ProxyJump here would make Fabric open a gateway Connection with
    # AutoAddPolicy and no known_hosts: a host-key hole.
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(
        "Host *\n  ProxyJump bastion\n  User evil\n  Port 2200\n  HostName 203.0.113.9\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    known = tmp_path / "known_hosts"
    known.write_text("")
    t = SshTransport(Host("web1.internal", user="deploy"), str(known), timeout=0.5)
    assert t.conn.gateway is False
    assert (t.conn.host, t.conn.user, t.conn.port) == ("web1.internal", "deploy", 22)
    assert isinstance(t.conn.client._policy, _RejectUnknown)
    assert t.conn.connect_kwargs["timeout"] == 0.5  # sub-second timeouts are kept


@pytest.fixture
def hostile(tmp_path):
    """An sshd of its own whose every command is replaced by what the test
    names (ForceCommand), in a file it rewrites between runs."""
    script = tmp_path / "force.sh"
    script.write_text("exit 0\n")
    server = start_sshd(tmp_path, f"ForceCommand /bin/sh {script}\n")

    def run(force: str, line: str = "true"):
        script.write_text(force)
        t = SshTransport(Host("127.0.0.1", port=server.port, user="root", identity_file=str(server.client_key)),
                         str(server.known_hosts), timeout=10)
        t.open()
        try:
            return t.run(line, timeout=60)
        finally:
            t.close()
    try:
        yield run
    finally:
        server.stop()


def test_a_host_that_floods_stderr_and_sends_no_pid_line_fails_the_step_holding_a_few_kb(hostile):
    # 100 MB that never holds the pid line: read no further than PID_HEAD_LIMIT.
    with pytest.raises(StepFailed, match=f"wrote {PID_HEAD_LIMIT} bytes of stderr and no deployer-pid"):
        hostile("head -c 100000000 /dev/zero | tr '\\0' x >&2\n")


@pytest.mark.parametrize("line", ["deployer-pid:12x", "deployer-pid:", "deployer-pid:1",
                                  "deployer-pid:99999999999"])
def test_a_pid_line_that_is_not_a_process_id_fails_the_step(hostile, line):
    with pytest.raises(StepFailed, match="pid line is not a process id"):
        hostile(f"echo {line} >&2; sleep 1\n")


def test_what_a_shell_prints_before_the_pid_line_is_kept_and_the_pid_line_is_not(hostile):
    # A login's startup file that prints a line, then the command as sshd would run it.
    r = hostile('echo "welcome to web1" >&2; exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n', "echo out; echo err >&2")
    assert r.ok and r.stdout == "out\n"
    assert r.stderr == "welcome to web1\nerr\n"


def test_the_pid_line_is_found_when_it_arrives_a_byte_at_a_time():
    p, got = _PidLine("web1"), b""
    for b in b"hello\ndeployer-pid:4242\nrest":
        got += p.add(bytes([b])) if p.pid is None else bytes([b])  # as SshTransport reads
    assert p.pid == 4242 and got == b"hello\nrest"


@pytest.mark.parametrize("kind", ["ssh", "local"])
def test_stdin_held_on_a_descriptor_costs_no_polling_and_flows_as_soon_as_it_is_there(request, kind):
    # A held session (run/held.py) waits for the run's end: its transport
    # sleeps on the Deferred's descriptor, not on a 20 ms (ssh) or 5 ms
    # (local) poll.
    wake, waker = os.pipe()
    asked = []
    given = threading.Event()

    def make():
        asked.append(time.monotonic())
        return session.Piece(3, lambda: io.BytesIO(b"hi\n")) if given.is_set() else None

    stdin = session.Input(b"", [session.Entry("cat", data=session.Deferred(make, wake))])
    if kind == "ssh":
        sshd = request.getfixturevalue("sshd")
        t = SshTransport(Host("127.0.0.1", port=sshd.port, user="root", identity_file=str(sshd.client_key)),
                         str(sshd.known_hosts), timeout=10)
        t.open()
    else:
        t = LocalTransport()
    try:
        def give():
            time.sleep(1.5)
            given.set()
            os.write(waker, b"x")
        threading.Thread(target=give).start()
        result = t.run("cat", stdin=stdin, timeout=30)
        ended = time.monotonic()
    finally:
        t.close()
        os.close(wake)
        os.close(waker)
    assert result.ok and result.stdout == "\n3\nhi\n", result  # the token line, the size, the bytes
    # A 20 ms poll would have asked some 75 times in 1.5 s, 5 ms 300: here a few
    # times as the session starts, then once a second.
    assert len(asked) <= 12, len(asked)
    assert ended - asked[-1] < 1.0
