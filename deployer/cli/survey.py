"""What `deployer init` finds in a Django project, so that its first
targets.yaml deploys the project as it is.

It asks the project's own Python: the first of its virtualenv, the one
active, and the python3 on PATH that imports Django reads the settings the
way manage.py does (it runs the settings module, as any manage.py command
would). What it answers is data, checked against the shape each use needs
before it goes into a file: a path in the project, a URL path, an
identifier. Nothing it says is ever run or spliced as it came.
"""

import json
import os
import re
import select
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from deployer.output.text import printable_lines

# A path init writes into targets.yaml or the vhost: inside the project,
# of plain names, so that it needs quoting nowhere.
_REL_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
_URL_PATH = re.compile(r"/([A-Za-z0-9_][A-Za-z0-9._-]*/)*")
# A dot may begin a name (.venv), but no name is . or ..
_ABS_PATH = re.compile(r"(/(?!\.\.?(/|$))[A-Za-z0-9._+][A-Za-z0-9._+-]*)+")
_VERSION = re.compile(r"3\.[0-9]{1,2}\.[0-9]{1,2}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# As manage.py sets it: os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings").
_SETTINGS_LINE = re.compile(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([A-Za-z0-9_.]{1,200})['"]""")
# Read from the project and from its Python: more is not a manage.py or an answer.
_MAX_READ = 64 * 1024
PROBE_TIMEOUT = 60.0  # for every candidate together
_TIMED_OUT = "timed out"
# The lockfiles and requirements that `python:` reads, in the order taken.
REQUIREMENTS = ("uv.lock", "requirements.txt", "requirements/production.txt", "requirements/prod.txt")
# The Python of the hosts, and of the local target's Apache: Debian's, which mod_wsgi is built for.
HOSTS_PYTHON = "/usr/bin/python3"
FIRST_PORT = 8480

# Run by the project's Python, in the project, with its settings module set:
# one line of JSON. It reads what manage.py would, and changes nothing.
_PROBE = r"""
import json, os, sys
out = {"version": "%d.%d.%d" % sys.version_info[:3]}
try:
    import django
except Exception:
    print(json.dumps(out)); raise SystemExit(0)
out["django"] = django.get_version()
if os.environ.get("DJANGO_SETTINGS_MODULE"):
    try:
        django.setup()
        from django.conf import settings
        db = settings.DATABASES.get("default", {})
        out.update(static_root=str(settings.STATIC_ROOT or ""), static_url=str(settings.STATIC_URL or ""),
                   staticfiles="django.contrib.staticfiles" in settings.INSTALLED_APPS,
                   wsgi=str(getattr(settings, "WSGI_APPLICATION", "") or ""),
                   db_engine=str(db.get("ENGINE", "")), db_name=str(db.get("NAME", "")))
        from django.urls import resolve
        for path in ("/", "/admin/login/"):
            try:
                resolve(path)
            except Exception:
                continue
            out["page"] = path
            break
    except Exception as e:
        out["error"] = ("%s: %s" % (type(e).__name__, e))[:300]
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Project:
    """A Django project as init found it; "" where it found nothing usable."""

    settings: str = ""  # the settings module manage.py sets: shop.settings
    wsgi: str = ""  # its WSGI file, relative: shop/wsgi.py
    python: str = ""  # a Python of this machine that imports Django, by absolute path
    static_url: str = ""  # /static/
    static_root: str = ""  # STATIC_ROOT, relative to the project
    sqlite: str = ""  # the SQLite database file, relative to the project
    page: str = ""  # a path Django answers (the health check's)
    requirements: str = ""  # for python:, relative to the project
    build: tuple[str, ...] = ()  # the front end's build commands, for build: (package.json's "build" script)
    hosts_version: str = ""  # the version of HOSTS_PYTHON
    port: int = FIRST_PORT  # free on 127.0.0.1, for the local target's Apache
    notes: tuple[str, ...] = field(default=())  # what the user must settle, in words


def survey(directory: Path) -> Project | None:
    """The Django project in `directory`, or None if it has no manage.py."""
    manage = directory / "manage.py"
    if not manage.is_file() or manage.is_symlink():
        return None
    notes: list[str] = []
    settings = _settings_module(manage)
    python, found = _django_python(directory, settings)
    if found.get("error") == _TIMED_OUT:
        notes.append(f"reading the settings took over {PROBE_TIMEOUT:.0f} s, and was stopped: migrate and"
                     " collectstatic use the hosts' python; STATIC_ROOT, the database and WSGI file are guessed")
    elif not python:
        notes.append("no Python here imports Django (tried the project's .venv, venv, the active virtualenv and"
                      " python3): migrate and collectstatic use the hosts' python")
    elif found.get("error"):
        # One line of a note: what the settings raised cannot break it, nor drive the terminal.
        said = " ".join(printable_lines(found["error"]).split("\n"))
        notes.append(f"{python} could not read the settings ({said}):"
                     " STATIC_ROOT, the database and the WSGI file are guessed")
    wsgi = _wsgi_file(directory, str(found.get("wsgi", "")), settings)
    if not wsgi:
        notes.append("no WSGI file found (WSGI_APPLICATION, or <package>/wsgi.py beside the settings):"
                     " edit WSGIScriptAlias in the template")
    static_root = _inside(directory, str(found.get("static_root", "")))
    if python and found.get("staticfiles") and not static_root:
        notes.append("STATIC_ROOT is not set to a folder in the project, so no collectstatic: set it"
                     ' (STATIC_ROOT = BASE_DIR / "static"), then init again or add the hook by hand')
    sqlite = ""
    if str(found.get("db_engine", "")).endswith("sqlite3"):
        sqlite = _inside(directory, str(found.get("db_name", "")))
    requirements = next((r for r in REQUIREMENTS if (directory / r).is_file()), "")
    hosts_version = _version_of(HOSTS_PYTHON) if requirements else ""
    if requirements and not hosts_version:
        notes.append(f"{HOSTS_PYTHON} is not a Python 3 here: set python: version and interpreter by hand")
    build = _npm_build(directory)
    static_url = str(found.get("static_url", ""))
    page = str(found.get("page", ""))
    return Project(settings=settings, wsgi=wsgi, python=python,
                   static_url=static_url if _URL_PATH.fullmatch(static_url) else "/static/",
                   static_root=static_root, sqlite=sqlite, page=page if page in ("/", "/admin/login/") else "",
                   requirements=requirements, hosts_version=hosts_version, build=build, port=free_port(),
                   notes=tuple(notes))


def _npm_build(directory: Path) -> tuple[str, ...]:
    """`npm ci` (or `npm install` without a lockfile) and `npm run build`,
    if the project's package.json has a build script; () if not."""
    if not _is_file(directory, "package.json"):
        return ()
    try:
        with (directory / "package.json").open("rb") as f:
            scripts = json.loads(f.read(_MAX_READ)).get("scripts", {})
    except (OSError, ValueError, AttributeError):
        return ()
    if not isinstance(scripts, dict) or "build" not in scripts:
        return ()
    return ("npm ci" if _is_file(directory, "package-lock.json") else "npm install", "npm run build")


def _settings_module(manage: Path) -> str:
    try:
        with manage.open("rb") as f:
            text = f.read(_MAX_READ).decode("utf-8", "replace")
    except OSError:
        return ""
    found = _SETTINGS_LINE.search(text)
    return found[1] if found and _MODULE.fullmatch(found[1]) else ""


def _candidates(directory: Path) -> list[str]:
    """Where a project's Django is, most likely first: absolute, existing, each once."""
    paths = [directory / v / "bin" / "python" for v in (".venv", "venv", "env")]
    if os.environ.get("VIRTUAL_ENV"):
        paths.append(Path(os.environ["VIRTUAL_ENV"]) / "bin" / "python")
    paths += [Path(p) for p in (shutil.which("python3"), shutil.which("python"), HOSTS_PYTHON) if p]
    seen: list[str] = []
    for p in paths:
        # Absolute, not resolved: a venv's python is a link, and it is the venv's own sys.path we want.
        path = os.path.abspath(p)
        if path not in seen and os.access(path, os.X_OK) and _ABS_PATH.fullmatch(path):
            seen.append(path)
    return seen


def _django_python(directory: Path, settings: str) -> tuple[str, dict]:
    """The first candidate that imports Django, and what it said; all of them
    together get PROBE_TIMEOUT, so settings that hang cost that once."""
    deadline = time.monotonic() + PROBE_TIMEOUT
    for python in _candidates(directory):
        found = _probe(python, directory, settings, deadline - time.monotonic())
        if found.get("django") or found.get("error") == _TIMED_OUT:
            return (python, found) if found.get("django") else ("", found)
    return "", {}


def _probe(python: str, directory: Path, settings: str, timeout: float) -> dict:
    """What `python` says of the project (see _PROBE); {} if nothing usable,
    {"error": _TIMED_OUT} if nothing within `timeout`."""
    if timeout <= 0:
        return {"error": _TIMED_OUT}
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    if settings:
        env["DJANGO_SETTINGS_MODULE"] = settings
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    try:
        proc = subprocess.Popen([python, "-c", _PROBE], cwd=directory, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        return {}
    out = _tail(proc, timeout)
    if out is None:
        return {"error": _TIMED_OUT}
    # The settings may print: the answer is the last line.
    lines = out.decode("utf-8", "replace").strip().splitlines()
    try:
        found = json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) and _VERSION.fullmatch(str(found.get("version", ""))) else {}


def _tail(proc: subprocess.Popen, timeout: float) -> bytes | None:
    """The last _MAX_READ bytes `proc` writes before it ends, whatever it
    writes; None, and it is killed, if it has not ended within `timeout`."""
    deadline = time.monotonic() + timeout
    kept = b""
    fd = proc.stdout.fileno()
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                kept = (kept + chunk)[-_MAX_READ:]
        proc.wait(max(0.0, deadline - time.monotonic()))
        return kept
    except subprocess.TimeoutExpired:
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _version_of(python: str) -> str:
    if not os.access(python, os.X_OK):
        return ""
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    version = out.stdout.strip()
    return version if _VERSION.fullmatch(version) else ""


def _wsgi_file(directory: Path, application: str, settings: str) -> str:
    """The WSGI file: WSGI_APPLICATION's module, else <package>/wsgi.py of
    the settings' package, else the one <package>/wsgi.py beside manage.py."""
    modules = []
    if _MODULE.fullmatch(application) and "." in application:
        modules.append(application.rpartition(".")[0])
    if settings:
        modules.append(f"{settings.split('.')[0]}.wsgi")
    for module in modules:
        rel = module.replace(".", "/") + ".py"
        if _is_file(directory, rel):
            return rel
    found = [f"{p.parent.name}/wsgi.py" for p in sorted(directory.glob("*/wsgi.py"))
             if p.parent.name.isidentifier() and _is_file(directory, f"{p.parent.name}/wsgi.py")
             and ((p.parent / "settings.py").is_file() or (p.parent / "settings" / "__init__.py").is_file())]
    return found[0] if len(found) == 1 else ""


def _is_file(directory: Path, rel: str) -> bool:
    """rel is a plain file of the project, reached through no link."""
    if not _REL_PATH.fullmatch(rel):
        return False
    at = directory
    for part in rel.split("/"):
        at = at / part
        if at.is_symlink():
            return False
    return at.is_file()


def _inside(directory: Path, path: str) -> str:
    """`path`, absolute as settings give it, relative to the project if it is
    in it (and not the project itself); "" if not."""
    if not path or not os.path.isabs(path) or "\0" in path:
        return ""
    # Both resolved: settings resolve BASE_DIR (startproject's does), and the project may be reached by a link.
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(directory))
    return rel if _REL_PATH.fullmatch(rel) else ""


def free_port(first: int = FIRST_PORT, count: int = 100) -> int:
    """The first port from `first` that nothing listens on at 127.0.0.1."""
    for port in range(first, first + count):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return first
