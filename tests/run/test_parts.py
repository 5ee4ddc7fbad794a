"""The executor's parts on their own: a session's stdin and the split of
its output, the undo log, and the upload's choice of what each host is sent.
(The whole, on real hosts, is in test_ssh_deploy, test_run_safety and the lab.)"""

import base64
import gzip
import hashlib
import io
import threading

import pytest

from deployer import steps
from deployer.artifact import delta, packaging
from deployer.connectors.local import LocalTransport
from deployer.connectors.result import Result
from deployer.output import QuietReporter
from deployer.quoting import Command
from deployer.run import session
from deployer.run.held import Held
from deployer.run.progress import Progress
from deployer.run.undo import Undo, UndoLog
from deployer.run.upload import Uploads


def _split(entries):
    seen = []
    split = session.Split(entries, lambda i: seen.append(("start", i)), lambda i, r: seen.append(("end", i, r)))
    return split, seen


def _feed(stream, data: bytes, size: int) -> None:
    for i in range(0, len(data), size):
        stream.add(data[i:i + size])


@pytest.mark.parametrize("size", [1, 3, 7, 64, 4096])
def test_a_sessions_output_is_split_at_each_steps_mark_however_it_arrives(size):
    entries = [session.Entry("a"), session.Entry("b"), session.Entry("c")]
    split, seen = _split(entries)
    t = split.token
    out = b"one\n\n" + t + b" 0 0\n" + b"two\n\n" + t + b" 1 0\n" + b"three\n\n" + t + b" 2 3\n"
    err = b"\n" + t + b" 0 0\n" + b"warn\n\n" + t + b" 1 0\n" + b"bad\n\n" + t + b" 2 3\n"
    _feed(split.out, out, size)
    _feed(split.err, err, size)
    ends = [(e[1], e[2]) for e in seen if e[0] == "end"]
    assert [(i, r.exit_code, r.stdout, r.stderr) for i, r in ends] == [
        (0, 0, "one\n", ""), (1, 0, "two\n", "warn\n"), (2, 3, "three\n", "bad\n")]
    assert [e[1] for e in seen if e[0] == "start"] == [0, 1, 2]
    split.finish(Result(3, "", ""))  # nothing left running: no second end
    assert len([e for e in seen if e[0] == "end"]) == 3


def test_a_step_a_session_stopped_in_ends_with_the_sessions_result_and_no_other_starts():
    split, seen = _split([session.Entry("a"), session.Entry("b")])
    split.out.add(b"half")
    split.finish(Result(124, "", "stopped after 5 s\n"))
    assert [(e[0], e[1]) for e in seen] == [("start", 0), ("end", 0)]
    assert seen[-1][2].exit_code == 124 and "stopped after 5 s" in seen[-1][2].stderr


def test_text_before_a_forged_mark_without_the_token_stays_the_steps_output():
    split, seen = _split([session.Entry("a")])
    split.out.add(b"\nffffffffffffffffffffffffffffffff 0 0\nreal\n")
    split.out.add(b"\n" + split.token + b" 0 0\n")
    split.err.add(b"\n" + split.token + b" 0 0\n")
    assert seen[-1][2].stdout == "\nffffffffffffffffffffffffffffffff 0 0\nreal\n"


def _read_all(stdin: session.Input) -> bytes:
    out = b""
    while (chunk := stdin.read(5)) not in (b"", None):
        out += chunk
    return out


def test_a_sessions_stdin_is_the_token_then_each_reading_steps_size_and_bytes():
    ready = threading.Event()
    late = session.Deferred(lambda: session.Piece(4, lambda: io.BytesIO(b"late")) if ready.is_set() else None)
    entries = [session.Entry("a", data=session.Piece(11, lambda: io.BytesIO(b"hello world"))),
               session.Entry("b"), session.Entry("c", data=late)]
    stdin = session.Input(b"TOKEN", entries)
    first = _read_all(stdin)
    assert first == b"TOKEN\n11\nhello world"
    assert stdin.read(5) is None  # the deferred piece is not known yet: nothing more, not the end
    ready.set()
    assert _read_all(stdin) == b"4\nlate"
    assert stdin.read(5) == b""
    assert session.command("0123456789abcdef", entries).argvs[0][4:] == (
        "0123456789abcdef", "a", "1", "b", "0", "c", "1")


