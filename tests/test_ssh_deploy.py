"""Whole deploys over a real sshd on 127.0.0.1 (vpn none), checked on disk."""

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from deployer.cli import main
from tests.conftest import REPO, tree_digest

pytestmark = pytest.mark.sshd


@pytest.fixture
def site(tmp_path, sshd):
    """A source app, a targets.yaml pointing at the sshd, and the 'host' dirs."""
    app = tmp_path / "app"
    (app / "static").mkdir(parents=True)
    (app / "manage.py").write_text("print('manage')\n")
    (app / "django.wsgi").write_text("application = None\n")
    (app / "static" / "site.css").write_text("body { color: red }\n")
    (app / "junk.pyc").write_bytes(b"\0")
    host = tmp_path / "host"
    host.mkdir()
    targets = {
        "targets": {
            "alpha": {
                "hosts": [{"address": "127.0.0.1", "port": sshd.port, "user": "root"}],
                "identity_file": str(sshd.client_key),
                "known_hosts": str(sshd.known_hosts),
                "deploy_root": str(host / "www"),
                "apache": {"dir": str(host / "apache2"),
                           "ctl": f"{REPO}/tools/local-apache2ctl {host / 'apache2'}"},
                # Appends the release it ran in, so the test can count runs.
                "migrate": f'echo "$RELEASE $PWD" >> {host / "migrations.log"}',
                "package": {"source": str(app), "exclude": ["*.pyc"]},
                "template": str(REPO / "templates" / "default_template"),
            }
        }
    }
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump(targets))

    class Site:
        root, targets_file = host, path
        source = app

        def deploy(self, *extra: str) -> tuple[int, str]:
            out = io.StringIO()
            code = main(["alpha", "alpha.example.test", "--targets", str(path),
                         "--output", "plain", *extra], stdout=out)
            return code, out.getvalue()

        def edit(self, **changes):
            doc = yaml.safe_load(path.read_text())
            doc["targets"]["alpha"].update(changes)
            path.write_text(yaml.safe_dump(doc))

        def live(self) -> Path:
            return host / "www" / "alpha"

    return Site()


def test_full_deploy_lands_release_vhost_and_one_migration(site):
    code, out = site.deploy()
    assert code == 0, out
    live = site.live()
    assert live.is_symlink()
    release = Path(os.readlink(live))
    assert release.parent == site.root / "www" / "alpha.releases"
    assert (live / "static" / "site.css").read_text() == "body { color: red }\n"
    assert not (live / "junk.pyc").exists()
    vhost = (site.root / "apache2" / "sites-available" / "alpha.conf").read_text()
    assert "    ServerName alpha.example.test\n" in vhost
    assert f"    WSGIScriptAlias / {live}/django.wsgi\n" in vhost
    assert "<<" not in vhost
    enabled = site.root / "apache2" / "sites-enabled" / "alpha.conf"
    assert os.readlink(enabled) == "../sites-available/alpha.conf"
    # Migrate ran once, inside the new release, before the switch.
    assert (site.root / "migrations.log").read_text() == f"{release.name} {release}\n"
    assert "Syntax OK" in out  # the real Apache configtest of the rendered vhost
    assert "deployer-pid" not in out  # the transport's own marker never shows
    leftovers = [p for p in tree_digest(site.root) if p.endswith((".tar.gz", ".deployer-tmp"))]
    assert leftovers == []


def test_second_deploy_switches_to_changed_app_and_keeps_previous(site):
    assert site.deploy()[0] == 0
    first = os.readlink(site.live())
    (site.source / "static" / "site.css").write_text("body { color: blue }\n")
    code, out = site.deploy()
    assert code == 0, out
    assert os.readlink(site.live()) != first
    assert (site.live() / "static" / "site.css").read_text() == "body { color: blue }\n"
    assert Path(first).is_dir()  # the previous release stays for rollback


def test_dry_run_changes_nothing_on_the_host(site):
    assert site.deploy()[0] == 0
    before = tree_digest(site.root)
    (site.source / "manage.py").write_text("print('changed')\n")
    code, out = site.deploy("--dry-run")
    assert code == 0, out
    assert "dry run" in out and "| " in out  # the rendered vhost is shown
    assert tree_digest(site.root) == before


