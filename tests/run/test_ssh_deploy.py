"""Whole deploys over a real sshd on 127.0.0.1 (vpn none), checked on disk."""

import grp
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployer.cli.deploy import main
from tests.conftest import REPO, deploy_process, ignores_term, process_running, tree_digest, wait_until

pytestmark = pytest.mark.sshd


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
    assert f"    WSGIScriptAlias / {live}/django.wsgi process-group=alpha application-group=%{{GLOBAL}}\n" in vhost
    assert "<<" not in vhost
    enabled = site.root / "apache2" / "sites-enabled" / "alpha.conf"
    assert os.readlink(enabled) == "../sites-available/alpha.stub"
    # Migrate ran once, inside the new release, before the switch.
    assert (site.root / "migrations.log").read_text() == f"{release.name} {release}\n"
    assert "Syntax OK" in out  # the real Apache configtest of the rendered vhost
    assert "deployer-pid" not in out  # the transport's own marker never shows
    leftovers = [p for p in tree_digest(site.root) if p.endswith((".tar.gz", ".deployer-tmp"))]
    assert leftovers == []


def test_second_deploy_switches_to_changed_app_and_keeps_previous(site, sshd):
    assert site.deploy()[0] == 0
    first = os.readlink(site.live())
    (site.source / "static" / "site.css").write_text("body { color: blue }\n")
    since = sshd.log.stat().st_size
    code, out = site.deploy()
    assert code == 0, out
    assert os.readlink(site.live()) != first
    assert (site.live() / "static" / "site.css").read_text() == "body { color: blue }\n"
    assert Path(first).is_dir()  # the previous release stays for rollback
    # Three sessions: the lock to the configtest; migrate, once every host
    # has passed; the switch and reload, held open for the run's end (the
    # history line, the lock's release), which takes none of its own.
    assert sshd.log.read_bytes()[since:].decode().count("Starting session: ") == 3
    assert site.history()[-1][2] == "done"
    assert not site.lock().exists()


def test_a_step_failing_after_the_switch_puts_it_back_and_its_held_session_ends_the_run(site):
    assert site.deploy()[0] == 0
    first = os.readlink(site.live())
    site.edit(hooks={"after": {"restart": [{"run": "echo no >&2; false", "on": "local"}]}})
    (site.source / "static" / "site.css").write_text("body { color: blue }\n")
    code, out = site.deploy()
    assert code == 1, out
    assert os.readlink(site.live()) == first
    assert site.history()[-1][2] == "failed, undone"
    assert not site.lock().exists()
    # And the next run takes the lock at once.
    site.edit(hooks={})
    assert site.deploy()[0] == 0


def test_sigterm_while_sessions_are_held_undoes_the_switch_and_their_end_still_comes(site, sshd, tmp_path):
    # The interrupt stops what runs, not the held sessions: the rollback
    # takes sessions of its own, then the held one ends the run.
    assert site.deploy()[0] == 0
    first = os.readlink(site.live())
    started = tmp_path / "started"
    site.edit(hooks={"after": {"restart": [{"run": f"touch {started}; sleep 30", "on": "local"}]}})
    (site.source / "static" / "site.css").write_text("body { color: blue }\n")
    proc = deploy_process("alpha", "alpha.example.test", site.targets_file)
    wait_until(started.exists, proc, 30)
    since = sshd.log.stat().st_size
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert os.readlink(site.live()) == first
    assert site.history()[-1][2] == "interrupted, undone"
    assert not site.lock().exists()
    # One a command of the undo (each change, then Apache reloaded), none for the run's end.
    changes = int(out.split("rolling back ", 1)[1].split(" change(s)", 1)[0])
    assert sshd.log.read_bytes()[since:].decode().count("Starting session: ") == changes + 1, out


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
    # The instance's first release, and the directory made for it, are gone.
    assert not (site.root / "www" / "alpha.releases").exists()
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
    assert not (site.root / "migrations.log").exists()  # found before migrate, not at the switch
    assert tree_digest(legacy) == before
    assert not (site.root / "www" / "alpha.releases").exists()  # refused before the first change
    assert not (site.root / "apache2" / "sites-available" / "alpha.conf").exists()


# -- files on the host: modes, owners, planted names, files that are not ours ------------

def vhost(site) -> Path:
    return site.root / "apache2" / "sites-available" / "alpha.conf"


def test_vhost_is_not_readable_by_others(site):
    assert site.deploy()[0] == 0
    st = vhost(site).stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o640, 0)


