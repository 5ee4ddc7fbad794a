"""The tunnel crossed once, through an object store of the private network
(see `steps.Store`, artifact/store.py and remote/sh/fetch-url.sh).

With many hosts, one of them serving the others (relay.py) is a bottleneck
and a point of failure; an object store serves them all. The runner puts the
copy that unpack.sh reads (the lists, then the tarball) in the store once,
named by its sha256, in a thread of its own while the hosts wait; each host
is then given a URL presigned for it alone, which expires once its fetch's
time is up, and checks the sha256 of what it read. Anything that goes wrong
(the put, a host that cannot reach the store) only means that host is sent
the artifact through the tunnel after all.
"""

import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from deployer import steps
from deployer.artifact.store import MAX_PRESIGN, S3Store
from deployer.errors import StoreError


class Stored:
    """One deploy's store, as the runner sees it."""

    def __init__(self, plan: steps.Store, store: S3Store, changed: Callable[[], None] = lambda: None):
        self.plan, self.store = plan, store
        self.changed = changed  # called once a put has ended: hosts wait for it
        self.lock = threading.Lock()
        # Per copy (its sha256): None while it is put, then whether it is there.
        self.puts: dict[bytes, bool | None] = {}
        self.since: dict[bytes, float] = {}  # per copy, when its put started (monotonic seconds)
        self.given_up = threading.Event()  # a put that took too long, or a run over, stops reading its file
        self.asked: set[str] = set()  # hosts whose fetch has ended
        self.fetched: set[str] = set()  # those that read the copy from the store

    @classmethod
    def make(cls, plan: steps.Store, changed: Callable[[], None] = lambda: None) -> "Stored":
        s = plan.store
        return cls(plan, S3Store(s.endpoint, s.bucket, s.prefix, s.region), changed)

    def there(self, sha: bytes, size: int, reader: Callable[[], BinaryIO], note: Callable[[str], None],
              wait: float) -> bool | None:
        """Whether the copy whose sha256 is `sha` is in the store: None while
        it is put. The first to ask starts the put, in a thread of its own:
        the hosts' sessions go on meanwhile. A put still going after `wait`
        seconds is given up (False): the runner sends instead, within the
        step's time."""
        late = False
        with self.lock:
            if sha in self.puts:
                late = self.puts[sha] is None and time.monotonic() - self.since[sha] > wait
                if not late:
                    return self.puts[sha]
                self.puts[sha] = False
                self.given_up.set()
            else:
                self.puts[sha], self.since[sha] = None, time.monotonic()
        if late:
            note(f"the put in {self.plan.store.url} took more than {wait:g} s; the runner sends the artifact to"
                 " each host instead")
            return False
        try:
            threading.Thread(target=self._put, args=(sha, size, reader, note), daemon=True,
                             name="deployer-store-put").start()
        except RuntimeError as e:  # no thread to be had: sent instead
            self._ended(sha, False, note, f"the artifact could not be put in {self.plan.store.url} ({e})")
        return None

    def _put(self, sha: bytes, size: int, reader: Callable[[], BinaryIO], note: Callable[[str], None]) -> None:
        try:
            with reader() as f:
                sent = self.store.put(_Abandoned(f, self.given_up), size, sha.decode())
        except Exception as e:  # noqa: BLE001 - whatever it was, the hosts are sent the artifact instead
            self._ended(sha, False, note, f"the artifact could not be put in {self.plan.store.url} ("
                        + (str(e) if isinstance(e, (StoreError, OSError)) else type(e).__name__) + ")")
            return
        self._ended(sha, True, note, "" if sent else f"the artifact was in {self.plan.store.url} already:"
                    " not sent again")

    def _ended(self, sha: bytes, ok: bool, note: Callable[[str], None], said: str) -> None:
        with self.lock:
            late = self.puts.get(sha) is False  # given up meanwhile: said already
            self.puts[sha] = ok and not late
        self.changed()
        if said and not late and not self.given_up.is_set():
            note(said + ("" if ok else "; the runner sends it to each host instead"))

    def close(self) -> None:
        """The run is over: a put still going stops, and says nothing after the run's last line."""
        self.given_up.set()

    def url(self, sha: bytes, seconds: float, note: Callable[[str], None]) -> str | None:
        """A URL that reads the copy for `seconds`; None if none can be made."""
        try:
            return self.store.presign(sha.decode(), min(MAX_PRESIGN, max(1, int(seconds))))
        except StoreError as e:
            note(f"{e}; the runner sends the artifact instead")
            return None


class _Abandoned:
    """A put's file, which fails its next read once the put is given up."""

    def __init__(self, f: BinaryIO, given_up: threading.Event):
        self.f, self.given_up = f, given_up

    def read(self, n: int = -1) -> bytes:
        if self.given_up.is_set():
            raise OSError("given up")
        return self.f.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()
