"""The release tarball: which files go in, which are withheld and why, their hash, and the archive.

Safe by default: `package: {source: .}` sits beside the VPN config, SSH keys and `.git`, so those are
withheld unless the target names them in `package/include`; a deploy must never spread credentials to
every web host because nobody thought of an exclude pattern.

The hash is taken from the tree (paths, exec bits, bytes, link targets) when the plan is made, so the
release id is known before anything runs; the build hashes what it writes and fails if the tree changed.
"""

import contextlib
import hashlib
import os
import posixpath
import re
import shutil
import stat
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from concurrent.futures import Future

import pathspec

from deployer.errors import StepFailed, UsageError

# Withheld whatever their type (`.git` is a file in a worktree); names are
# compared in lower case (`.ENV` is read as .env on a case-insensitive disk).
_WITHHELD_NAMES = {
    **dict.fromkeys((".git", ".hg", ".svn", ".bzr", "_darcs", "cvs"), "version control directory"),
    **dict.fromkeys((".ssh", ".gnupg", ".aws", ".docker", ".kube", ".azure", ".gcloud"), "credentials directory"),
    **dict.fromkeys((".netrc", ".pgpass", ".git-credentials", ".npmrc", ".pypirc", ".htpasswd"),
                    "credentials file"),
    **dict.fromkeys((".env", ".envrc"), "environment file"),
}
_SSH_KEYS = frozenset(f"id_{kind}{sk}" for kind in ("rsa", "dsa", "ecdsa", "ed25519") for sk in ("", "_sk"))
_KEY_SUFFIXES = (".pem", ".key", ".p12", ".pfx", ".jks", ".keystore", ".ppk", ".der")
# Whole files up to this size are checked for a key; larger ones (media,
# bundles) only this far: certificate chains with a key after them are small.
_KEY_SCAN = 1024 * 1024
_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|-----BEGIN OpenVPN Static key"
                          rb"|PuTTY-User-Key-File-")
# Every match of _PRIVATE_KEY holds one of these: `in` looks for them at about 1 GB/s, while the regex alone
# reads about 100 MB/s (0.15 to 0.25 s for the benchmark app below), so it runs only where they are.
_KEY_HINTS = (b"-----BEGIN ", b"PuTTY-User-Key-File-")

# Measured on the example app with Django's source as ballast (3,512 files, 20 MB packaged; a 24.7 MB tar
# stream) on a 2-core runner, medians of 11 to 15 builds, the machine shared:
#   d=$(mktemp -d) && cp -r examples/djangoapp $d/app && cp -rL /usr/lib/python3/dist-packages/django \
#     $d/app/ballast_django && .venv/bin/python -m timeit -v -n 1 -r 15 -s "import os; from deployer import \
#     packaging as p; r = p.Rules(exclude=('__pycache__', '*.pyc'))" "p.build('$d/app', r, '$d/a.tgz'); \
#     os.unlink('$d/a.tgz')"
# level 1: 0.30 s for 6.04 MB; 2: 0.30 to 0.34 s, 5.73 MB; 3: 0.32 s, 5.53 MB; 4: 0.37 s, 5.19 MB; 6: 0.55 s,
# 4.84 MB. Before (tarfile through gzip.GzipFile, one thread): level 6, 1.40 s for 4.80 MB. Of the CPU time,
# the main thread's walk, reads, hashes and headers take 0.19 s and zlib 0.19 s at level 1, 0.20 s at 2,
# 0.33 s at 4, 0.6 s at 6; compressing in the main thread instead took 0.40 s at level 2. Level 2 costs 6%
# more CPU than 1 for 5% fewer bytes; above it, CPU grows faster than the bytes shrink, and on a busy runner
# the build waits for CPU, while the artifact crosses the VPN once per deploy at most. 1 MiB members cost
# 0.3% in size against one gzip stream.
_GZIP_LEVEL = 2
_CHUNK = 1024 * 1024  # bytes of tar stream per gzip member
_WORKERS = 2  # threads compressing members while the main thread reads, hashes and writes headers

