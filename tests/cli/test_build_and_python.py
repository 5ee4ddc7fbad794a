"""`build:` and `python:` in targets.yaml, for real on this machine. The
build runs before the tree is hashed, in the source or a copy of it, and
a failing one stops the run before anything is opened. With `python:`: wheels resolved for
the hosts' interpreter (not the runner's), a virtualenv built from them
with no index and kept by what it was built from, the app served from it
by the local target's Apache (mod_wsgi's python-home=<<VENV>>), migrate run
with it, and a host whose Python differs refused before anything changes.
Offline: the wheels come from folders (.ci/run downloads Django's)."""

import base64
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from deployer.artifact import wheels
from deployer.config import load
from tests.cli.test_local_default import _copy_checkout, _get, _stop
from tests.conftest import REPO, SYSTEM_PYTHON, free_port, needs_local_site, tree_digest

APP_WHEELS = REPO / ".ci" / "app-wheels"  # Django's wheels: made by .ci/run
DJANGO = "django==4.2.16"
needs_app_wheels = pytest.mark.skipif(not APP_WHEELS.is_dir(), reason="needs .ci/app-wheels (made by .ci/run)")


def _wheel(folder: Path, name: str, version: str, module: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel of one module, as a build backend writes it."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{module}.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                                     *(f"Requires-Dist: {r}\n" for r in requires)]),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(text: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{p},sha256={digest(c)},{len(c.encode())}\n" for p, c in files.items())
    record += f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, c in {**files, f"{dist}/RECORD": record}.items():
            z.writestr(p, c)
    return path


@pytest.fixture
def tiny(tmp_path) -> Path:
    """tinylib needs tinydep only below Python 3.11.3, as redis needs async-timeout."""
    folder = tmp_path / "tiny-wheels"
    folder.mkdir()
    _wheel(folder, "tinydep", "1.0", "tinydep")
    _wheel(folder, "tinylib", "1.0", "tinylib", ('tinydep>=1.0; python_full_version < "3.11.3"',))
    _wheel(folder, "tinylib", "2.0", "tinylib", ('tinydep>=1.0; python_full_version < "3.11.3"',))
    return folder


