"""Only what changed: the file list kept with every release, and what a host
that holds a live release needs to be sent to make the new one.

The list (`.deployer-sums` in each release) has a line "<sha256> <mode>
<path>" per regular file, sorted by path; the host script `unpack` links
every file whose line did not change from the live release, and checks the
list it ends with against the sha256 the runner computed.
"""

import base64
import binascii
import hashlib
import zlib
from dataclasses import dataclass, field

from deployer.artifact import packaging
from deployer.config import names

# The most of a host's answer kept (its list, gzipped, in base64); a longer
# one is not believed, and the host gets every file.
LIST_LIMIT = 64 * 1024 * 1024
# ... and the most it may unpack to: a few bytes of gzip can stand for
# gigabytes, and the runner must not be made to hold them.
UNPACKED_LIMIT = 8 * LIST_LIMIT


def _lines(manifest: packaging.Manifest) -> dict[str, bytes]:
    """Per path, its line of the list. A path that cannot be a line (a line
    break, or bytes that are not UTF-8) is not listed: such a file is always
    sent, never linked."""
    out = {}
    for path, sha, mode in manifest.sums:
        if "\n" in path or any("\udc80" <= c <= "\udcff" for c in path):
            continue
        out[path] = f"{sha} {mode:o} {path}\n".encode()
    return out


def _text(listed: dict[str, bytes]) -> bytes:
    # Sorted by the path's bytes, as `LC_ALL=C sort -k 3` on the host has it.
    return b"".join(listed[p] for p in sorted(listed, key=lambda p: p.encode()))


@dataclass(frozen=True)
class Live:
    """What `hostscripts.live_state` said of a host's live release."""

    base: str | None = None        # sha256 of its list; None: no live release with a list
    drift: frozenset[str] = frozenset()  # its files that may not be linked (see sh/lib/linkable.sh)
    listed: bytes | None = None    # the list itself, from the host that was asked for it
    # The instance whose live release it is, when it is not the deployed
    # one's (a new instance starts from another's); not part of what is
    # built, so hosts whose seeds hold the same list share one tarball.
    seed: str = field(default="", compare=False)


def parse(stdout: str) -> Live:
    base, drift, listed, seed = None, set(), None, ""
    for row in stdout.splitlines():
        kind, _, value = row.partition(" ")
        if kind == "base" and len(value) == 64:
            base = value
        elif kind == "seed" and names.CONFIG_NAME.fullmatch(value):
            seed = value
        elif kind == "drift":
            drift.add(value)
        elif kind == "sums":
            try:
                listed = _gunzip(base64.b64decode(value, validate=True), UNPACKED_LIMIT)
            except (binascii.Error, zlib.error):
                listed = None
            if listed is not None and hashlib.sha256(listed).hexdigest() != base:
                listed = None  # not the list the host said it has: send everything
    return Live(base, frozenset(drift), listed, seed)


def live_release(stdout: str) -> str:
    """The name of the release the live path pointed to, as `live_state` said:
    "" if there is none, NOT_A_RELEASE if it points at a name deployer does not
    give a release (the host's own text is not shown: it may be hostile)."""
    for row in stdout.splitlines():
        kind, _, value = row.partition(" ")
        if kind == "live":
            return value if names.RELEASE.fullmatch(value) else NOT_A_RELEASE
    return ""


NOT_A_RELEASE = "(a link to something that is not a release)"


def _gunzip(packed: bytes, limit: int) -> bytes | None:
    """One gzip stream unpacked, or None if it is not whole or unpacks past `limit`."""
    d = zlib.decompressobj(wbits=31)
    out = d.decompress(packed, limit)
    if d.unconsumed_tail or not d.eof:
        return None
    return out


@dataclass(frozen=True)
class Delta:
    """What one host is sent: `base` is the list it starts from ("-": none),
    `want` the sha256 of the list it must end with, `send` the paths the
    tarball holds (None: every file)."""

    base: str
    want: str
    drop: bytes
    add: bytes
    send: frozenset[str] | None


def full(manifest: packaging.Manifest) -> Delta:
    listed = _text(_lines(manifest))
    return Delta("-", hashlib.sha256(listed).hexdigest(), b"", listed, None)


def against(manifest: packaging.Manifest, live: Live) -> Delta:
    """The smallest sending that turns `live` into the release of `manifest`:
    the whole artifact (already built) when `live` would give it less than
    a tenth of its files (another app's release as a seed)."""
    if live.base is None or live.listed is None:
        return full(manifest)
    new = _lines(manifest)
    old = set(live.listed.splitlines(keepends=True))
    fresh = set(new.values())
    drifted = {line for line in old if _path(line).decode() in live.drift}
    drop = (old - fresh) | drifted
    add = fresh - (old - drifted)
    sent = {_path(line).decode() for line in add}
    # Files that cannot be listed travel every time.
    sent |= {path for path, _, _ in manifest.sums if path not in new}
    if 10 * (len(manifest.sums) - len(sent)) < len(manifest.sums):
        return full(manifest)
    return Delta(live.base, hashlib.sha256(_text(new)).hexdigest(), b"".join(sorted(drop)),
                 b"".join(sorted(add, key=_path)), frozenset(sent))


def _path(line: bytes) -> bytes:
    return line.rstrip(b"\n").split(b" ", 2)[2]