_Reasons = dict[str, str]  # relative path: why


@dataclass(frozen=True)
class Rules:
    exclude: tuple[str, ...] = ()  # .gitignore lines from package/exclude
    include: tuple[str, ...] = ()  # exact paths from the source root, packaged despite the safe defaults
    # (absolute path, reason): the targets file and the files it names (VPN config, SSH identity files,
    # known_hosts), e.g. ("/srv/app/vpn/demo.ovpn", "named in targets.yaml"); withheld unless included.
    protected: tuple[tuple[str, str], ...] = ()
    # (path in the release, folder on this machine): trees deployer made (the wheels), packaged whole under
    # that path, without the safe defaults' checks; their files whose names begin with a dot stay out.
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Manifest:
    digest: str  # sha256 hex of the packaged tree: its paths, link targets, modes and `sums`
    files: tuple[str, ...]  # packaged relative paths (regular files and symlinks), sorted
    size: int  # total bytes of the packaged regular files
    withheld: tuple[tuple[str, str], ...]  # (relative path, reason): kept out by the safe defaults
    included: tuple[tuple[str, str], ...]  # (relative path, reason it would be withheld): in by package/include
    # (relative path, sha256 hex of its content, 0o644 or 0o755 as packaged): every packaged regular file,
    # sorted by path, e.g. ("manage.py", "9f86d0...", 0o755).
    sums: tuple[tuple[str, str, int], ...] = ()


def scan(source: str, rules: Rules) -> Manifest:
    """What `build` would package, read-only: the same walk, reads and hashes, no archive."""
    return _pack(source, rules, None, None)


def build(source: str, rules: Rules, dest: str, expect: str | None = None, *,
          only: frozenset[str] | None = None) -> Manifest:
    """Write the gzipped tarball at `dest`, which must not exist yet; each file is read once.

    With `expect` (the digest the plan was made from), a tree that changed since is a failure and no
    tarball is left behind. With `only`, a regular file whose relative path is not in it is left out of
    the archive (directories and symlinks always go in; a path the tree does not package is ignored); it
    is still read and hashed, so the manifest and the `expect` check cover the whole tree.
    """
    # "x" fails on anything already at dest, a planted symlink included, instead of writing through it.
    with open(dest, "xb") as raw:
        try:
            with _Archive(raw) as archive:
                manifest = _pack(source, rules, archive, only)
            if expect is not None and manifest.digest != expect:
                raise StepFailed(f"{source}: source changed since the plan was made (planned "
                                 f"{expect[:12]}, found {manifest.digest[:12]}); deploy again")
        except BaseException:
            os.unlink(dest)
            raise
    return manifest


