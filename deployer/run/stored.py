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
from collections.abc import Callable
from typing import BinaryIO

from deployer import steps
from deployer.artifact.store import S3Store
from deployer.errors import StoreError


class Stored:
    """One deploy's store, as the runner sees it."""

    def __init__(self, plan: steps.Store, store: S3Store):
        self.plan, self.store = plan, store
        self.lock = threading.Lock()
        # Per copy (its sha256): None while it is put, then whether it is there.
        self.puts: dict[bytes, bool | None] = {}
        self.asked: set[str] = set()  # hosts whose fetch has ended
        self.fetched: set[str] = set()  # those that read the copy from the store

    @classmethod
    def make(cls, plan: steps.Store) -> "Stored":
        s = plan.store
        return cls(plan, S3Store(s.endpoint, s.bucket, s.prefix, s.region))

    def there(self, sha: bytes, size: int, reader: Callable[[], BinaryIO],
              note: Callable[[str], None]) -> bool | None:
        """Whether the copy whose sha256 is `sha` is in the store: None while
        it is put. The first to ask starts the put, in a thread of its own:
        the hosts' sessions go on meanwhile."""
        with self.lock:
            if sha in self.puts:
                return self.puts[sha]
            self.puts[sha] = None
        threading.Thread(target=self._put, args=(sha, size, reader, note), daemon=True,
                         name="deployer-store-put").start()
        return None

    def _put(self, sha: bytes, size: int, reader: Callable[[], BinaryIO], note: Callable[[str], None]) -> None:
        ok = False
        try:
            with reader() as f:
                sent = self.store.put(f, size, sha.decode())
            ok = True
            if not sent:
                note(f"the artifact was in {self.plan.store.url} already: not sent again")
        except (StoreError, OSError) as e:
            note(f"the artifact could not be put in {self.plan.store.url} ({e}); the runner sends it to each"
                 " host instead")
        finally:
            with self.lock:
                self.puts[sha] = ok

    def url(self, sha: bytes, seconds: float) -> str | None:
        """A URL that reads the copy for `seconds`; None if none can be made."""
        try:
            return self.store.presign(sha.decode(), max(1, int(seconds)))
        except StoreError:
            return None
