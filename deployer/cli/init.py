"""`deployer init`: a project's first targets.yaml, vhost template, and the
JSON Schema its editor reads.

They come from deployer/skeleton/ and deployer/config/targets.schema.json,
installed as package data, so a pip install writes the same starting point
as a checkout. Once written they are the user's, so init never replaces
anything: whatever is at any of the paths, even a dangling symlink, means
nothing is written. Every step goes through a descriptor of the project
directory and of each folder, and every file is created with O_EXCL and
O_NOFOLLOW, so a link planted between the check and the write is refused
rather than written through.
"""

import contextlib
import os
import stat
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from deployer.errors import UsageError

TARGETS = "targets.yaml"
TEMPLATES = "templates"
TEMPLATE = "default_template"
# The JSON Schema of targets.yaml, where the skeleton's first line points
# editors; `deployer schema` prints it again after an upgrade.
SCHEMA_DIR = ".deployer"
SCHEMA = "targets.schema.json"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def init(directory: Path = Path(".")) -> list[Path]:
    """Write targets.yaml, templates/default_template and .deployer/targets.schema.json
    into `directory`; the paths written."""
    # Read first: a broken install fails before anything is written.
    template = for_project(_skeleton(TEMPLATE), wsgi_module(directory))
    files = [("", TARGETS, _skeleton(TARGETS)), (TEMPLATES, TEMPLATE, template),
             (SCHEMA_DIR, SCHEMA, (resources.files("deployer.config") / SCHEMA).read_bytes())]
    try:
        project = os.open(directory, _DIR_FLAGS)
    except OSError as e:
        raise UsageError(f"{directory}: cannot initialise: {e.strerror}") from None
    try:
        in_the_way = [problem for folder, name, _ in files
                      for problem in _in_the_way(project, directory, folder, name)]
        if in_the_way:
            raise UsageError(f"{directory}: not initialised, nothing written: {'; '.join(in_the_way)}")
        return _write(project, directory, files)
    finally:
        os.close(project)


def wsgi_module(directory: Path) -> str:
    """The project's WSGI file, as `startproject` makes it (`<package>/wsgi.py`
    beside manage.py), relative to the project; "" if there is not exactly one."""
    try:
        # A package name is an identifier: nothing else goes into the vhost.
        found = sorted(p for p in directory.glob("*/wsgi.py")
                       if p.parent.name.isidentifier() and p.parent.name.isascii()
                       and (p.parent / "settings.py").is_file() and not p.is_symlink())
    except OSError:
        return ""
    return f"{found[0].parent.name}/wsgi.py" if len(found) == 1 and (directory / "manage.py").is_file() else ""


def for_project(template: bytes, wsgi: str) -> bytes:
    """The skeleton's vhost, serving the project's own WSGI file if it has one
    (the skeleton serves the example app's django.wsgi, at the release's root)."""
    if not wsgi:
        return template
    package, _, script = wsgi.partition("/")
    return (template
            .replace(b"WSGIScriptAlias / <<DEPLOY_PATH>>/django.wsgi",
                     f"WSGIScriptAlias / <<DEPLOY_PATH>>/{wsgi}".encode())
            .replace(b"<Directory <<DEPLOY_PATH>>>\n        <Files django.wsgi>",
                     f"<Directory <<DEPLOY_PATH>>/{package}>\n        <Files {script}>".encode()))


def _skeleton(name: str) -> bytes:
    return (resources.files("deployer") / "skeleton" / name).read_bytes()


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _in_the_way(project: int, directory: Path, folder: str, name: str) -> list[str]:
    """What stops init writing folder/name, as `PATH what`; empty if nothing does."""
    path = f"{folder}/{name}" if folder else name
    try:
        if folder:
            found = _lstat(folder, project)
            if found is None:
                return []
            if stat.S_ISLNK(found.st_mode):
                # Its target may be another project's folder, or nothing yet.
                return [f"{directory / folder} is a symbolic link"]
            if not stat.S_ISDIR(found.st_mode):
                return [f"{directory / folder} exists and is not a directory"]
        return [f"{directory / path} exists"] if _lstat(path, project) else []
    except OSError as e:
        raise UsageError(f"{directory}: cannot initialise: {e.filename}: {e.strerror}") from None


def _write(project: int, directory: Path, files: list[tuple[str, str, bytes]]) -> list[Path]:
    # What this call made, undone newest first if a later step fails: each
    # was created here (O_EXCL, mkdir), so removing it removes nothing of the user's.
    undo: list[Callable[[], None]] = []
    written = []
    try:
        for folder, name, content in files:
            where = directory / folder / name
            if not folder:
                _create(name, project, content)
                undo.append(lambda name=name: os.unlink(name, dir_fd=project))
                written.append(where)
                continue
            try:
                os.mkdir(folder, 0o755, dir_fd=project)
                undo.append(lambda folder=folder: os.rmdir(folder, dir_fd=project))
            except FileExistsError:
                pass  # a real directory when checked; O_NOFOLLOW below refuses it if it is now a link
            inside = os.open(folder, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=project)
            try:
                _create(name, inside, content)
                undo.append(lambda folder=folder, name=name: os.unlink(f"{folder}/{name}", dir_fd=project))
            finally:
                os.close(inside)
            written.append(where)
    except OSError as e:
        for step in reversed(undo):
            with contextlib.suppress(OSError):
                step()
        raise UsageError(f"{where}: cannot write: {e.strerror}; nothing written") from None
    return written


def _create(name: str, dir_fd: int, content: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        with open(fd, "wb") as f:
            f.write(content)
    except OSError:
        # Half a file (a full disk) would be taken for the user's next time.
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise
