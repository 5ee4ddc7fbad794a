"""The release tarball: which files go in, which are withheld and why, their hash, and the archive.

Safe by default: `package: {source: .}` sits beside the VPN config, SSH keys and `.git`, so those are
withheld unless the target names them in `package/include`; a deploy must never spread credentials to
every web host because nobody thought of an exclude pattern.

The hash is taken from the tree (paths, exec bits, bytes, link targets) when the plan is made, so the
release id is known before anything runs; the build hashes what it writes and fails if the tree changed.
"""

import contextlib
import gzip
import hashlib
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

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

# Measured on the example app with Django's source as ballast (21 MB, 3,512
# files): level 9 took 2.6 s for 4.74 MB, level 6 1.3 s for 4.80 MB, level 1
# 0.9 s for 6.02 MB. While every host receives its own copy through the VPN,
# 6 is the better trade; level 1 wins once the artifact crosses it once.
_GZIP_LEVEL = 6

_Reasons = dict[str, str]  # relative path: why


@dataclass(frozen=True)
class Rules:
    exclude: tuple[str, ...] = ()  # .gitignore lines from package/exclude
    include: tuple[str, ...] = ()  # exact paths from the source root, packaged despite the safe defaults
    # (absolute path, reason): the targets file and the files it names (VPN config, SSH identity files,
    # known_hosts), e.g. ("/srv/app/vpn/demo.ovpn", "named in targets.yaml"); withheld unless included.
    protected: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Manifest:
    digest: str  # sha256 hex of the packaged tree
    files: tuple[str, ...]  # packaged relative paths (regular files and symlinks), sorted
    size: int  # total bytes of the packaged regular files
    withheld: tuple[tuple[str, str], ...]  # (relative path, reason): kept out by the safe defaults
    included: tuple[tuple[str, str], ...]  # (relative path, reason it would be withheld): in by package/include


def scan(source: str, rules: Rules) -> Manifest:
    """What `build` would package, read-only: the same archive, written nowhere."""
    with tarfile.open(fileobj=_Discard(), mode="w", format=tarfile.PAX_FORMAT) as tar:
        return _pack(source, rules, tar)


def build(source: str, rules: Rules, dest: str, expect: str | None = None) -> Manifest:
    """Write the gzipped tarball at `dest`, which must not exist yet; each file is read once.

    With `expect` (the digest the plan was made from), a tree that changed since is a failure and no
    tarball is left behind.
    """
    # "x" fails on anything already at dest, a planted symlink included, instead of writing through it.
    with open(dest, "xb") as raw:
        try:
            # No file name or time in the gzip header: the bytes depend on the tree only.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=_GZIP_LEVEL) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                manifest = _pack(source, rules, tar)
            if expect is not None and manifest.digest != expect:
                raise StepFailed(f"{source}: source changed since the plan was made (planned "
                                 f"{expect[:12]}, found {manifest.digest[:12]}); deploy again")
        except BaseException:
            os.unlink(dest)
            raise
    return manifest


def _pack(source: str, rules: Rules, tar: tarfile.TarFile) -> Manifest:
    root = os.path.realpath(source)
    include = _include_paths(rules.include)
    entries, withheld, included = _walk(source, rules, include)
    digest = hashlib.sha256()
    files: list[str] = []
    dirs: set[str] = set()
    size = 0
    for rel, mode in entries:
        path = os.path.join(source, rel)
        name = os.fsencode(rel)
        if stat.S_ISLNK(mode):
            with _reading(path):
                target = os.readlink(path)
            _check_link(root, source, rel, target)
            info = tarfile.TarInfo(rel)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            digest.update(_prefixed(name) + b" l" + _prefixed(os.fsencode(target)))
            _add_dirs(tar, rel, dirs)
            tar.addfile(info)
        else:
            with _reading(path):
                # No following a link swapped in since the walk, no blocking on a FIFO swapped in.
                f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")
            with f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise UsageError(f"{path}: changed while being packaged")
                with _reading(path):
                    head = f.read(_KEY_SCAN)
                if _PRIVATE_KEY.search(head):
                    if rel not in include:
                        withheld[rel] = "contains a private key"
                        continue
                    included.setdefault(rel, "contains a private key")
                # The runner's modes would be applied as root on the hosts: only the exec bit survives.
                mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
                digest.update(_prefixed(name) + b" f%o %d:" % (mode, st.st_size))
                info = tarfile.TarInfo(rel)
                info.mode, info.size = mode, st.st_size
                _add_dirs(tar, rel, dirs)
                tar.addfile(info, _Hashing(head, f, digest, path))
                size += st.st_size
        files.append(rel)
    return Manifest(digest.hexdigest(), tuple(files), size, tuple(sorted(withheld.items())),
                    tuple(sorted(included.items())))