def test_vhost_mode_owner_and_group_come_from_targets_yaml(site):
    site.edit(apache={**yaml.safe_load(site.targets_file.read_text())["targets"]["alpha"]["apache"],
                      "vhost_mode": "0600", "vhost_owner": "root", "vhost_group": "www-data"})
    assert site.deploy()[0] == 0
    st = vhost(site).stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 0, grp.getgrnam("www-data").gr_gid)


def test_rollback_puts_back_the_previous_vhost_with_its_mode_and_owner(site, tmp_path):
    assert site.deploy()[0] == 0
    www_data = grp.getgrnam("www-data").gr_gid
    os.chown(vhost(site), 0, www_data)
    os.chmod(vhost(site), 0o640)
    before = vhost(site).stat()
    content = vhost(site).read_bytes()
    broken = tmp_path / "broken_template"
    broken.write_text("NotAnApacheDirective <<HOSTNAME>>\n")
    site.edit(template=str(broken))
    code, out = site.deploy()
    assert code == 1 and "rolling back" in out
    after = vhost(site).stat()
    assert (after.st_ino, after.st_mode, after.st_uid, after.st_gid) == \
        (before.st_ino, before.st_mode, 0, www_data)
    assert vhost(site).read_bytes() == content
    # Nothing deployer kept for the undo is left beside it.
    assert sorted(p.name for p in vhost(site).parent.iterdir()) == [
        ".deployer-apache.lock", "alpha.conf", "alpha.stub"]


def test_a_link_planted_at_the_old_temp_name_is_never_written_through(site, tmp_path):
    # deployer used to write sites-available/alpha.conf.deployer-tmp and rename it.
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    available = vhost(site).parent
    available.mkdir(parents=True)
    (available / "alpha.conf.deployer-tmp").symlink_to(victim)
    code, out = site.deploy()
    assert code == 0, out
    assert victim.read_text() == "precious\n" and victim.stat().st_mode & 0o777 == 0o644
    assert not vhost(site).is_symlink() and vhost(site).read_text().startswith("# Written by deployer")