def test_the_undo_log_replays_each_hosts_changes_newest_first_then_what_runs_again():
    log = UndoLog()
    log.record(Undo("web1", "undo a", Command.of(("echo", "a"))))
    log.record(Undo("web2", "undo a", Command.of(("echo", "a2"))))
    log.record(Undo("web1", "undo b", Command.of(("echo", "b")), keep=Command.of(("rm", "b.work"))))
    log.again_after("web1", "reload", Command.of(("reload",)))
    ran, notes = [], []

    def run_quietly(host, line):
        ran.append((host, line))
        return Result(1 if line == "echo b" else 0, "", "no b")

    order = []

    def on_each(hosts, fn):
        order.extend(hosts)
        return [fn(h) for h in hosts]

    problems = log.replay(run_quietly, on_each, notes.append)
    assert order == ["web1", "web2"]  # hosts in the order of their first change
    assert [line for host, line in ran if host == "web1"] == ["echo b", "echo a", "reload"]
    assert [line for host, line in ran if host == "web2"] == ["echo a2"]
    assert problems == ["web1: undo b: no b"] and notes == ["rolling back 3 change(s)"]
    assert log.replay(run_quietly, None, notes.append) == []  # empty after: nothing twice


def test_kept_changes_leave_only_their_tidying_for_the_hosts_next_session():
    log = UndoLog()
    log.record(Undo("web1", "undo a", Command.of(("echo", "a")), keep=Command.of(("rm", "a.work"))))
    log.record(Undo("web2", "undo b", Command.of(("echo", "b"))))
    log.keep()
    assert log.take_tidying("web1") == ["rm a.work"] and log.take_tidying("web1") == []
    assert log.take_tidying("web2") == []
    assert log.replay(None, None, None) == []


@pytest.fixture
def upload(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "app.py").write_text("print('hi')\n")
    (source / "static.css").write_text("body {}\n")
    rules = packaging.Rules()
    manifest = packaging.scan(str(source), rules)
    dest = tmp_path / "full.tar.gz"
    packaging.build(str(source), rules, str(dest), expect=manifest.digest)
    build = steps.Build("build", source=str(source), rules=rules, dest=str(dest), manifest=manifest)
    step = steps.Upload("upload", ("web1", "web2", "web3"), build=build)
    work = tmp_path / "work"
    work.mkdir()
    return Uploads(str(work), Progress(QuietReporter(io.StringIO())), UndoLog(), {}), step, manifest


def _said(live: str = "", base: str = "", listed: bytes = b"") -> Result:
    """A host's answer to live_state."""
    rows = [f"live {live}"] if live else []
    if base:
        rows.append(f"base {base}")
    if listed:
        rows.append("sums " + base64.b64encode(gzip.compress(listed)).decode())
    return Result(0, "\n".join(rows) + "\n", "")


def test_a_host_is_sent_nothing_until_it_has_said_what_it_holds_and_then_the_whole_artifact(upload):
    uploads, step, manifest = upload
    assert uploads.sending(step, "web2") is None
    uploads.learned("web2", _said(), False)
    piece = uploads.sending(step, "web2")
    head = piece.open().read(200).split(b"\n", 1)[0].split()
    assert head[1:] == [b"-", delta.against(manifest, delta.Live()).want.encode(), b"sent"]
    assert piece.size > 0 and uploads.previous == {"web2": ""}
    # What a host says its live release is reaches the run's last line only in a release's shape.
    uploads.learned("web1", _said("20260101T000000Z-abc"), True)
    uploads.learned("web3", _said("\x1b]52;c;AAAA\x07"), False)
    assert uploads.previous == {"web2": "", "web1": "20260101T000000Z-abc", "web3": delta.NOT_A_RELEASE}