def _pack(source: str, rules: Rules, archive: "_Archive | None", only: frozenset[str] | None) -> Manifest:
    root = os.path.realpath(source)
    include = _include_paths(rules.include)
    protected = _identities(rules.protected)
    entries, withheld, included = _walk(source, rules, include, protected)
    base = os.path.join(source, "")
    every = sorted([(rel, is_link, base + rel, False) for rel, is_link in entries] + _extra(rules.extra))
    digest = hashlib.sha256()
    files: list[str] = []
    sums: list[tuple[str, str, int]] = []
    size = 0
    for rel, is_link, path, ours in every:
        if is_link:
            with _reading(path):
                target = os.readlink(path)
            _check_link(root, source, rel, target)
            digest.update(_prefixed(os.fsencode(rel)) + b" l" + _prefixed(os.fsencode(target)))
            if archive is not None:
                archive.link(rel, target)
            files.append(rel)
            continue
        try:
            # No following a link swapped in since the walk, no blocking on a FIFO swapped in.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            # A protected file need not be readable (a key only root may read): withheld all the same.
            reason = _protected(protected, path)
            if not reason or rel in include:
                raise UsageError(f"cannot package {path}: {e.strerror}") from None
            withheld[rel] = reason
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"{path}: changed while being packaged")
            # The walk left protection to this check of the file actually opened, by its inode.
            reason = None if ours else protected.get((st.st_dev, st.st_ino))
            if reason:
                if rel not in include:
                    withheld[rel] = reason
                    continue
                included.setdefault(rel, reason)
            head = _read(fd, min(st.st_size, _KEY_SCAN), path)
            if not ours and (_KEY_HINTS[0] in head or _KEY_HINTS[1] in head) and _PRIVATE_KEY.search(head):
                if rel not in include:
                    withheld[rel] = "contains a private key"
                    continue
                included.setdefault(rel, "contains a private key")
            # The runner's modes would be applied as root on the hosts: only the exec bit survives.
            mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
            ship = archive is not None and (only is None or rel in only)
            if archive is not None:
                archive.file(rel, mode, st.st_size, head, ship)
            if len(head) == st.st_size:
                sha = hashlib.sha256(head).digest()
            else:
                h = hashlib.sha256(head)
                left = st.st_size - len(head)
                while left:
                    chunk = _read(fd, min(left, _KEY_SCAN), path)
                    h.update(chunk)
                    if ship:
                        archive.write(chunk)
                    left -= len(chunk)
                sha = h.digest()
                if ship:
                    archive.write(_padding(st.st_size))
        finally:
            os.close(fd)
        # The content by its hash: the digest is a function of the paths, the link targets and `sums`.
        digest.update(_prefixed(os.fsencode(rel)) + b" f%o %d:" % (mode, st.st_size) + sha)
        sums.append((rel, sha.hex(), mode))
        files.append(rel)
        size += st.st_size
    return Manifest(digest.hexdigest(), tuple(files), size, tuple(sorted(withheld.items())),
                    tuple(sorted(included.items())), tuple(sums))


def _extra(trees: tuple[tuple[str, str], ...]) -> list[tuple[str, bool, str, bool]]:
    """The regular files of the trees deployer made, as entries of the walk: (path in the release, False,
    path here, True)."""
    out = []
    for prefix, top in trees:
        for folder, dirs, names in os.walk(top, onerror=_raise):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel_dir = os.path.relpath(folder, top)
            for name in names:
                if not name.startswith("."):
                    rel = posixpath.normpath(posixpath.join(prefix, rel_dir, name))
                    out.append((rel, False, os.path.join(folder, name), True))
    return out


def _raise(error: OSError) -> None:
    raise UsageError(f"cannot package {error.filename}: {error.strerror}")


def copy(source: str, dest: str, rules: Rules) -> int:
    """The tree of `source` in the new folder `dest` (mode 0700), for a build to run in; how many files and
    links it copied. Version control folders stay out, and so do the files the rules protect (the targets
    file, the keys and VPN config it names) unless included: in the copy, no inode would tell them any
    more. Whatever else the safe defaults withhold (by name, or a key by its content) is copied, and
    withheld again when the copy is packaged. Files keep their modes and times (folders are made anew, for
    the build to write in); links are copied as links; FIFOs and sockets stay out."""
    include = _include_paths(rules.include)
    protected = _identities(rules.protected)
    os.mkdir(dest, 0o700)
    count = 0
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with _reading(os.path.join(source, rel_dir)), os.scandir(os.path.join(source, rel_dir)) as it:
            children = [(child.name, _kind(child), child) for child in it]
        for name, kind, child in children:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel not in include:
                if kind == _DIR and _WITHHELD_NAMES.get(name.lower()) == "version control directory":
                    continue
                with _reading(child.path):
                    st = child.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) in protected:
                    continue
            target = os.path.join(dest, rel)
            with _reading(child.path):
                if kind == _DIR:
                    os.mkdir(target)
                    pending.append(rel)
                elif kind == _LINK:
                    os.symlink(os.readlink(child.path), target)
                    count += 1
                elif kind == _FILE:
                    shutil.copy2(child.path, target, follow_symlinks=False)
                    count += 1
    return count


