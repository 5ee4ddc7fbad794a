"""examples/plugin, installed for real with pip (no network), found by deploy
through its entry point, and run by a local deploy: REVISION in the release."""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import yaml

from deployer import context
from deployer.config import load
from tests.conftest import REPO

SYSTEM_PYTHON = "/usr/bin/python3"  # the local target migrates with Debian's Python and its python3-django
PIPELINE = ["package", "vpn", "upload", "revision", "render", "migrate", "restart"]


def _can_build_wheels() -> bool:
    # --no-build-isolation builds with the venv's own setuptools: before 70.1
    # it needs the `wheel` package for bdist_wheel, which a venv may lack.
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(p) if p.isdigit() else 0 for p in (version.split(".") + ["0"])[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _has_django() -> bool:
    return (os.path.exists(SYSTEM_PYTHON)
            and subprocess.run([SYSTEM_PYTHON, "-c", "import django"], capture_output=True).returncode == 0)


pytestmark = pytest.mark.skipif(not _can_build_wheels(),
                                reason="needs setuptools>=70.1 (or wheel) in the venv to build offline")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A directory with the plugin installed in it, as pip installs it: put on
    PYTHONPATH, importlib.metadata finds its entry point there."""
    tmp = tmp_path_factory.mktemp("plugin")
    # Built from a copy: pip builds in the source folder, leaving build/ and
    # *.egg-info behind, which must not land in the checkout.
    source = tmp / "source"
    shutil.copytree(REPO / "examples" / "plugin", source,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    target = tmp / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--no-cache-dir", "--disable-pip-version-check", "--target", str(target),
                           str(source)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


@pytest.fixture
def checkout(tmp_path):
    """A copy of what the local target deploys from, its pipeline with `revision`."""
    root = tmp_path / "checkout"
    for part in ("targets.yaml", "templates", "tools", "examples/djangoapp"):
        src, dst = REPO / part, root / part
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():  # tools/ may go: the local target's Apache is becoming deployer's own
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    set_local(root, pipeline=PIPELINE)
    return root


def set_local(root, **keys):
    path = root / "targets.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["targets"]["local"].update(keys)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def deploy(checkout, site, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(site), os.environ.get("PYTHONPATH"))))}
    return subprocess.run([sys.executable, "-m", "deployer", "local", "local.test", "--output", "json", *args],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)


def events(proc):
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def release_of(proc):
    return next(e["release"] for e in events(proc) if e["event"] == "start")


def test_pip_installs_the_stage_in_the_entry_point_group(site):
    (dist,) = site.glob("deployer_revision_stage-*.dist-info")
    assert "[deployer.stages]\nrevision = deployer_revision_stage:plan" in (dist / "entry_points.txt").read_text()
    assert (site / "deployer_revision_stage.py").is_file()


def test_dry_run_lists_the_revision_step_with_the_file(checkout, site):
    proc = deploy(checkout, site, "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    release = release_of(proc)
    (step,) = [e for e in events(proc) if e["event"] == "planned" and e["stage"] == "revision"]
    assert step["step"] == f"write REVISION into release {release}"
    assert step["kind"] == "install" and step["hosts"] == ["local"]
    details = "\n".join(step["details"])
    assert f"/.deployer-local/www/local.releases/{release}/REVISION (mode 0644" in details
    assert f"release={release}" in details and "instance=local" in details and "hostname=local.test" in details
    # In pipeline order, between upload and render.
    stages = [e["stage"] for e in events(proc) if e["event"] == "planned"]
    assert stages.index("upload") < stages.index("revision") < stages.index("render")
    assert not (checkout / ".deployer-local" / "www").exists()  # a dry run changes nothing


@pytest.mark.skipif(not _has_django(), reason="needs Debian's python3-django (run .ci/run)")
def test_deploy_writes_revision_into_the_new_release(checkout, site):
    # Without restart: it would start the local target's own Apache on a fixed
    # port, which would outlive this test's folder. The release is made and
    # migrated all the same; REVISION is in it before it could go live.
    proc = deploy(checkout, site, "--skip", "restart")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    release = release_of(proc)
    made = checkout / ".deployer-local" / "www" / "local.releases" / release
    assert (made / "django.wsgi").is_file()
    revision = made / "REVISION"
    assert revision.stat().st_mode & 0o777 == 0o644
    lines = revision.read_text().splitlines()
    assert lines[0] == "# Written by the deployer revision stage for instance local; every release has its own."
    fields = dict(line.split("=", 1) for line in lines[1:])
    assert fields["release"] == release and fields["instance"] == "local" and fields["hostname"] == "local.test"
    assert fields["revision"] == "-"  # the copy is not a git checkout
    assert "(pid " in fields["deployed_by"]
    # Kept: what the undo would have needed is gone once the run succeeded.
    assert not list(made.glob(".REVISION.deployer-*"))
    # Not in the release's file list: the next deploy never links it into its own release.
    assert "REVISION" not in (made / ".deployer-sums").read_text().split()


def test_a_failed_deploy_takes_revision_away_with_its_release(checkout, site):
    set_local(checkout, migrate="exit 3")  # fails after revision has written the file
    proc = deploy(checkout, site, "--skip", "restart")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    written = [e for e in events(proc) if e["event"] == "step_finished" and e["stage"] == "revision"]
    assert written and all(e["ok"] for e in written)
    # Undone newest first: REVISION, then the release it was in; no other release was there.
    releases = checkout / ".deployer-local" / "www" / "local.releases"
    assert not releases.exists() or not any(releases.iterdir())


def test_the_file_says_the_commit_and_build_one_line_each(checkout, site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    from deployer_revision_stage import plan

    target = load(checkout / "targets.yaml").resolve("local")
    ctx = context.make("local", "local.test", target, {}, tuple(PIPELINE))
    (step,) = plan(replace(ctx, revision="1a2b3c4d5e6f", ci="TeamCity build Deploy\nlocal\t#57"))
    assert step.content.splitlines()[1:] == [
        f"release={ctx.release}", "revision=1a2b3c4d5e6f", "instance=local", "hostname=local.test",
        f"deployed_by={ctx.who}", "ci=TeamCity build Deploy local #57",
    ]
    assert step.path == f"{ctx.release_path}/REVISION" and step.hosts == ctx.host_names
    # No new release, nothing to describe: the live one came from other code.
    assert plan(replace(ctx, stages=("render", "restart"))) == ()


def test_a_source_with_its_own_revision_file_is_refused_before_anything_runs(checkout, site):
    (checkout / "examples" / "djangoapp" / "REVISION").write_text("v1\n")
    proc = deploy(checkout, site)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "has its own REVISION" in proc.stdout
    assert not (checkout / ".deployer-local").exists()


@pytest.mark.parametrize("pipeline, args, message", [
    # A misspelt plugin name in targets.yaml: the plugin is installed, under its own name.
    (["package", "upload", "revison", "render"], (), "unknown stage 'revison' in the pipeline of target 'local'"),
    (PIPELINE, ("--skip", "revison"), "no stage 'revison' in the pipeline"),
])
def test_a_misspelt_stage_is_a_usage_error(checkout, site, pipeline, args, message):
    set_local(checkout, pipeline=pipeline)
    proc = deploy(checkout, site, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stdout
    assert not (checkout / ".deployer-local").exists()  # nothing ran
