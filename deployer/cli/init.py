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
import json
import os
import stat
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from deployer.cli import survey
from deployer.cli.survey import Project
from deployer.errors import UsageError

TARGETS = "targets.yaml"
TEMPLATES = "templates"
TEMPLATE = "default_template"
# The JSON Schema of targets.yaml, where the skeleton's first line points
# editors; `deployer schema` prints it again after an upgrade.
SCHEMA_DIR = ".deployer"
SCHEMA = "targets.schema.json"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def init(directory: Path = Path(".")) -> tuple[list[Path], Project | None]:
    """Write targets.yaml, templates/default_template and .deployer/targets.schema.json
    into `directory`, fitted to the Django project there if there is one: the
    paths written, and what was found."""
    places = [("", TARGETS), (TEMPLATES, TEMPLATE), (SCHEMA_DIR, SCHEMA)]
    try:
        fd = os.open(directory, _DIR_FLAGS)
    except OSError as e:
        raise UsageError(f"{directory}: cannot initialise: {e.strerror}") from None
    try:
        # Before the project's settings are run: init that writes nothing runs nothing.
        in_the_way = [problem for folder, name in places for problem in _in_the_way(fd, directory, folder, name)]
        if in_the_way:
            raise UsageError(f"{directory}: not initialised, nothing written: {'; '.join(in_the_way)}")
        project = survey.survey(directory)
        targets, template = _skeleton(TARGETS), _skeleton(TEMPLATE)
        if project:
            targets, template = targets_for(targets, project), template_for(template, project)
        contents = [targets, template, (resources.files("deployer.config") / SCHEMA).read_bytes()]
        return _write(fd, directory, [(*place, c) for place, c in zip(places, contents, strict=True)]), project
    finally:
        os.close(fd)


def _swap(text: bytes, old: str, new: str) -> bytes:
    """`old`, which the skeleton holds exactly once, replaced by `new`."""
    if text.count(old.encode()) != 1:
        raise AssertionError(f"the skeleton has not exactly one {old!r}")  # the tests keep them in step
    return text.replace(old.encode(), new.encode())


def targets_for(text: bytes, p: Project) -> bytes:
    """The skeleton's targets.yaml, fitted to the project `p`: every value
    matched a plain shape in survey, and a path is written as a JSON string
    (which YAML reads as it is: `null` stays a name)."""
    port = str(p.port)
    text = _swap(text, "ctl: builtin, port: 8480}", f"ctl: builtin, port: {port}}}")
    text = _swap(text, "http://127.0.0.1:8480/", f"http://127.0.0.1:{port}/")
    defaults, local = [], []
    venv = bool(p.requirements and p.hosts_version)
    if venv:
        defaults += [
            "  # The app's packages: fetched as wheels on this machine for the hosts' Python, and",
            "  # installed into a virtualenv on each host, which migrate and hooks run with.",
            "  python:",
            f"    requirements: {json.dumps(p.requirements)}",
            f'    version: "{p.hosts_version}"             # the hosts\' {survey.HOSTS_PYTHON}, exactly',
            "    # platform: manylinux_2_28_x86_64  # the newest the hosts' glibc runs (Debian 12: 2_36)"]
        python = "python"
    else:
        # No virtualenv of deployer's: the local target runs the Python that has Django here.
        python = p.python or "python3"
        local.append(f"    migrate: {python} manage.py migrate --noinput")
    if p.build:
        defaults += ["  build:                            # here, before packaging: the front end's assets",
                     f"    run: [{', '.join(p.build)}]",
                     "    copy_source: true               # in a copy: your checkout stays as it is"]
    if p.static_root:
        defaults += [f"  hooks:                            # static files into {p.static_root}/ of the release",
                     "    after: {upload: python manage.py collectstatic --noinput}"]
        if not venv:
            local += ["    hooks:", f"      after: {{upload: {python} manage.py collectstatic --noinput}}"]
    if p.sqlite:
        # On this machine only: on web hosts, the web server (www-data) would
        # need to write the file and its folder, and each host would have a
        # database of its own.
        local += [f"    shared: {{create: [{json.dumps(p.sqlite)}]}}   # the SQLite database: made once, kept"]
        defaults += ["  # shared: {create: [...]} keeps a SQLite database on each host; web hosts want a database",
                     "  # server (Postgres): see README's \"Your own project\"."]
        if not p.sqlite.endswith(".sqlite3"):
            text = _swap(text, 'exclude: [.git, ', f"exclude: [{json.dumps(p.sqlite)}, .git, ")
    if p.wsgi:
        text = _swap(text, "it serves <<DEPLOY_PATH>>/django.wsgi,", f"it serves <<DEPLOY_PATH>>/{p.wsgi},")
    if p.page:
        text = _swap(text, "The health check asks for / with", f"The health check asks for {p.page} with")
        text = _swap(text, "health: {path: /}                 # on apache's port",
                     f"health: {{path: {p.page}}}" + " " * max(1, 16 - len(p.page)) + "# on apache's port")
    text = _swap(text, """    # Runs the first python3 on PATH, in the release, where .venv is not
    # packaged: if the project has a venv, name its python by its absolute
    # path, e.g. /home/you/project/.venv/bin/python manage.py migrate --noinput
    migrate: python3 manage.py migrate --noinput
""", "".join(line + "\n" for line in local))
    return _swap(text, "  migrate: python manage.py migrate --noinput\n",
                 "".join(line + "\n" for line in ["  migrate: python manage.py migrate --noinput", *defaults]))


def template_for(text: bytes, p: Project) -> bytes:
    """The skeleton's vhost, serving the project's WSGI file, its static
    files where collectstatic puts them, and with `python:`, its virtualenv."""
    if p.wsgi:
        package, _, script = p.wsgi.rpartition("/")
        text = _swap(text, "WSGIScriptAlias / <<DEPLOY_PATH>>/django.wsgi",
                     f"WSGIScriptAlias / <<DEPLOY_PATH>>/{p.wsgi}")
        text = _swap(text, "<Directory <<DEPLOY_PATH>>>\n        <Files django.wsgi>",
                     f"<Directory <<DEPLOY_PATH>>{'/' + package if package else ''}>\n        <Files {script}>")
    if p.static_root:
        text = _swap(text, "Alias /static/ <<DEPLOY_PATH>>/static/\n    <Directory <<DEPLOY_PATH>>/static>",
                     f"Alias {p.static_url} <<DEPLOY_PATH>>/{p.static_root}/\n"
                     f"    <Directory <<DEPLOY_PATH>>/{p.static_root}>")
    if p.requirements and p.hosts_version:  # python: in targets.yaml
        text = _swap(text, "python-path=<<DEPLOY_PATH>> home=<<DEPLOY_PATH>>",
                     "python-home=<<VENV>> python-path=<<DEPLOY_PATH>> home=<<DEPLOY_PATH>>")
    return text


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