def _read(fd: int, n: int, path: str) -> bytes:
    """Exactly n bytes: a file that ends sooner was cut while being read."""
    try:
        data = os.read(fd, n) if n else b""
        while len(data) < n:
            more = os.read(fd, n - len(data))
            if not more:
                raise UsageError(f"{path}: changed while being packaged")
            data += more
    except OSError as e:
        raise UsageError(f"cannot package {path}: {e.strerror}") from None
    return data


_DIR, _FILE, _LINK, _OTHER = "d", "f", "l", "o"


def _kind(entry: os.DirEntry) -> str:
    # From the directory listing itself where the file system gives types (no stat per entry).
    if entry.is_symlink():
        return _LINK
    if entry.is_dir(follow_symlinks=False):
        return _DIR
    return _FILE if entry.is_file(follow_symlinks=False) else _OTHER


def _walk(source: str, rules: Rules, include: frozenset[str], protected: "_Identities",
          ) -> tuple[list[tuple[str, bool]], _Reasons, _Reasons]:
    """Candidates (path, whether it is a symlink), sorted; what the defaults withhold by name or protection,
    and what include lets in despite them. A regular file's identity (is it protected?) and content are
    checked later, on the file as opened."""
    try:
        spec = pathspec.GitIgnoreSpec.from_lines(rules.exclude)
    except ValueError as e:
        raise UsageError(f"package/exclude: {e}") from None
    entries: list[tuple[str, bool]] = []
    withheld: _Reasons = {}
    included: _Reasons = {}
    seen: set[str] = set()
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        dir_path = os.path.join(source, rel_dir)
        try:
            # os.walk would skip a directory it cannot read, and the release would silently lack it.
            with os.scandir(dir_path) as it:
                # Names are unique in a directory: the sort never compares two entries.
                children = sorted((child.name, _kind(child), child) for child in it)
            for name, kind, child in children:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                is_dir = kind == _DIR
                # pathspec tells a directory by its trailing slash (`media/` matches no file).
                if spec.match_file(rel + "/" if is_dir else rel):
                    _refuse_include_under(include, rel, "is excluded by package/exclude")
                    continue
                reason = _withheld_by_name(name, is_dir)
                if reason or kind in (_LINK, _OTHER) or (is_dir and protected.dirs):
                    st = child.stat(follow_symlinks=False)
                    reason = protected.get((st.st_dev, st.st_ino)) or reason
                if rel in include:
                    seen.add(rel)
                    if reason:
                        included[rel] = reason
                elif reason:
                    # Not walked: neither its files nor, say, a FIFO inside can matter.
                    _refuse_include_under(include, rel, f"is inside {rel}, which is withheld ({reason});"
                                                        f" include {rel} itself")
                    withheld[rel] = reason
                    continue
                if is_dir:
                    pending.append(rel)
                elif kind == _OTHER:
                    # A FIFO would block the hash forever; a socket or device has no place in a release.
                    raise UsageError(f"{os.path.join(source, rel)}: not a regular file or symlink;"
                                     " add it to package/exclude")
                else:
                    entries.append((rel, kind == _LINK))
        except OSError as e:
            raise UsageError(f"cannot package {e.filename or dir_path}: {e.strerror}") from None
    missing = sorted(include - seen)
    if missing:
        raise UsageError(f"package/include: {missing[0]}: no such file or directory in {source}"
                         " (include takes exact paths, not patterns)")
    return sorted(entries), withheld, included