def _hosts_python() -> str:
    return subprocess.run([SYSTEM_PYTHON, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("version, has_dep", [("3.11.2", True), ("3.11.7", False)])
def test_wheels_are_chosen_for_the_hosts_python_not_the_runners(tmp_path, tiny, monkeypatch, version, has_dep):
    from deployer import steps
    from deployer.connectors.local import LocalTransport
    from deployer.run.on_runner import OnRunner

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "requirements.txt").write_text("tinylib\n")
    (tmp_path / "targets.yaml").write_text(
        "targets:\n  t:\n    hosts: [web1]\n    known_hosts: kh\n"
        f"    python: {{requirements: requirements.txt, version: '{version}', no_index: true,"
        f" find_links: [{tiny}]}}\n")
    python = load(str(tmp_path / "targets.yaml")).resolve_for_dry_run("t")[0].python
    step = steps.Wheels("wheels", python=python, dest=wheels.set_path(python))
    r = OnRunner(LocalTransport(), [], lambda s: 120).run(step)
    assert r.ok, r.stdout + r.stderr
    made = sorted(os.listdir(Path(step.dest) / "wheels"))
    # The runner is 3.11.x: pip alone would add tinydep for 3.11.7 too (pypa/pip#11010).
    assert made == (["tinydep-1.0-py3-none-any.whl"] if has_dep else []) + ["tinylib-2.0-py3-none-any.whl"]
    pinned = (Path(step.dest) / "requirements.txt").read_text()
    assert "tinylib==2.0" in pinned and "--hash=sha256:" in pinned
    # Kept: the next run with the same requirements makes nothing.
    again = OnRunner(LocalTransport(), [], lambda s: 120).run(step)
    assert again.ok and "made by an earlier run" in again.stdout


def _python_checkout(tmp_path: Path, tiny: Path, version: str) -> Path:
    """The README's checkout with `python:` on the local target: Django from
    wheels, and an app that imports tinylib, which only the virtualenv has."""
    checkout = _copy_checkout(tmp_path / "checkout")
    port = free_port()
    app = checkout / "examples" / "djangoapp"
    (app / "requirements.txt").write_text(f"{DJANGO}\ntinylib==1.0\n")
    wsgi = app / "django.wsgi"
    wsgi.write_text("import tinylib  # only in the virtualenv\n" + wsgi.read_text())
    template = checkout / "templates" / "default_template"
    text = template.read_text()
    assert "python-path=<<DEPLOY_PATH>>" in text
    template.write_text(text.replace("python-path=", "python-home=<<VENV>> python-path=", 1))
    targets = checkout / "targets.yaml"
    text = targets.read_text().replace("port: 8480}", f"port: {port}}}")
    text = text.replace("    migrate: /usr/bin/python3 manage.py migrate --noinput\n",
                        "    migrate: python manage.py migrate --noinput\n"
                        f"    python: {{requirements: examples/djangoapp/requirements.txt, version: '{version}',"
                        f" no_index: true, find_links: [{APP_WHEELS}, {tiny}]}}\n")
    assert "python:" in text
    targets.write_text(text)
    return checkout


def _deploy(checkout: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployer", "local", "local.test", "--output", "plain", *extra],
                          cwd=checkout, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env={**os.environ, "XDG_CACHE_HOME": str(checkout.parent / "cache")})


def _port(checkout: Path) -> int:
    return load(str(checkout / "targets.yaml")).resolve("local").apache.port


def _venvs(checkout: Path) -> list[str]:
    return sorted(os.listdir(checkout / ".deployer-local" / "www" / ".deployer-venvs"))


@needs_local_site
@needs_app_wheels
def test_a_virtualenv_per_requirements_served_by_apache_and_kept_for_a_rollback(tmp_path, tiny):
    checkout = _python_checkout(tmp_path, tiny, _hosts_python())
    live = checkout / ".deployer-local" / "www" / "local"
    try:
        first = _deploy(checkout)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "built the virtualenv" in first.stdout
        assert _get(_port(checkout), "/health", "local.test")[0] == 200
        (venv,) = _venvs(checkout)
        assert os.readlink(live / ".venv").endswith(venv)
        version = subprocess.run([str(live / ".venv" / "bin" / "python"), "-c", "import django, tinylib;"
                                  " print(django.__version__, tinylib.VERSION)"], capture_output=True, text=True)
        assert version.stdout.split() == [DJANGO.split("==")[1], "1.0"]

        # Warm: nothing made again, on the runner or the host.
        second = _deploy(checkout)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "made by an earlier run" in second.stdout and "reused the virtualenv" in second.stdout
        assert _venvs(checkout) == [venv]
        kept = os.readlink(live)

        # A requirements change: one new virtualenv; the old one stays for the release that uses it.
        (checkout / "examples" / "djangoapp" / "requirements.txt").write_text(f"{DJANGO}\ntinylib==2.0\n")
        third = _deploy(checkout)
        assert third.returncode == 0, third.stdout + third.stderr
        assert "built the virtualenv" in third.stdout
        assert len(_venvs(checkout)) == 2
        assert _get(_port(checkout), "/health", "local.test")[0] == 200

        # Back to the second release: its virtualenv is there, and Apache serves from it.
        back = subprocess.run([sys.executable, "-m", "deployer.cli.manage", "rollback", "local",
                               "--output", "plain"], cwd=checkout, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert back.returncode == 0, back.stdout + back.stderr
        assert os.readlink(live) == kept
        assert os.readlink(live / ".venv").endswith(venv)
        assert _get(_port(checkout), "/health", "local.test")[0] == 200
    finally:
        _stop(checkout)


@needs_local_site
@needs_app_wheels
def test_a_host_whose_python_differs_fails_the_run_before_anything_changes(tmp_path, tiny):
    have = _hosts_python()
    major, minor, patch = have.split(".")
    want = f"{major}.{minor}.{int(patch) + 1}"
    checkout = _python_checkout(tmp_path, tiny, want)
    www = checkout / ".deployer-local" / "www"
    www.mkdir(parents=True)
    before = tree_digest(www)
    r = _deploy(checkout)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"is Python {have}, not {want}" in r.stdout
    assert tree_digest(www) == before


def _build_checkout(tmp_path: Path, build: str) -> Path:
    checkout = _copy_checkout(tmp_path / "checkout")
    targets = checkout / "targets.yaml"
    text = targets.read_text().replace("port: 8480}", f"port: {free_port()}}}")
    shared = "    shared: {dirs: [data, media]}\n"
    targets.write_text(text.replace(shared, shared + build))
    return checkout


@needs_local_site
def test_a_build_in_a_copy_is_packaged_and_leaves_the_source_as_it_was(tmp_path):
    checkout = _build_checkout(tmp_path, "    build: {run: ['echo $CONFIG_NAME > BUILT.txt', 'test ! -e .git'],"
                                         " copy_source: true}\n")
    (checkout / "examples" / "djangoapp" / ".git").mkdir()
    source = tree_digest(checkout / "examples")
    try:
        r = _deploy(checkout)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (checkout / ".deployer-local" / "www" / "local" / "BUILT.txt").read_text() == "local\n"
        assert tree_digest(checkout / "examples") == source
        assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("deployer-local-build-")]
    finally:
        _stop(checkout)


def test_a_failing_build_stops_the_run_before_anything_is_opened(tmp_path):
    checkout = _build_checkout(tmp_path, "    build: ['touch made-by-build', 'echo broken >&2; exit 3']\n")
    r = _deploy(checkout)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "build: echo broken >&2; exit 3" in r.stdout and "broken" in r.stdout
    assert r.stdout.rstrip().endswith("nothing was changed on any host")
    assert (checkout / "examples" / "djangoapp" / "made-by-build").exists()  # in the source, as configured
    assert not (checkout / ".deployer-local").exists()