def test_dry_run_needs_no_ssh(site, tmp_path):
    # The plan is printed without connecting: even a refused key cannot matter.
    site.edit(known_hosts=str(_other_known_hosts(tmp_path, "[127.0.0.1]:1")))
    code, out = site.deploy("--dry-run")
    assert code == 0, out


def _other_known_hosts(tmp_path: Path, entry: str) -> Path:
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, b64 = (tmp_path / "other_key.pub").read_text().split()[:2]
    path = tmp_path / "other_known_hosts"
    path.write_text(f"{entry} {kind} {b64}\n")
    return path


def test_unknown_host_key_is_refused_and_nothing_changes(site, sshd, tmp_path):
    site.edit(known_hosts=str(_other_known_hosts(tmp_path, "[127.0.0.1]:1")))
    before = tree_digest(site.root)
    code, out = site.deploy()
    assert code == 1
    assert "is not in" in out and "refusing to connect" in out
    assert tree_digest(site.root) == before


def test_changed_host_key_is_refused_and_nothing_changes(site, sshd, tmp_path):
    site.edit(known_hosts=str(_other_known_hosts(tmp_path, f"[127.0.0.1]:{sshd.port}")))
    before = tree_digest(site.root)
    code, out = site.deploy()
    assert code == 1
    assert "host key CHANGED" in out
    assert tree_digest(site.root) == before


def test_failed_configtest_restores_vhost_and_keeps_live_release(site, tmp_path):
    assert site.deploy()[0] == 0
    before = tree_digest(site.root)
    broken = tmp_path / "broken_template"
    broken.write_text((REPO / "templates" / "default_template").read_text()
                      + "NotAnApacheDirective <<HOSTNAME>>\n")
    site.edit(template=str(broken))
    (site.source / "manage.py").write_text("print('new')\n")
    code, out = site.deploy()
    assert code == 1
    assert "NotAnApacheDirective" in out  # Apache's own message
    # Checked before migrate: not even the migration ran.
    assert tree_digest(site.root) == before


def test_failed_migrate_removes_new_release_and_first_vhost(site):
    site.edit(migrate="echo boom >&2; exit 3")
    code, out = site.deploy()
    assert code == 1
    assert "boom" in out and "rolling back" in out
    assert not site.live().exists()
    assert list((site.root / "www" / "alpha.releases").iterdir()) == []
    assert not (site.root / "apache2" / "sites-available" / "alpha.conf").exists()
    assert not (site.root / "apache2" / "sites-enabled" / "alpha.conf").exists()


def test_json_output_is_one_event_per_line(site):
    out = io.StringIO()
    code = main(["alpha", "alpha.example.test", "--targets", str(site.targets_file),
                 "--output", "json"], stdout=out)
    assert code == 0
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert events[0]["event"] == "start" and events[-1] == {**events[-1], "event": "finished",
                                                             "exit_code": 0, "ok": True}
    migrate = [e for e in events if e["event"] == "step_finished" and e["stage"] == "migrate"]
    assert [e["host"] for e in migrate] == [f"127.0.0.1:{site_port(site)}"]


def site_port(site) -> int:
    doc = yaml.safe_load(site.targets_file.read_text())
    return doc["targets"]["alpha"]["hosts"][0]["port"]


def test_live_path_that_is_a_real_directory_is_not_replaced(site):
    # As left by the old bash script, which unpacked straight into DEPLOY_PATH.
    legacy = site.live()
    legacy.mkdir(parents=True)
    (legacy / "manage.py").write_text("old\n")
    before = tree_digest(legacy)
    code, out = site.deploy()
    assert code == 1
    assert f"{legacy} exists and is not a symlink" in out
    assert tree_digest(legacy) == before
    assert list((site.root / "www" / "alpha.releases").iterdir()) == []  # rolled back
    assert not (site.root / "apache2" / "sites-available" / "alpha.conf").exists()