def _withheld_by_name(name: str, is_dir: bool) -> str | None:
    lower = name.lower()
    if lower in _WITHHELD_NAMES:
        return _WITHHELD_NAMES[lower]
    if is_dir:
        return None
    if lower in _SSH_KEYS or lower.endswith(_KEY_SUFFIXES):
        return "private key (by name)"
    if lower.endswith(".ovpn"):
        return "VPN config (by name)"
    if lower.startswith(".env.") or lower.endswith(".env"):
        return "environment file"
    if ".tfstate" in lower:
        return "Terraform state (holds secrets)"
    return None


def _include_paths(entries: tuple[str, ...]) -> frozenset[str]:
    out = set()
    for entry in entries:
        rel = posixpath.normpath(entry)
        if entry.startswith("/") or ".." in entry.split("/") or rel == ".":
            raise UsageError(f"package/include: {entry}: must be a path inside the source, relative to it")
        out.add(rel)
    return frozenset(out)


def _refuse_include_under(include: frozenset[str], rel: str, why: str) -> None:
    for entry in sorted(include):
        if entry == rel or entry.startswith(rel + "/"):
            raise UsageError(f"package/include: {entry} {why}")


class _Identities(dict[tuple[int, int], str]):
    """Protected files by (device, inode): reason, so any spelling of the path (or a hard link) is
    recognised; `dirs` says whether one of them is a directory, which only then costs the walk a stat
    per directory."""

    dirs = False


def _identities(protected: tuple[tuple[str, str], ...]) -> _Identities:
    out = _Identities()
    for path, reason in protected:
        for st_of in (os.stat, os.lstat):
            try:
                st = st_of(path)
            except OSError:
                continue  # e.g. a known_hosts that does not exist yet: nothing to withhold
            out[(st.st_dev, st.st_ino)] = reason
            out.dirs = out.dirs or stat.S_ISDIR(st.st_mode)
    return out


def _protected(protected: _Identities, path: str) -> str | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return protected.get((st.st_dev, st.st_ino))


def _check_link(root: str, source: str, rel: str, target: str) -> None:
    # Unpacked on the hosts, a link out of the release reaches whatever the host has there (/etc/shadow).
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    resolved = os.path.realpath(os.path.join(root, rel))
    if os.path.isabs(target) or lexical == ".." or lexical.startswith("../"):
        raise UsageError(f"{os.path.join(source, rel)} -> {target}: symlink points outside {source}")
    if os.path.commonpath([root, resolved]) != root:
        raise UsageError(f"{os.path.join(source, rel)} -> {target}: symlink resolves to {resolved},"
                         f" outside {source}")


def _prefixed(data: bytes) -> bytes:
    # Length prefixes: no two different trees feed the hash the same byte stream.
    return b"%d:%s" % (len(data), data)


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    # Only around reads: an error writing the tarball is the runner's, not the source's.
    try:
        yield
    except OSError as e:
        raise UsageError(f"cannot package {path}: {e.strerror}") from None


_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar's default blocking factor: the archive ends on a whole record
_REGTYPE, _SYMTYPE, _DIRTYPE = b"0", b"2", b"5"


