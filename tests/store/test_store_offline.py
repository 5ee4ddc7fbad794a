"""What the S3 store does without a server: botocore taken in only when a
store is made, a clear word when it is missing, and presigned URLs (no
network: signing is local)."""

import io
import os
import random
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

import pytest

from deployer.artifact.store import S3Store
from deployer.errors import StoreError
from deployer.run.upload import _Prefixed

SHA = "ab" * 32


def test_botocore_is_taken_in_only_when_a_store_is_made_and_its_absence_is_said():
    code = """
import sys
import deployer.artifact.store as store
assert "botocore" not in sys.modules
sys.modules["botocore"] = None  # as if not installed
try:
    store.S3Store("http://198.18.9.2:8333", "b")
except store.StoreError as e:
    print(e)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == "an S3 artifact store needs botocore: pip install 'deployer[s3]'\n", done.stderr


@pytest.fixture
def store(monkeypatch) -> S3Store:
    pytest.importorskip("botocore")
    for name, value in {"AWS_ACCESS_KEY_ID": "AKOFFLINE", "AWS_SECRET_ACCESS_KEY": "offline-secret",
                        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    return S3Store("http://user:pw@198.18.9.2:8333/", "artifacts", "deployer/", "eu-west-1")


def test_a_presigned_url_is_sigv4_for_the_object_and_the_time_asked(store):
    url = urlsplit(store.presign(SHA, 300))
    query = parse_qs(url.query)
    assert (url.path, query["X-Amz-Expires"], query["X-Amz-Algorithm"]) == \
        (f"/artifacts/deployer/{SHA}", ["300"], ["AWS4-HMAC-SHA256"])
    assert "/eu-west-1/s3/" in query["X-Amz-Credential"][0]


def test_names_and_limits(store):
    assert store.key(SHA) == f"deployer/{SHA}"
    assert store.where == "http://198.18.9.2:8333"  # no user part in messages
    with pytest.raises(ValueError):
        store.key("AB" * 32)
    for seconds in (0, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError):
            store.presign(SHA, seconds)


def test_a_reader_that_cannot_seek_is_refused_before_anything_is_sent(store):
    class Once:
        def read(self, n: int = -1) -> bytes:
            return b""

    with pytest.raises(TypeError, match="seek"):
        store.put(Once(), 0, SHA)


def test_an_unknown_profile_is_a_store_error(monkeypatch):
    pytest.importorskip("botocore")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    with pytest.raises(StoreError, match="no such AWS profile"):
        S3Store("http://198.18.9.2:8333", "artifacts", profile="nosuch").presign(SHA, 60)


def test_an_endpoint_botocore_refuses_is_a_store_error():
    with pytest.raises(StoreError):
        S3Store("http://[:]", "bucket")


def test_the_copy_a_put_reads_seeks_and_reads_as_the_bytes_it_stands_for(tmp_path):
    """The lists, then the tarball (upload._Prefixed), for a put that botocore
    may read again from the start: every seek and read as io.BytesIO of the
    same bytes does them."""
    head, body = os.urandom(37), os.urandom(5000)
    (tmp_path / "tarball").write_bytes(body)
    rng = random.Random(20)
    for _ in range(500):
        mine, same = _Prefixed(head, open(tmp_path / "tarball", "rb")), io.BytesIO(head + body)
        with mine:
            for _ in range(6):
                whence, offset = rng.choice([io.SEEK_SET, io.SEEK_CUR, io.SEEK_END]), rng.randint(-50, 6000)
                if offset + {io.SEEK_SET: 0, io.SEEK_CUR: same.tell(), io.SEEK_END: len(head + body)}[whence] < 0:
                    with pytest.raises(ValueError):  # before the start: refused, where BytesIO may clamp
                        mine.seek(offset, whence)
                    continue
                same.seek(offset, whence)
                assert mine.seek(offset, whence) == same.tell()
                n = rng.choice([-1, 1, 10, 100, 10000])
                assert mine.read(n) == same.read(n)
                assert mine.tell() == same.tell()
