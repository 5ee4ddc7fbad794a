"""SshTransport takes hosts from targets.yaml only and always checks host keys."""

import io
import os
import threading
import time

import pytest

from deployer.config import Host
from deployer.connectors.base import Stopped
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

    def run(force: str, line: str = "true", stop: threading.Event | None = None):
        script.write_text(force)
        t = SshTransport(Host("127.0.0.1", port=server.port, user="root", identity_file=str(server.client_key)),
                         str(server.known_hosts), timeout=10, stop=stop)
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


def _transports(request, kind, n):
    if kind == "local":
        return [LocalTransport() for _ in range(n)]
    sshd = request.getfixturevalue("sshd")
    host = Host("127.0.0.1", port=sshd.port, user="root", identity_file=str(sshd.client_key))
    transports = [SshTransport(host, str(sshd.known_hosts), timeout=10) for _ in range(n)]
    for t in transports:
        t.open()
    return transports


@pytest.mark.parametrize("kind", ["ssh", "local"])
def test_a_bell_wakes_the_sessions_an_answer_is_for_and_none_polls(request, monkeypatch, kind):
    # Three sessions (hosts a, b, c) wait for stdin that an answer decides
    # (the unpack, the relay's turns: run/upload.py). A ring for b wakes b
    # alone; a ring for all wakes the others. Their own looks come only
    # every 10 s here: only a ring can be what wakes them.
    monkeypatch.setattr(f"deployer.connectors.{kind}.WAKE_WAIT", 10.0)
    bell = session.Bell()
    lock = threading.Lock()
    ready: set[str] = set()
    asked: list[str] = []
    taken: dict[str, float] = {}

    def make(key):
        def look():
            with lock:
                asked.append(key)
                if key not in ready:
                    return None
                taken[key] = time.monotonic()
            return session.Piece(2, lambda: io.BytesIO(b"%s\n" % key.encode()))
        return look

    transports = _transports(request, kind, 3)
    results = {}

    def run(i, key):
        stdin = session.Input(b"", [session.Entry("cat", data=bell.deferred(make(key), key))])
        results[key] = transports[i].run("cat", stdin=stdin, timeout=30)

    threads = [threading.Thread(target=run, args=(i, key)) for i, key in enumerate("abc")]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        with lock:
            ready.add("b")
            before = len(asked)
        rung = time.monotonic()
        bell.ring("b")
        threads[1].join(30)
        time.sleep(0.5)
        with lock:
            after_b = asked[before:]
            ready.update("ac")
        rung_all = time.monotonic()
        bell.ring()
        for t in threads:
            t.join(30)
        left = dict(bell.wakers)
    finally:
        for t in transports:
            t.close()
        bell.close()
    assert {k: r.stdout for k, r in results.items()} == {k: f"\n2\n{k}\n" for k in "abc"}, results
    assert taken["b"] - rung < 2.0 and after_b == ["b"], (taken, after_b)  # b alone woke
    assert max(taken["a"], taken["c"]) - rung_all < 2.0, taken
    # A 20 ms poll would have looked some 300 times in 2 s: here a few as the sessions start.
    assert len(asked) <= 3 * 12, len(asked)
    assert not left, left  # each pipe closed once its stdin was taken, before the bell was


@pytest.mark.parametrize("kind", ["ssh", "local"])
def test_stdin_that_waits_for_the_sessions_own_output_is_not_held_up_by_it(request, monkeypatch, kind):
    # An unpack's stdin waits for what the same session printed before it
    # (the live release's list, up to 1 MB): the wait on its descriptor must
    # go on reading the output, or each 64 KiB would cost a look's wait.
    monkeypatch.setattr(f"deployer.connectors.{kind}.WAKE_WAIT", 10.0)
    bell = session.Bell()
    size = 600_000
    got = bytearray()

    class Out:
        def add(self, chunk):
            got.extend(chunk)
            if len(got) >= size:
                bell.ring()  # as Uploads.learned does, once the list is in

        def text(self):
            return ""

    def look():
        return session.Piece(3, lambda: io.BytesIO(b"hi\n")) if len(got) >= size else None

    stdin = session.Input(b"", [session.Entry("cat", data=bell.deferred(look))])
    t = _transports(request, kind, 1)[0]
    try:
        started = time.monotonic()
        result = t.run(f"head -c {size} /dev/zero; cat > /dev/null; echo done >&2", stdin=stdin, timeout=60,
                       out=Out())
        took = time.monotonic() - started
    finally:
        t.close()
        bell.close()
    assert result.ok and len(got) == size and "done" in result.stderr, result
    assert took < 5.0, took  # one look's wait alone is 10 s here



def test_a_command_stopped_before_its_pid_line_was_read_is_stopped_on_the_host(hostile, tmp_path):
    # The stop flag is seen before the pid line is read, but the line was
    # written (it was on its way): closing the channel alone would leave the
    # command running on the host (a lock it took would outlive the run's
    # release of it). Ignoring SIGPIPE stands for "written before the close":
    # the pid is waited for, and its group stopped.
    marker = tmp_path / "acted"
    stop = threading.Event()
    stop.set()
    force = (f'case $SSH_ORIGINAL_COMMAND in *deployer-pid*) trap "" PIPE; echo deployer-pid:$$ >&2;'
             f' sleep 1; touch {marker};; *) exec /bin/sh -c "$SSH_ORIGINAL_COMMAND";; esac\n')
    with pytest.raises(Stopped):
        hostile(force, stop=stop)
    time.sleep(2)
    assert not marker.exists()