class _Archive:
    """The tar stream, cut into chunks of about _CHUNK bytes that _WORKERS threads compress, each into a
    gzip member of its own, written to `raw` in order.

    Concatenated members are one gzip file to `gzip -d` (RFC 1952; tar -xz reads it as one stream) and the
    cuts depend on the stream alone, so the same tree gives the same bytes. zlib releases the GIL while
    it compresses, so compression overlaps the main thread's reads, hashes and headers.
    """

    def __init__(self, raw: BinaryIO):
        from concurrent.futures import ThreadPoolExecutor  # not for a dry run

        self.raw = raw
        self.pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="deployer-gzip")
        self.inflight: deque[Future[bytes]] = deque()
        self.pieces: list[bytes] = []
        self.pending = 0  # bytes in pieces
        self.offset = 0  # bytes of tar stream handed to the workers
        self.dirs: set[str] = set()

    def __enter__(self) -> "_Archive":
        return self

    def __exit__(self, kind, value, tb) -> None:
        try:
            if kind is None:
                # End of archive: two zero blocks, then zeros to the end of the record.
                self.write(bytes(2 * _BLOCK))
                self.write(bytes(-(self.offset + self.pending) % _RECORD))
                self._cut()
                while self.inflight:
                    self.raw.write(self.inflight.popleft().result())
        finally:
            for job in self.inflight:
                job.cancel()
            self.pool.shutdown(wait=True)

    def write(self, data: bytes) -> None:
        self.pieces.append(data)
        self.pending += len(data)
        if self.pending >= _CHUNK:
            self._cut()

    def _cut(self) -> None:
        if not self.pieces:
            return
        chunk = b"".join(self.pieces)
        self.pieces, self.pending = [], 0
        self.offset += len(chunk)
        # wbits 31: a gzip member with no file name and time 0 in its header.
        self.inflight.append(self.pool.submit(zlib.compress, chunk, _GZIP_LEVEL, 31))
        # Bounded memory: at most one chunk waiting for each worker and one being filled.
        while len(self.inflight) > _WORKERS or (self.inflight and self.inflight[0].done()):
            self.raw.write(self.inflight.popleft().result())

    def link(self, rel: str, target: str) -> None:
        self._dirs(rel)
        self.write(_header(rel, _SYMTYPE, 0o777, 0, target))

    def file(self, rel: str, mode: int, size: int, head: bytes, ship: bool) -> None:
        """A regular file's directories, and if `ship`, its header and first bytes: all of a file that fits
        in `head`, with its padding, else the caller writes the rest and the padding."""
        self._dirs(rel)
        if ship:
            header = _header(rel, _REGTYPE, mode, size)
            pad = _padding(size) if len(head) == size else b""
            self.pieces += (header, head, pad)
            self.pending += len(header) + len(head) + len(pad)
            if self.pending >= _CHUNK:
                self._cut()

    def _dirs(self, rel: str) -> None:
        """Parent directories as entries of their own, so the hosts' tar does not pick their modes."""
        parent = posixpath.dirname(rel)
        if not parent or parent in self.dirs:
            return
        self._dirs(parent)
        self.write(_header(parent + "/", _DIRTYPE, 0o755))
        self.dirs.add(parent)


def _padding(size: int) -> bytes:
    """The NULs that fill a file's last block."""
    return bytes(-size % _BLOCK)


# A ustar header after its name, for owner root (uid, gid 0; no user or group name), time 0 and no device:
# mode, uid, gid, size, mtime, the checksum's place, type, link name, magic and version, then NULs.
_USTAR = (b"%07o\0" b"0000000\0" b"0000000\0" b"%011o\0" b"00000000000\0" b"        " b"%s%s" b"ustar\x0000"
          + bytes(32 + 32 + 8 + 8 + 155 + 12))


def _header(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> bytes:
    """One tar entry's header, as tarfile writes it in PAX_FORMAT; written here, since tarfile's own
    costs a tenth of a millisecond an entry (a third of a second for the benchmark app)."""
    try:
        bname, blink = name.encode("ascii"), link.encode("ascii")
    except UnicodeEncodeError:
        bname = blink = b"x" * 101
    if len(bname) > 100 or len(blink) > 100 or size >= 8 ** 11:
        return _pax_header(name, kind, mode, size, link)
    block = bname.ljust(100, b"\0") + _USTAR % (mode, size, kind, blink.ljust(100, b"\0"))
    # The checksum is the sum of the block's bytes. All are ASCII here, so it is at most 512 * 127, less
    # than adler32's modulus: adler32's low half is 1 + that sum, computed in C (sum() takes 3 us a block).
    return block[:148] + b"%06o\0 " % ((zlib.adler32(block) & 0xFFFF) - 1) + block[156:]


def _pax_header(name: str, kind: bytes, mode: int, size: int, link: str) -> bytes:
    """A long or non-ASCII name or link, or a file of 8 GiB or more: tarfile's pax extended header."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
