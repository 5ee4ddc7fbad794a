"""The S3 artifact store against a real S3-compatible server (SeaweedFS) in a
namespace of its own: the runner's side (artifact/store.py) from here, the
host's (sh/fetch-url.sh) from inside the namespace, as a host sees it."""

import hashlib
import io
import os
import socket
import subprocess
import threading
import time
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest

from deployer import steps
from deployer.artifact.store import S3Store
from deployer.config.model import ArtifactStore
from deployer.errors import StoreError
from deployer.remote import hostscripts
from deployer.run.stored import Stored
from tests.store.conftest import HERE, THERE, why_not

pytestmark = [pytest.mark.s3, pytest.mark.skipif(bool(why_not), reason=why_not or "")]

DATA = os.urandom(300_000)  # a few reads' worth
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def store(s3, monkeypatch) -> S3Store:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return S3Store(s3.endpoint, s3.bucket, "deployer/", connect_timeout=2, read_timeout=5, attempts=2)


@pytest.fixture
def stored(store) -> S3Store:
    store.put(io.BytesIO(DATA), len(DATA), SHA)
    return store


def fetch(netns: str, relay, stdin: bytes, seconds: int = 20) -> subprocess.CompletedProcess:
    """fetch-url.sh as a host runs it, inside the namespace, with a host's PATH (its python3)."""
    argv = ["ip", "netns", "exec", netns, *hostscripts.fetch_url(str(relay), seconds).argvs[0]]
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=seconds + 10,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def signature(url: str) -> str:
    return parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]


def said(done: subprocess.CompletedProcess, url: str) -> str:
    """What the fetch printed, having checked that the URL is nowhere in it."""
    out = done.stdout.decode() + done.stderr.decode()
    assert signature(url) not in out and urlsplit(url).query not in out
    assert done.returncode == 0, out
    return done.stdout.decode()


def test_put_once_then_found(store, s3):
    key = store.key(SHA)
    try:
        s3.client().delete_object(Bucket=s3.bucket, Key=key)
    except Exception:  # noqa: BLE001 -- not there: as wanted
        pass
    assert store.put(io.BytesIO(DATA), len(DATA), SHA) is True
    assert store.put(io.BytesIO(DATA), len(DATA), SHA) is False  # there: nothing sent
    head = s3.client().head_object(Bucket=s3.bucket, Key=key)
    assert head["ContentLength"] == len(DATA)


def test_bytes_that_are_not_the_sha_are_refused(store):
    other = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(StoreError, match="BadDigest"):
        store.put(io.BytesIO(DATA), len(DATA), other)
    assert not store.has(other, len(DATA))


def test_a_host_fetches_the_presigned_url(stored, netns, tmp_path):
    url = stored.presign(SHA, 60)
    relay = tmp_path / "run" / "relay"
    done = fetch(netns, relay, f"{SHA} {len(DATA)}\n{url}\n".encode())
    assert said(done, url) == "fetched\n" and not done.stderr
    assert (relay / "copy").read_bytes() == DATA
    assert relay.stat().st_mode & 0o777 == 0o700