def _walk(source: str, rules: Rules, include: frozenset[str]) -> tuple[list[tuple[str, int]], _Reasons, _Reasons]:
    """Candidates (path, lstat mode), sorted; what the defaults withhold by name or protection, and what
    include lets in despite them. A file's content is checked later, while it is read."""
    try:
        spec = pathspec.GitIgnoreSpec.from_lines(rules.exclude)
    except ValueError as e:
        raise UsageError(f"package/exclude: {e}") from None
    protected = _identities(rules.protected)
    entries: list[tuple[str, int]] = []
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
                children = sorted((child.name, child.stat(follow_symlinks=False)) for child in it)
        except OSError as e:
            raise UsageError(f"cannot package {e.filename or dir_path}: {e.strerror}") from None
        for name, st in children:
            rel = posixpath.join(rel_dir, name)
            is_dir = stat.S_ISDIR(st.st_mode)
            # pathspec tells a directory by its trailing slash (`media/` matches no file).
            if spec.match_file(rel + "/" if is_dir else rel):
                _refuse_include_under(include, rel, "is excluded by package/exclude")
                continue
            reason = protected.get((st.st_dev, st.st_ino)) or _withheld_by_name(name, is_dir)
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
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                entries.append((rel, st.st_mode))
            else:
                # A FIFO would block the hash forever; a socket or device has no place in a release.
                raise UsageError(f"{os.path.join(source, rel)}: not a regular file or symlink;"
                                 " add it to package/exclude")
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


def _identities(protected: tuple[tuple[str, str], ...]) -> dict[tuple[int, int], str]:
    """Protected files by inode, so any spelling of the path (or a hard link) is recognised."""
    out = {}
    for path, reason in protected:
        for st_of in (os.stat, os.lstat):
            try:
                st = st_of(path)
            except OSError:
                continue  # e.g. a known_hosts that does not exist yet: nothing to withhold
            out[(st.st_dev, st.st_ino)] = reason
    return out


def _check_link(root: str, source: str, rel: str, target: str) -> None:
    # Unpacked on the hosts, a link out of the release reaches whatever the host has there (/etc/shadow).
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    resolved = os.path.realpath(os.path.join(root, rel))
    if os.path.isabs(target) or lexical == ".." or lexical.startswith("../"):
        raise UsageError(f"{os.path.join(source, rel)} -> {target}: symlink points outside {source}")
    if os.path.commonpath([root, resolved]) != root:
        raise UsageError(f"{os.path.join(source, rel)} -> {target}: symlink resolves to {resolved},"
                         f" outside {source}")


def _add_dirs(tar: tarfile.TarFile, rel: str, done: set[str]) -> None:
    """Parent directories as entries of their own, so the hosts' tar does not pick their modes."""
    parent = posixpath.dirname(rel)
    if not parent or parent in done:
        return
    _add_dirs(tar, parent, done)
    info = tarfile.TarInfo(parent)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(info)
    done.add(parent)


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


class _Hashing:
    """The file as tarfile reads it, from the head already read; hashes exactly the bytes it hands out."""

    def __init__(self, head: bytes, f: BinaryIO, digest: "hashlib._Hash", path: str):
        self.head, self.f, self.digest, self.path = head, f, digest, path

    def read(self, n: int) -> bytes:
        chunk, self.head = self.head[:n], self.head[n:]
        if len(chunk) < n:
            with _reading(self.path):
                chunk += self.f.read(n - len(chunk))
        self.digest.update(chunk)
        return chunk


class _Discard:
    """A file object that keeps nothing: lets `scan` run the same code as `build`."""

    def write(self, data: bytes) -> int:
        return len(data)

    def tell(self) -> int:
        return 0
