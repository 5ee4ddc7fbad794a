"""The README's first command: `deploy local local.test` with the checkout's own
targets.yaml runs every stage for real on this machine."""

import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import REPO

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-django, as on a fresh machine


def _has_django() -> bool:
    return subprocess.run([SYSTEM_PYTHON, "-c", "import django"], capture_output=True).returncode == 0


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON) or not _has_django(),
                    reason="needs Debian's python3-django (run .ci/run)")
def test_deploy_local_runs_every_stage(tmp_path):
    checkout = tmp_path / "checkout"
    for part in ("targets.yaml", "templates", "tools", "examples/djangoapp"):
        src, dst = REPO / part, checkout / part
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    # PATH as the machine has it: its first python3 may be a pyenv build
    # without Django, which the local target must not depend on.
    proc = subprocess.run([sys.executable, "-m", "deployer", "local", "local.test", "--output", "plain"],
                          cwd=checkout, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    local = checkout / ".deployer-local"
    live = local / "www" / "local"
    assert live.is_symlink() and (live / "django.wsgi").is_file()
    vhost = (local / "apache2" / "sites-available" / "local.conf").read_text()
    assert f"WSGIScriptAlias / {live}/django.wsgi" in vhost
    assert (local / "apache2" / "sites-enabled" / "local.conf").is_symlink()
    # In the instance's shared directory, linked into the release.
    assert os.readlink(live / "data") == str(local / "www" / "local.shared" / "data")
    db = sqlite3.connect(local / "www" / "local.shared" / "data" / "local.sqlite3")
    applied = db.execute("SELECT name FROM django_migrations WHERE app = 'hello' ORDER BY name").fetchall()
    db.close()
    assert applied == [("0001_initial",), ("0002_seed_greetings",)]
    if shutil.which("apache2ctl"):
        assert "Syntax OK" in proc.stdout  # the rendered vhost passed Apache's own check
    else:
        assert "apache2ctl not installed: skipped" in proc.stdout