def test_nothing_to_fetch(netns, tmp_path):
    done = fetch(netns, tmp_path / "relay", b"-\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert not (tmp_path / "relay").exists()


def test_wrong_sha_is_not_fetched_and_leaves_nothing(stored, netns, tmp_path):
    url = stored.presign(SHA, 60)
    relay = tmp_path / "relay"
    done = fetch(netns, relay, f"{hashlib.sha256(b'x').hexdigest()} {len(DATA)}\n{url}\n".encode())
    assert said(done, url).startswith("not fetched: sha256 mismatch")
    assert not relay.exists()


def test_a_relay_directory_already_there_is_not_used(stored, netns, tmp_path):
    url = stored.presign(SHA, 60)
    relay = tmp_path / "relay"
    relay.symlink_to(tmp_path)
    done = fetch(netns, relay, f"{SHA} {len(DATA)}\n{url}\n".encode())
    assert said(done, url) == f"not fetched: cannot make {relay}\n"
    assert relay.is_symlink() and not (tmp_path / "copy").exists()


def test_an_expired_url_is_refused(stored, netns, tmp_path):
    url = stored.presign(SHA, 1)
    time.sleep(2.1)
    relay = tmp_path / "relay"
    done = fetch(netns, relay, f"{SHA} {len(DATA)}\n{url}\n".encode())
    out = said(done, url)
    assert out.startswith("not fetched: HTTP 403") and "1 try" in out, out
    assert not relay.exists()


def test_a_store_that_is_down_is_tried_three_times_then_not_fetched(stored, s3, netns, tmp_path):
    url = stored.presign(SHA, 60).replace(s3.endpoint, f"http://{THERE}:1", 1)  # nothing on port 1
    done = fetch(netns, tmp_path / "relay", f"{SHA} {len(DATA)}\n{url}\n".encode())
    out = said(done, url)
    assert out.startswith("not fetched: failed: Connection refused") and "3 tries" in out, out
    assert not (tmp_path / "relay").exists()


@pytest.fixture
def silent():
    """A server on 198.18.9.1 that takes connections and never answers: its
    URL, and an Event set once one was taken."""
    listener = socket.create_server((HERE, 0))
    accepted = threading.Event()
    held = []

    def hold():
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return
            accepted.set()

    threading.Thread(target=hold, daemon=True).start()
    yield f"http://{HERE}:{listener.getsockname()[1]}", accepted
    listener.close()
    for conn in held:
        conn.close()


def test_the_url_is_on_no_command_line(stored, s3, netns, tmp_path, silent):
    """While a fetch waits on a store that took it and says nothing, no
    process's argv holds the URL; the fetch then ends within its limit."""
    endpoint, accepted = silent
    url = stored.presign(SHA, 60).replace(s3.endpoint, endpoint, 1)
    argv = ["ip", "netns", "exec", netns, *hostscripts.fetch_url(str(tmp_path / "relay"), 3).argvs[0]]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    try:
        proc.stdin.write(f"{SHA} {len(DATA)}\n{url}\n".encode())
        proc.stdin.close()
        proc.stdin = None  # for communicate(), which would flush it
        assert accepted.wait(10)
        running = set()
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            assert signature(url).encode() not in cmdline, pid
            if b"\0deployer-fetch-url\0" in cmdline:
                running.add("sh")
            elif cmdline.startswith(b"python3\0-I\0-c\0"):
                running.add("python3")
        assert running == {"sh", "python3"}  # both looked at while they ran
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    assert said(done, url).startswith("not fetched: timed out after 3 s")


def test_bad_credentials_say_so_and_nothing_secret(s3, monkeypatch):
    secret = "not-the-secret-" + "x" * 24
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    store = S3Store(s3.endpoint, s3.bucket, "deployer/", connect_timeout=2, read_timeout=5, attempts=2)
    data = b"bad credentials"
    with pytest.raises(StoreError) as e:
        store.put(io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest())
    message = str(e.value)
    assert "the secret key does not match the access key (SignatureDoesNotMatch, HTTP 403)" in message
    assert s3.endpoint in message and s3.bucket in message
    assert secret not in message and s3.secret_key not in message and s3.access_key not in message
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKNOTKNOWN")
    with pytest.raises(StoreError, match=r"the access key is not known to the store \(InvalidAccessKeyId"):
        S3Store(s3.endpoint, s3.bucket, attempts=1).put(io.BytesIO(data), len(data),
                                                        hashlib.sha256(data).hexdigest())


def test_no_credentials_say_where_they_come_from(s3, monkeypatch):
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError, match="no AWS credentials"):
        S3Store(s3.endpoint, s3.bucket).presign(SHA, 60)


@pytest.mark.parametrize("down, why", [("refuses", "cannot connect to the store"),
                                      ("is silent", "did not answer in time")])
def test_a_store_that_is_down_fails_within_its_bounds(s3, monkeypatch, silent, down, why):
    """Refused at once, or taken and never answered: within the timeouts
    for each of the tries (plus backoff)."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    endpoint = f"http://{THERE}:1" if down == "refuses" else silent[0]
    store = S3Store(endpoint, s3.bucket, connect_timeout=1, read_timeout=1, attempts=2)
    began = time.monotonic()
    with pytest.raises(StoreError, match=why):
        store.put(io.BytesIO(DATA), len(DATA), SHA)
    assert time.monotonic() - began < 15  # bounded, not a measure of speed


def wait_for_put(stored: Stored, path, notes: list[str], wait: float = 60) -> bool | None:
    """What `there` says once the put has ended, asked as a host's session asks."""
    until = time.monotonic() + 15
    while (there := stored.there(SHA.encode(), len(DATA), lambda: open(path, "rb"), notes.append, wait)) is None:
        assert time.monotonic() < until, "the put did not end"
        time.sleep(0.05)
    return there


def test_the_runner_puts_the_copy_once_and_each_host_gets_a_url_for_it(s3, monkeypatch, tmp_path):
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    (tmp_path / "copy").write_bytes(DATA)
    plan = steps.Store(ArtifactStore(s3.bucket, "stored/", s3.endpoint, s3.region))
    notes: list[str] = []
    stored = Stored.make(plan)
    assert wait_for_put(stored, tmp_path / "copy", notes) is True and notes == []
    with urllib.request.urlopen(stored.url(SHA.encode(), 60, notes.append), timeout=10) as answer:
        assert answer.read() == DATA
    # Another run with the same bytes sends nothing.
    assert wait_for_put(Stored.make(plan), tmp_path / "copy", notes) is True
    assert notes == [f"the artifact was in s3://{s3.bucket}/stored/ already: not sent again"]


def test_a_put_the_store_never_answers_is_given_up_and_the_runner_sends(s3, monkeypatch, silent, tmp_path):
    """While the put waits on a store that took the connection and says
    nothing, the hosts wait; past the wait it is given up, once, in words."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    (tmp_path / "copy").write_bytes(DATA)
    stored = Stored.make(steps.Store(ArtifactStore(s3.bucket, "stored/", silent[0], s3.region)))
    notes: list[str] = []
    began = time.monotonic()
    assert wait_for_put(stored, tmp_path / "copy", notes, wait=1) is False
    assert 1 <= time.monotonic() - began < 5  # bounded by the wait, not botocore's read timeout
    assert notes == [f"the put in s3://{s3.bucket}/stored/ took more than 1 s; the runner sends the artifact to"
                     " each host instead"]
    assert stored.there(SHA.encode(), len(DATA), lambda: open(tmp_path / "copy", "rb"), notes.append, 1) is False
    assert len(notes) == 1
