"""Ctrl-C and SIGTERM (TeamCity's "stop build") mid-deploy: undone, exit 130."""

import os
import signal
import subprocess

import pytest
import yaml

from tests.conftest import REPO, deploy_process, free_port, ignores_term, process_running, tree_digest, wait_until


def _local_target(tmp_path, migrate: str, **extra) -> str:
    src = tmp_path / "src"
    src.mkdir()
    (src / "manage.py").write_text("x\n")
    doc = {"targets": {"local": {
        "transport": "local", "deploy_root": "host/www",
        "apache": {"dir": "host/apache2", "ctl": "builtin", "port": free_port()},
        "migrate": migrate, "package": {"source": "src"},
        "template": str(REPO / "templates" / "default_template"), **extra,
    }}}
    (tmp_path / "targets.yaml").write_text(yaml.safe_dump(doc))
    return str(tmp_path / "targets.yaml")


def _deploy(targets: str) -> subprocess.Popen:
    return deploy_process("local", "local.test", targets)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_migrate_rolls_back_and_exits_130(tmp_path, sig):
    started = tmp_path / "started"
    # Bounded: the sleep ends by itself even if the test went wrong.
    migrate = f"echo $$ > {started}.tmp && mv {started}.tmp {started} && exec sleep 20"
    proc = _deploy(_local_target(tmp_path, migrate))
    wait_until(started.exists, proc, 20)
    os.kill(proc.pid, sig)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 130, out
    assert f"interrupted ({signal.Signals(sig).name})" in out
    assert "rolling back" in out
    host = tmp_path / "host"
    # The release and the vhost are gone; only the empty parent dirs remain.
    assert {k for k, v in tree_digest(host).items() if not v.startswith("dir")} == set()
    # The migrate command itself was stopped, not only the shell around it.
    # Gone by the time deploy exits, not some time later.
    assert not process_running(int(started.read_text()))


def test_a_migrate_that_ignores_sigterm_is_killed_before_deploy_exits(tmp_path):
    # It would finish its work 17 s after the deploy said "interrupted".
    started, done = tmp_path / "started", tmp_path / "DONE"
    targets = _local_target(tmp_path, ignores_term(started, done))
    proc = _deploy(targets)
    wait_until(started.exists, proc, 20)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    # Gone by the time deploy exits, not some time later.
    assert not process_running(int(started.read_text()))
    assert not done.exists()


def test_a_step_past_its_time_limit_is_stopped_and_the_run_undone(tmp_path):
    started = tmp_path / "started"
    targets = _local_target(tmp_path, f"echo $$ > {started}; exec sleep 30", migrate_timeout=1)
    proc = _deploy(targets)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "stopped after 1 s, the time limit of this step" in out
    assert "rolling back" in out
    assert not process_running(int(started.read_text()))
    assert {k for k, v in tree_digest(tmp_path / "host").items() if not v.startswith("dir")} == set()
