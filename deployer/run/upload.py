"""The upload: what each host is sent to make the new release, found out in
the same session that makes it. Each host first says what its live release
holds; the runner then builds, once per live release, a tarball of only
what differs (with the lists of what goes and what comes), and sends it on
the unpack's stdin; or, with a relay, the first host keeps a copy and the
others read it from there (see relay.py); or, with a store, the runner puts
it there and every host reads it from there (see stored.py)."""

import gzip
import hashlib
import io
import itertools
import os
import threading
import time
from dataclasses import dataclass, replace

from deployer import steps
from deployer.artifact import delta, packaging
from deployer.connectors.result import Result
from deployer.run import relay, session
from deployer.run.progress import Progress
from deployer.run.stored import Stored
from deployer.run.undo import Undo, UndoLog


@dataclass(frozen=True)
class Sending:
    """A tarball of the files a host lacks, and what the unpack reads before it."""

    path: str
    size: int
    sha: bytes
    base: bytes
    want: bytes
    lists: bytes  # the gzipped drop and add lists, each after its size
    copy_sha: bytes  # of the lists and the tarball, as the relay's source keeps them

    def head(self, how: str) -> bytes:
        line = b"%s %s %s %s\n" % (self.sha, self.base, self.want, how.encode())
        return line if how in ("fetched", "stored") else line + self.lists

    @property
    def copy_size(self) -> int:
        return len(self.lists) + self.size

    def copy(self) -> "_Prefixed":
        """What a host that reads it from elsewhere checks by `copy_sha`: the lists, then the tarball."""
        return _Prefixed(self.lists, open(self.path, "rb"))