def test_hosts_with_the_first_hosts_live_release_wait_for_its_list_and_share_one_tarball(upload):
    uploads, step, manifest = upload
    listed = delta.full(manifest).add  # the live release: this very tree, listed as a host lists it
    base = hashlib.sha256(listed).hexdigest()
    uploads.learned("web2", _said("R1", base), False)
    assert uploads.sending(step, "web2") is None  # the first host has not sent the list yet
    uploads.learned("web1", _said("R1", base, listed), True)
    uploads.learned("web3", _said("R1", base), False)
    two, three = uploads.choice(step, "web2"), uploads.choice(step, "web3")
    assert two is three and two.base == base.encode()
    assert len(uploads.sendings) == 1
    # Nothing differs from the live release: only the lists travel, no file.
    assert two.head("sent").split(b"\n", 1)[0].split()[1] == base.encode()


def test_a_mark_with_a_number_no_session_writes_is_output_not_an_error():
    # The host knows the token (it reads it on stdin): a mark it forges with
    # 5,000 digits made int() raise in the thread that reads the session.
    split, seen = _split([session.Entry("a")])
    split.out.add(b"\n" + split.token + b" " + b"9" * 5000 + b" 0\n")
    split.out.add(b"\n" + split.token + b" 0 0\n")
    split.err.add(b"\n" + split.token + b" 0 0\n")
    assert seen[-1][0] == "end" and b"9" * 5000 in seen[-1][2].stdout.encode()


def test_no_more_hosts_than_the_relays_limit_read_from_the_first_one_at_once(tmp_path):
    from deployer.run import relay
    from deployer.run.upload import Sending

    class Source:  # the first host's transport, as far as the fetch's input needs it
        user = "deploy"

        def known_line(self, alias):
            return f"{alias} ssh-ed25519 AAAA"

    hosts = ("web1", "web2", "web3", "web4", "web5", "web6")
    step = steps.Upload("upload", hosts, build=steps.Build("package"), relay=steps.Relay("web1", limit=2))
    uploads = Uploads(str(tmp_path), Progress(QuietReporter(io.StringIO())), UndoLog(), {"web1": Source()})
    sending = Sending(str(tmp_path / "t.tar.gz"), 10, b"s", b"-", b"w", b"", b"c")
    uploads.sendings[delta.Live()] = sending
    uploads.live = dict.fromkeys(hosts, delta.Live())
    uploads.offer = relay.Offer(step.relay, private=b"KEY", path=sending.path, open=True)
    first, second, third = (uploads.fetch_input(step, h) for h in hosts[1:4])
    assert first is not None and second is not None and third is None  # web4 waits its turn
    assert b"KEY" in first.open().read()
    uploads.fetched("web2", Result(0, "fetched\n", ""))
    assert uploads.fetch_input(step, "web4") is not None
    assert uploads.offer.fetched == {"web2"} and uploads.offer.reading == {"web3", "web4"}
    # One that waited half its step's limit for its turn is sent the artifact instead.
    uploads.offer.reading.add("web5")
    assert uploads.fetch_input(step, "web6", timeout=0.0).open().read() == b"-\n"
    assert "web6" not in uploads.offer.reading and not uploads.offer.waiting


def test_a_held_session_given_up_on_waits_for_its_end_without_polling():
    # The run's end gave up on a held session that had not reached its last
    # entry (wait() timed out): the commands must never run there now, and
    # the wake rung by `give` must not turn the wait into a busy loop.
    held = Held(seconds=3, after=1)
    entry = held.entry(lambda: None)
    looks = []
    make = entry.data.make
    entry.data.make = lambda: looks.append(1) or make()
    # The steps before it: their stdin comes only once the test says.
    steps_done = threading.Event()
    before = session.Deferred(lambda: session.Piece(2, lambda: io.BytesIO(b"ok")) if steps_done.is_set() else None)
    stdin = session.Input(b"", [session.Entry("before", data=before), entry])
    results = []
    held.start(lambda: results.append(LocalTransport().run("cat > /dev/null", stdin=stdin, timeout=3)))
    held.give("echo never")
    assert held.wait(0.2) is None  # still going: given up on, the commands run elsewhere
    steps_done.set()
    held.thread.join(10)
    stdin.end()
    assert not held.thread.is_alive() and not results[0].ok, results  # it waited to its limit, given nothing
    assert len(looks) <= 10, len(looks)