@pytest.mark.parametrize(("plant", "message"), [
    (lambda p: p.symlink_to("/dev/zero"), "is a symbolic link; deployer will not write through it"),
    (lambda p: os.mkfifo(p), "exists and is not a regular file"),
    (lambda p: p.write_text("<VirtualHost *:80>\n</VirtualHost>\n"), "was not written by deployer"),
    (lambda p: p.write_bytes(b"x" * (1024 * 1024 + 1)), "is larger than 1 MiB"),
])
def test_a_vhost_path_that_is_not_our_file_fails_the_deploy_and_changes_nothing(site, plant, message):
    vhost(site).parent.mkdir(parents=True)
    plant(vhost(site))
    before = tree_digest(site.root)
    # In a child with a bound: a FIFO used to hang the deploy and /dev/zero to exhaust its memory.
    proc = subprocess.run([sys.executable, "-m", "deployer", "alpha", "alpha.example.test", "--targets",
                           str(site.targets_file), "--output", "plain"], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stdout
    assert f"{vhost(site)} {message}" in proc.stdout
    # The new release was removed, and the directory made for it (deploy_root stays).
    after = tree_digest(site.root)
    assert after == {**before, "www": after["www"]}


def test_a_config_name_cannot_take_a_vhost_deployer_did_not_write(site):
    # Debian's own site: `deploy 000-default ...` must not replace it.
    site.edit()
    doc = yaml.safe_load(site.targets_file.read_text())
    doc["targets"]["000-default"] = doc["targets"]["alpha"]
    site.targets_file.write_text(yaml.safe_dump(doc))
    default = vhost(site).parent / "000-default.conf"
    default.parent.mkdir(parents=True)
    default.write_text("<VirtualHost *:80>\n\tDocumentRoot /var/www/html\n</VirtualHost>\n")
    out = io.StringIO()
    code = main(["000-default", "default.example.test", "--targets", str(site.targets_file),
                 "--output", "plain"], stdout=out)
    assert code == 1
    assert f"{default} was not written by deployer" in out.getvalue()
    assert default.read_text().startswith("<VirtualHost")


@pytest.mark.parametrize("served_as", [
    "ServerName alpha.example.test",
    "ServerName other.test\n    ServerAlias www.other.test Alpha.Example.Test:80",
    "ServerAlias *.example.test",
    'ServerName "alpha.example.test"',
    "ServerName alpha.example.test\r",
    "ServerAlias other.test \\\n        alpha.example.test",
    "ServerAlias foo(bar.test [a-z]*.test alpha.example.test",
])
def test_a_hostname_another_site_serves_is_refused(site, served_as):
    enabled = site.root / "apache2" / "sites-enabled"
    enabled.mkdir(parents=True)
    (enabled / "other.conf").write_text(f"<VirtualHost *:80>\n    {served_as}\n</VirtualHost>\n")
    before = tree_digest(site.root)
    code, out = site.deploy()
    assert code == 1
    assert f"already served by other.conf (alpha.example.test) in {enabled}" in out
    after = tree_digest(site.root)
    assert after == {**before, "www": after["www"]}


@pytest.mark.parametrize("served_as", ["ServerName other.test", "ServerAlias [a-z]*.test foo(bar.test",
                                       "# ServerName alpha.example.test", "ServerAlias *.other.test"])
def test_other_sites_that_do_not_serve_the_name_are_no_obstacle(site, served_as):
    enabled = site.root / "apache2" / "sites-enabled"
    enabled.mkdir(parents=True)
    (enabled / "other.conf").write_text(f"<VirtualHost *:{site.http_port}>\n    {served_as}\n</VirtualHost>\n")
    code, out = site.deploy()
    assert code == 0, out


def test_an_alias_given_as_a_var_cannot_take_another_site(site, tmp_path):
    # TeamCity parameters reach --var: `ServerAlias <<ALIAS>>` with another
    # instance's name would have made this site answer for it.
    template = tmp_path / "aliased"
    template.write_text("<VirtualHost *:<<HTTP_PORT>>>\n    ServerName <<HOSTNAME>>\n    ServerAlias <<ALIAS>>\n"
                        "</VirtualHost>\n")
    site.edit(template=str(template))
    enabled = site.root / "apache2" / "sites-enabled"
    enabled.mkdir(parents=True)
    (enabled / "beta.conf").write_text(f"<VirtualHost *:{site.http_port}>\n    ServerName beta.example.test\n"
                                       "</VirtualHost>\n")
    code, out = site.deploy("--var", "ALIAS=www.alpha.example.test beta.example.test")
    assert code == 1
    assert f"already served by beta.conf (beta.example.test) in {enabled}" in out
    assert site.deploy("--var", "ALIAS=www.alpha.example.test")[0] == 0


def test_one_instance_cannot_take_anothers_hostname(site):
    assert site.deploy()[0] == 0
    doc = yaml.safe_load(site.targets_file.read_text())
    doc["targets"]["aaa"] = doc["targets"]["alpha"]
    site.targets_file.write_text(yaml.safe_dump(doc))
    out = io.StringIO()
    code = main(["aaa", "alpha.example.test", "--targets", str(site.targets_file), "--output", "plain"],
                stdout=out)
    assert code == 1
    assert "already served by alpha.conf (alpha.example.test)" in out.getvalue()
    assert not (vhost(site).parent / "aaa.conf").exists()
    # The same instance may of course deploy its own hostname again.
    assert site.deploy()[0] == 0


# -- what a command prints is kept bounded ----------------------------------------------

def test_a_migration_that_prints_megabytes_keeps_only_the_tail(site):
    site.edit(migrate="head -c 20000000 /dev/zero | tr '\\0' x; echo; echo the end")
    out = io.StringIO()
    code = main(["alpha", "alpha.example.test", "--targets", str(site.targets_file), "--output", "json"],
                stdout=out)
    assert code == 0
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    (migrate,) = [e for e in events if e["event"] == "step_finished" and e["stage"] == "migrate"]
    kept = 256 * 1024
    assert migrate["stdout"].startswith(f"[{20000000 + 1 + 8 - kept} earlier bytes of output not kept]\n")
    assert migrate["stdout"].endswith("x\nthe end\n")
    assert len(migrate["stdout"]) < kept + 100


# -- every remote command is bounded, and stopped means stopped ------------------------------

def test_a_remote_command_that_ignores_sigterm_is_killed_before_deploy_exits(site, tmp_path):
    started, done = tmp_path / "started", tmp_path / "DONE"
    site.edit(migrate=ignores_term(started, done))
    proc = deploy_process("alpha", "alpha.example.test", site.targets_file)
    wait_until(started.exists, proc, 30)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=40)
    assert proc.returncode == 130, out
    assert not process_running(int(started.read_text()))
    assert not done.exists()
    assert not site.live().exists()  # undone


def test_a_remote_step_past_its_time_limit_fails_and_is_undone(site, tmp_path):
    started = tmp_path / "started"
    site.edit(migrate_timeout=1, migrate=f"echo $$ > {started}; exec sleep 30")
    code, out = site.deploy()
    assert code == 1
    assert "stopped after 1 s, the time limit of this step" in out
    assert not process_running(int(started.read_text()))
    assert not site.live().exists()