class Uploads:
    def __init__(self, workdir: str, progress: Progress, undo: UndoLog, transports: dict):
        self.workdir = workdir
        self.progress = progress
        self.undo = undo
        self.transports = transports  # the executor's, by host name, once connected
        self.lock = threading.Lock()
        # Per host, what its live release holds (for sending only what changed).
        self.live: dict[str, delta.Live] = {}
        self.previous: dict[str, str] = {}  # per host, its live release before the run
        # Per live release, the tarball of what differs and the lists before
        # it: made by the first host that needs it, while the others wait.
        self.sendings: dict[delta.Live, Sending] = {}
        self.offer: relay.Offer | None = None  # the upload's relay, once it starts
        self.stored: Stored | None = None  # the upload's store, once it starts
        # Held while a tarball is looked for or built, apart from `lock`: a
        # build reads, hashes and compresses the whole tree, one at a time.
        self.building = threading.Lock()
        # Wakes the hosts waiting on another's answer (the stdins below) when one comes.
        self.bell = session.Bell()

    def begin(self, group: session.Group) -> None:
        """Before a group's sessions start: the relay's one-time key, or the
        store's client, if an upload in it has either."""
        for _, step in group.steps:
            if isinstance(step, steps.Upload) and step.relay is not None and self.offer is None:
                self.offer = relay.Offer.make(step.relay)
            if isinstance(step, steps.Upload) and step.store is not None and self.stored is None:
                self.stored = Stored.make(step.store, self.bell.ring)

    def close(self) -> None:
        if self.stored is not None:
            self.stored.close()
        self.bell.close()

    def entries(self, step: steps.Upload, host: str, timeout: float) -> list[session.Made]:
        self.undo.record(Undo(host, f"undo {step.title}", step.undo))
        state = step.state_first if host == step.hosts[0] else step.state
        made = [session.Made(session.Entry(state.line(), timeout=timeout, keep=delta.LIST_LIMIT),
                             then=lambda result: self.learned(host, result, host == step.hosts[0]))]
        unpack = session.Entry(step.command.line(), timeout=timeout,
                               data=self.bell.deferred(lambda: self.sending(step, host), host))
        offer = self.offer
        if self.stored is not None:
            # The put may take as long as a step, then the read as long again.
            fetch = session.Entry(step.store.fetch.line(), timeout=2 * timeout,
                                  data=self.bell.deferred(lambda: self.store_input(step, host, timeout), host))
        elif offer is None:
            return [*made, session.Made(unpack)]
        elif host == offer.plan.source:
            # Withdrawn in the source's next session, and on failure.
            self.undo.record(Undo(host, "withdraw the relay key", offer.plan.close))
            self.undo.tidy(host, offer.plan.close.line())
            return [*made, session.Made(unpack, then=lambda result: self.offered(host, result))]
        else:
            # It waits for the source to unpack, then reads within its own
            # limit: a slow source means the runner sends, not a failed step.
            fetch = session.Entry(offer.plan.fetch.line(), timeout=2 * timeout,
                                  data=self.bell.deferred(lambda: self.fetch_input(step, host, timeout), host))
        return [*made, session.Made(fetch, then=lambda result: self.fetched(host, result)), session.Made(unpack)]

    def learned(self, host: str, result: Result, first: bool) -> None:
        with self.lock:
            self.live[host] = delta.parse(result.stdout) if result.ok else delta.Live()
            self.previous[host] = delta.live_release(result.stdout)
        # Only the first host's list is the others' to wait for.
        self.bell.ring(None if first else host)

    def offered(self, host: str, result: Result) -> None:
        with self.lock:
            self.offer.open = result.ok and "is offered to the other hosts" in result.stdout
        self.bell.ring()
        refused = [line for line in result.stdout.splitlines() if "is not offered" in line]
        if result.ok and refused:
            self.progress.note(f"{host}: {refused[0]}; the runner sends it to each of them")

    def fetched(self, host: str, result: Result) -> None:
        said = result.stdout.strip()
        via = self.stored or self.offer
        with self.lock:
            via.asked.add(host)
            freed = self.offer is not None and host in self.offer.reading
            if freed:
                self.offer.reading.discard(host)
            if result.ok and said == "fetched":
                via.fetched.add(host)
        # Its own unpack waits for it; the others only if it frees a turn to read.
        self.bell.ring(None if freed else host)
        if result.ok and said and said != "fetched":
            self.progress.note(f"{host}: the artifact was {said}; the runner sends it instead")

    def ended(self, host: str) -> None:
        """`host`'s session is over. A host that never said what it holds gets
        everything; hosts waiting for its list go on, and so do those waiting
        to read the artifact from it."""
        with self.lock:
            self.live.setdefault(host, delta.Live())
            if self.offer is not None:
                # Nor waits for its turn: a place it kept would hold up the others.
                self.offer.reading.discard(host)
                self.offer.waiting.pop(host, None)
                if host == self.offer.plan.source:
                    self.offer.give_up()
        self.bell.ring()

    def choice(self, step: steps.Upload, host: str) -> Sending | None:
        """What makes the new release on `host`, once it is known what the
        host holds (and, for a host with the first host's live release,
        once the first host has sent its list); None until then."""
        first = step.hosts[0]
        with self.lock:
            live = self.live.get(host)
            if live is None or (live.base and live.listed is None and first not in self.live):
                return None
            if live.listed is None and live.base and self.live[first].base == live.base:
                live = replace(live, listed=self.live[first].listed)
        return self.prepared(step, live)

    def sending(self, step: steps.Upload, host: str) -> session.Piece | None:
        """The unpack's stdin on `host` (see remote/sh/unpack.sh); None until known."""
        s = self.choice(step, host)
        if s is None:
            return None
        how, key = "sent", b""
        with self.lock:
            offer, via = self.offer, self.stored or self.offer
            if offer is not None and host == offer.plan.source:
                offer.path = s.path if s.size >= relay.MIN_SIZE else ""
                if offer.path:
                    how, key = "keep", b"%s %s\n" % (s.copy_sha, offer.public.encode())
            elif via is not None and host not in via.asked:
                return None  # not before the fetch has ended
            elif via is not None and host in via.fetched:
                how = "stored" if via is self.stored else "fetched"
        head = s.head(how) + key
        if how in ("fetched", "stored"):
            return session.Piece(len(head), lambda: io.BytesIO(head))
        return session.Piece(len(head) + s.size, lambda: _Prefixed(head, open(s.path, "rb")))

    def fetch_input(self, step: steps.Upload, host: str, timeout: float = 600.0) -> session.Piece | None:
        """The fetch's stdin on `host` (see remote/sh/fetch.sh): what it needs to
        read the artifact from the source, once the source offers it and
        fewer than the relay's limit read it, or `-` when it does not or
        `host` needs another tarball; None until known."""
        s = self.choice(step, host)
        if s is None:
            return None
        offer, moved = self.offer, False
        with self.lock:
            if offer.path is None or (offer.path == s.path and offer.open is None):
                return None
            go = offer.path == s.path and offer.open
            if go:
                # At most `limit` hosts connect to the source at once, the
                # others in turn, first come first (its sshd drops what
                # MaxStartups does not take). One that has waited too long is
                # sent the artifact instead: its fetch's time runs meanwhile.
                since = offer.waiting.setdefault(host, time.monotonic())
                turn = host in itertools.islice(offer.waiting, max(0, offer.plan.limit - len(offer.reading)))
                if not turn and time.monotonic() - since < min(relay.TURN_WAIT, timeout / 2):
                    return None
                del offer.waiting[host]
                go = turn
                if go:
                    offer.reading.add(host)
                moved = not turn
        if moved:
            self.bell.ring()  # it gave up its place: those behind it move up (a turn taken moves no one)
        data = b"-\n"
        if go:
            source = self.transports[offer.plan.source]
            data = (b"%s %d\n%s\n%s\n" % (s.copy_sha, s.copy_size, source.user.encode(),
                                             source.known_line(relay.ALIAS).encode()) + offer.private)
        return session.Piece(len(data), lambda: io.BytesIO(data))

    def store_input(self, step: steps.Upload, host: str, timeout: float) -> session.Piece | None:
        """The store fetch's stdin on `host` (see remote/sh/fetch-url.sh): the
        copy's sha256 and size and a URL presigned for it, once the copy is
        in the store; `-` when it is small (sent as it is) or not there."""
        s = self.choice(step, host)
        if s is None:
            return None
        url = None
        if s.size >= relay.MIN_SIZE:
            # As a relay's turn: a put that takes half the step's time means the runner sends.
            there = self.stored.there(s.copy_sha, s.copy_size, s.copy, self.progress.note,
                                      min(relay.TURN_WAIT, timeout / 2))
            if there is None:
                return None
            # Valid for as long as the fetch may take: it starts now.
            url = self.stored.url(s.copy_sha, timeout, self.progress.note) if there else None
        data = b"-\n" if url is None else b"%s %d\n%s\n" % (s.copy_sha, s.copy_size, url.encode())
        return session.Piece(len(data), lambda: io.BytesIO(data))

    def prepared(self, step: steps.Upload, live: delta.Live) -> Sending:
        """The tarball and the lists for a host whose live release is `live`:
        made once per deploy for all the hosts that hold the same one (a
        build that failed is tried again by the next host that asks)."""
        with self.building:
            if live not in self.sendings:
                self.sendings[live] = self._build(step, live, len(self.sendings))
            return self.sendings[live]

    def _build(self, step: steps.Upload, live: delta.Live, n: int) -> Sending:
        b = step.build
        plan = delta.against(b.manifest, live)
        path = step.local
        if plan.send is not None:
            path = os.path.join(self.workdir, f"changed-{n}.tar.gz")
            packaging.build(b.source, b.rules, path, expect=b.manifest.digest, only=plan.send)
        lists = b"".join(b"%d\n%s" % (len(part), part)
                         for part in (gzip.compress(plan.drop, mtime=0), gzip.compress(plan.add, mtime=0)))
        # One read for both: the tarball's sha256, and that of what a
        # host keeps for the others (the lists, then the tarball).
        tarball, copy = hashlib.sha256(), hashlib.sha256(lists)
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                tarball.update(chunk)
                copy.update(chunk)
                size += len(chunk)
        return Sending(path, size, tarball.hexdigest().encode(), plan.base.encode(), plan.want.encode(), lists,
                       copy.hexdigest().encode())


class _Prefixed:
    """Some bytes, then a file: read in chunks, so the artifact is never in
    memory whole; seekable, for a store's put that is tried again."""

    def __init__(self, head: bytes, f):
        self.head, self.f, self.pos = head, f, 0

    def read(self, n: int = -1) -> bytes:
        if self.pos < len(self.head):
            chunk = self.head[self.pos:] if n < 0 else self.head[self.pos:self.pos + n]
            if n < 0 or len(chunk) < n:
                chunk += self.f.read(n if n < 0 else n - len(chunk))
        else:
            chunk = self.f.read(n)
        self.pos += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos,
                io.SEEK_END: len(self.head) + os.fstat(self.f.fileno()).st_size}.get(whence)
        if base is None or base + offset < 0:
            raise ValueError(f"cannot seek to {offset} from {whence}")
        self.pos = base + offset
        self.f.seek(max(0, self.pos - len(self.head)))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "_Prefixed":
        return self

    def __exit__(self, *_) -> None:
        self.close()
