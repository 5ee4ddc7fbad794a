"""The release tarball: which files go in, their content hash, and the archive.

The hash is taken from the source tree (paths, modes, bytes) when the plan is
made, so the release id is known before anything runs and a dry-run shows the
same id a real run would use within the same second.
"""

import fnmatch
import hashlib
import os
import stat
import tarfile
from pathlib import Path

from deployer.errors import UsageError


def files(source: str, exclude: tuple[str, ...]) -> list[str]:
    """Relative paths to package, sorted; a pattern matching a directory prunes it.

    A pattern with a slash matches the relative path, one without matches any
    single name (as in .gitignore): `*.pyc`, `.git`, `media/uploads`.
    """
    root = Path(source)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = sorted(d for d in dirnames if not _excluded(os.path.join(rel_dir, d), exclude))
        for name in filenames:
            rel = os.path.join(rel_dir, name)
            if _excluded(rel, exclude):
                continue
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                # A FIFO would block the hash forever; a socket or device has
                # no place in a release.
                raise UsageError(f"{os.path.join(dirpath, name)}: not a regular file or symlink;"
                                 " add it to package/exclude")
            out.append(rel)
        # Symlinks to directories are packaged as links, not followed.
        out.extend(
            os.path.join(rel_dir, d) for d in dirnames if os.path.islink(os.path.join(dirpath, d))
        )
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return sorted(out)


def _excluded(rel: str, patterns: tuple[str, ...]) -> bool:
    parts = rel.split("/")
    for pattern in patterns:
        # As in .gitignore: a trailing slash only says "a directory"; a slash
        # elsewhere anchors the pattern at the root, where `*` never crosses
        # a slash; without one, the pattern matches a name at any depth.
        p = pattern.rstrip("/")
        if "/" in p:
            pp = p.lstrip("/").split("/")
            if len(pp) == len(parts) and all(map(fnmatch.fnmatchcase, parts, pp)):
                return True
        elif fnmatch.fnmatchcase(parts[-1], p):
            return True
    return False


def tree_hash(source: str, exclude: tuple[str, ...]) -> str:
    """sha256 over every packaged path, its mode and its bytes (or link target).

    Each entry is length-prefixed, so no two different trees feed the hash
    the same byte stream.
    """
    digest = hashlib.sha256()
    try:
        for rel in files(source, exclude):
            path = os.path.join(source, rel)
            st = os.lstat(path)
            name = rel.encode()
            digest.update(f"{len(name)}:".encode() + name + f"{st.st_mode:o}:".encode())
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path).encode()
                digest.update(f"{len(target)}:".encode() + target)
            else:
                digest.update(f"{st.st_size}:".encode())
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
    except OSError as e:
        raise UsageError(f"cannot package {e.filename}: {e.strerror}") from None
    return digest.hexdigest()


def build(source: str, exclude: tuple[str, ...], dest: str) -> int:
    """Write the gzipped tarball; returns the number of files in it."""
    names = files(source, exclude)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for rel in names:
            info = tar.gettarinfo(os.path.join(source, rel), arcname=rel)
            # Owners are the runner's; the hosts' unpacking user owns the files.
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(os.path.join(source, rel), "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return len(names)
