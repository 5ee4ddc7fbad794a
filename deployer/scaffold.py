"""`deployer init`: a project's first targets.yaml and vhost template.

Both come from deployer/skeleton/, installed as package data, so a pip
install writes the same starting point as a checkout. Once written they are
the user's, so init never replaces anything: whatever is at either path,
even a dangling symlink, means nothing is written. Every step goes through
a descriptor of the project directory and of templates/, and every file is
created with O_EXCL and O_NOFOLLOW, so a link planted between the check and
the write is refused rather than written through.
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
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def init(directory: Path = Path(".")) -> list[Path]:
    """Write targets.yaml and templates/default_template into `directory`; the paths written."""
    # Read first: a broken install fails before anything is written.
    targets, template = _skeleton(TARGETS), _skeleton(TEMPLATE)
    try:
        project = os.open(directory, _DIR_FLAGS)
    except OSError as e:
        raise UsageError(f"{directory}: cannot initialise: {e.strerror}") from None
    try:
        in_the_way = _in_the_way(project, directory)
        if in_the_way:
            raise UsageError(f"{directory}: not initialised, nothing written: {'; '.join(in_the_way)}")
        return _write(project, directory, targets, for_project(template, wsgi_module(directory)))
    finally:
        os.close(project)


def wsgi_module(directory: Path) -> str:
    """The project's WSGI file, as `startproject` makes it (`<package>/wsgi.py`
    beside manage.py), relative to the project; "" if there is not exactly one."""
    try:
        found = sorted(p for p in directory.glob("*/wsgi.py")
                       if (p.parent / "settings.py").is_file() and not p.is_symlink())
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


def _in_the_way(project: int, directory: Path) -> list[str]:
    """What stops init, as `PATH what`; empty if nothing does."""
    try:
        found = [f"{directory / TARGETS} exists"] if _lstat(TARGETS, project) else []
        templates = _lstat(TEMPLATES, project)
        if templates is None:
            return found
        if stat.S_ISLNK(templates.st_mode):
            # Its target may be another project's templates/, or nothing yet.
            return [*found, f"{directory / TEMPLATES} is a symbolic link"]
        if not stat.S_ISDIR(templates.st_mode):
            return [*found, f"{directory / TEMPLATES} exists and is not a directory"]
        if _lstat(f"{TEMPLATES}/{TEMPLATE}", project):
            found.append(f"{directory / TEMPLATES / TEMPLATE} exists")
        return found
    except OSError as e:
        raise UsageError(f"{directory}: cannot initialise: {e.filename}: {e.strerror}") from None


def _write(project: int, directory: Path, targets: bytes, template: bytes) -> list[Path]:
    # What this call made, undone newest first if a later step fails: each
    # was created here (O_EXCL, mkdir), so removing it removes nothing of the user's.
    undo: list[Callable[[], None]] = []
    where = directory / TARGETS
    try:
        _create(TARGETS, project, targets)
        undo.append(lambda: os.unlink(TARGETS, dir_fd=project))
        where = directory / TEMPLATES
        try:
            os.mkdir(TEMPLATES, 0o755, dir_fd=project)
            undo.append(lambda: os.rmdir(TEMPLATES, dir_fd=project))
        except FileExistsError:
            pass  # a real directory when checked; O_NOFOLLOW below refuses it if it is now a link
        templates = os.open(TEMPLATES, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=project)
        try:
            where = directory / TEMPLATES / TEMPLATE
            _create(TEMPLATE, templates, template)
        finally:
            os.close(templates)
    except OSError as e:
        for step in reversed(undo):
            with contextlib.suppress(OSError):
                step()
        raise UsageError(f"{where}: cannot write: {e.strerror}; nothing written") from None
    return [directory / TARGETS, directory / TEMPLATES / TEMPLATE]


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
