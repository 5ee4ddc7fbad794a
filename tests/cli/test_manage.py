"""`deployer releases | history | rollback | unlock` over a real sshd on
127.0.0.1, checked on disk."""

import io
import json
import os
import re
from pathlib import Path

import pytest

from deployer.cli import manage
from deployer.plan import pipeline
from tests.conftest import deploy_process, next_second, tree_digest, wait_until

pytestmark = pytest.mark.sshd


def deployer(site, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    command, *rest = argv
    code = manage.main([command, "alpha", "--targets", str(site.targets_file), *rest], stdout=out)
    return code, out.getvalue()


def _deploy_versions(site, n: int) -> list[str]:
    made = []
    for i in range(n):
        next_second()
        (site.source / "manage.py").write_text(f"print({i})\n")
        code, out = site.deploy("--var", f"EXTRA={i}")
        assert code == 0, out
        made.append(Path(os.readlink(site.live())).name)
    return made


def _vhost(site) -> str:
    return (site.root / "apache2" / "sites-available" / "alpha.conf").read_text()


def test_releases_lists_every_release_and_marks_the_live_one(site):
    made = _deploy_versions(site, 2)
    code, out = deployer(site, "releases")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[1].startswith(made[1]) and "LIVE" in lines[1]
    assert lines[2].startswith(made[0]) and "kept" in lines[2]
    code, out = deployer(site, "releases", "--json")
    (host,) = json.loads(out).values()
    assert host["live"] == made[1] and [r["name"] for r in host["releases"]] == made


def test_rollback_goes_back_one_release_with_its_vhost_and_never_migrates(site, tmp_path):
    template = tmp_path / "template"
    template.write_text("<VirtualHost *:<<HTTP_PORT>>>\nServerName <<HOSTNAME>>\n# <<DEPLOY_PATH>>\n"
                        "# v=<<EXTRA>>\n</VirtualHost>\n")
    site.edit(template=str(template), vars={"EXTRA": "0"})
    made = _deploy_versions(site, 3)
    migrations = (site.root / "migrations.log").read_text()
    code, out = deployer(site, "rollback", "--output", "plain")
    assert code == 0, out
    assert os.readlink(site.live()).endswith(made[1])
    assert "# v=1" in _vhost(site)
    assert out.rstrip().endswith(f"release {made[1]} is live on every host (1)")
    # Again: one further back.
    assert deployer(site, "rollback")[0] == 0
    assert os.readlink(site.live()).endswith(made[0]) and "# v=0" in _vhost(site)
    # And forward to a named one.
    code, out = deployer(site, "rollback", "--to", made[2])
    assert code == 0, out
    assert os.readlink(site.live()).endswith(made[2]) and "# v=2" in _vhost(site)
    assert (site.root / "migrations.log").read_text() == migrations
    code, out = deployer(site, "history", "--json")
    rows = json.loads(out)
    assert [(r["action"], r["outcome"], r["release"]) for r in rows] == [
        *(("deploy", "done", m) for m in made), ("rollback", "done", made[1]), ("rollback", "done", made[0]),
        ("rollback", "done", made[2])]
    assert all(r["hostname"] == "alpha.example.test" for r in rows)
    assert not (site.root / "www" / "alpha.deployer" / "lock").exists()


def test_rollback_dry_run_reads_the_hosts_and_changes_nothing(site):
    from tests.conftest import tree_digest
    made = _deploy_versions(site, 2)
    before = tree_digest(site.root, history=True)
    code, out = deployer(site, "rollback", "--dry-run", "--output", "plain")
    assert code == 0, out
    assert f"would roll back alpha (alpha.example.test), to release {made[0]}" in out
    assert f"switch {site.live()} to release {made[0]}" in out
    assert tree_digest(site.root, history=True) == before


@pytest.mark.parametrize(("to", "message"), [
    ("20990101T000000Z-0123456789ab", "is not whole, with the vhost it was deployed with, on 127.0.0.1"),
    ("../../etc", "expected a release name"),
])
def test_rollback_to_a_release_that_is_not_there_changes_nothing(site, to, message):
    from tests.conftest import tree_digest
    _deploy_versions(site, 2)
    before = tree_digest(site.root, history=True)
    code, out = deployer(site, "rollback", "--to", to, "--output", "plain")
    assert code in (1, 2) and message in out, out
    assert tree_digest(site.root, history=True) == before


def test_rollback_with_nothing_older_says_so(site):
    _deploy_versions(site, 1)
    code, out = deployer(site, "rollback", "--output", "plain")
    assert code == 1 and "no release older than the live one" in out, out


def test_rollback_reads_a_long_history_whole_and_refuses_an_answer_cut_short(site, monkeypatch):
    """A thousand deploys of 260-byte history lines (a TeamCity build URL and
    name) once pushed the live release out of what the runner kept of the
    host's answer: rollback said nothing was live."""
    made = _deploy_versions(site, 2)
    history = site.root / "www" / "alpha.deployer" / "history"
    last = history.read_text().splitlines()[-1]
    fields = last.split("\t")
    fields[6] = "https://teamcity.example.test/buildConfiguration/Acme_Deploy/" + "1" * 180
    with history.open("a") as f:
        f.write(("\t".join(fields) + "\n") * 1000)
    code, out = deployer(site, "rollback", "--output", "plain")
    assert code == 0, out
    assert os.readlink(site.live()).endswith(made[0])
    # A host whose answer is over the limit is not acted on in part (the
    # limit made small here: at 16 MiB, it takes some 400,000 releases).
    monkeypatch.setattr(pipeline, "READ_LIMIT", 64 * 1024)
    before = tree_digest(site.root, history=True)
    code, out = deployer(site, "rollback", "--to", made[1], "--output", "plain")
    assert code == 1 and "was over 64 KiB and was cut" in out, out
    assert tree_digest(site.root, history=True) == before


def test_a_failed_rollback_is_undone(site, tmp_path):
    made = _deploy_versions(site, 2)
    # The older release's vhost no longer passes Apache's configtest.
    record = site.root / "www" / "alpha.releases" / made[0] / ".deployer-vhost"
    record.write_text(record.read_text() + "NotADirective x\n")
    before = _vhost(site)
    code, out = deployer(site, "rollback", "--output", "plain")
    assert code == 1, out
    assert "NotADirective" in out
    assert os.readlink(site.live()).endswith(made[1]) and _vhost(site) == before
    assert out.rstrip().endswith(f"release {made[1]} is live")


def _killed_during(site, tmp_path, migrate: str) -> None:
    """A deploy SIGKILLed (TeamCity's last resort) once `started` exists: no teardown runs."""
    started = tmp_path / "started"
    site.edit(migrate=f"touch {started}; {migrate}")
    proc = deploy_process("alpha", "alpha.example.test", site.targets_file)
    try:
        wait_until(started.exists, proc, 60)
        proc.kill()
    finally:
        proc.wait(timeout=30)


def _running(marker: str) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    return True
        except OSError:
            pass
    return False


def test_unlock_undoes_what_a_killed_first_deploy_left_and_the_next_deploy_succeeds(site, tmp_path):
    # The reproduction: SIGKILL during migrate left a release and an
    # enabled vhost, and no DEPLOY_PATH; and the migrate still running.
    late = tmp_path / "migrated-late"
    _killed_during(site, tmp_path, f"sleep 30; touch {late}")
    assert _running(str(late))
    enabled = site.root / "apache2" / "sites-enabled" / "alpha.conf"
    assert enabled.is_symlink() and not site.live().exists()
    site.edit(migrate="true")
    code, out = deployer(site, "unlock", "--output", "plain")
    assert code == 2 and "add --yes" in out, out  # no terminal: nothing is done without --yes
    code, out = deployer(site, "unlock", "--yes", "--output", "plain")
    assert code == 0, out
    assert not _running(str(late)) and "stopped what run" in out
    assert not enabled.exists() and not (site.root / "apache2" / "sites-available" / "alpha.conf").exists()
    assert list((site.root / "www" / "alpha.releases").iterdir()) == []
    assert not (site.root / "www" / "alpha.deployer" / "lock").exists()
    assert [r["action"] for r in json.loads(deployer(site, "history", "--json")[1])] == ["unlock"]
    code, out = site.deploy()
    assert code == 0, out


def test_unlock_after_a_kill_past_the_switch_puts_the_previous_release_back(site, tmp_path):
    made = _deploy_versions(site, 1)
    (site.source / "manage.py").write_text("print('killed')\n")
    site.edit(hooks={"after": {"restart": [f"touch {tmp_path}/started; sleep 3"]}})
    started = tmp_path / "started"
    proc = deploy_process("alpha", "alpha.example.test", site.targets_file)
    try:
        wait_until(started.exists, proc, 60)
        assert not os.readlink(site.live()).endswith(made[0])  # switched and reloaded
        proc.kill()
    finally:
        proc.wait(timeout=30)
    code, out = deployer(site, "unlock", "--yes", "--output", "plain")
    assert code == 0, out
    assert os.readlink(site.live()).endswith(made[0])
    assert sorted(p.name for p in (site.root / "www" / "alpha.releases").iterdir()) == made
    assert "apache: configtest, reload and wait until loaded" in out


def test_unlock_refuses_while_the_holder_still_runs_here(site, tmp_path):
    started = tmp_path / "started"
    site.edit(migrate=f"touch {started}; sleep 5")
    proc = deploy_process("alpha", "alpha.example.test", site.targets_file)
    try:
        wait_until(started.exists, proc, 60)
        code, out = deployer(site, "unlock", "--yes", "--output", "plain")
        assert code == 1 and f"still running on this machine (pid {proc.pid})" in out, out
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0


def test_unlock_with_no_lock_does_nothing(site):
    _deploy_versions(site, 1)
    code, out = deployer(site, "unlock", "--yes", "--output", "plain")
    assert code == 0 and "not locked on any host" in out, out


# -- what outlives a release ----------------------------------------------------

def test_shared_paths_outlive_releases_deploys_and_a_rollback(site):
    shared = site.root / "www" / "alpha.shared"
    site.edit(shared={"dirs": ["media", "var/db"], "files": ["local_settings.py"]})
    (site.source / "media").mkdir()
    (site.source / "media" / "from-the-package.txt").write_text("never shipped\n")
    code, out = site.deploy()
    assert code == 1 and f"missing shared file(s): {shared}/local_settings.py" in out, out
    assert not site.live().exists() and not (site.root / "apache2" / "sites-available" / "alpha.conf").exists()
    shared.mkdir(parents=True)
    (shared / "local_settings.py").write_text("SECRET = 'kept on the host'\n")
    made = _deploy_versions(site, 1)
    live = site.live()
    assert os.readlink(live / "media") == f"{shared}/media" and (shared / "var" / "db").is_dir()
    assert (live / "local_settings.py").read_text() == "SECRET = 'kept on the host'\n"
    assert not (shared / "media" / "from-the-package.txt").exists()
    (live / "media" / "upload.png").write_bytes(b"written by the app")
    made += _deploy_versions(site, 2)
    assert deployer(site, "rollback")[0] == 0
    assert os.readlink(live).endswith(made[1])
    assert (live / "media" / "upload.png").read_bytes() == b"written by the app"
    assert (live / "local_settings.py").read_text() == "SECRET = 'kept on the host'\n"


def test_a_shared_path_under_a_packaged_link_is_refused(site):
    # Packaging keeps only links that stay inside the source; one on the way
    # to a shared path would still point the link's removal elsewhere.
    (site.source / "elsewhere" / "uploads").mkdir(parents=True)
    (site.source / "elsewhere" / "uploads" / "precious").write_text("keep\n")
    (site.source / "var").symlink_to("elsewhere")
    site.edit(shared={"dirs": ["var/uploads"]})
    code, out = site.deploy()
    assert code == 1 and "var in the release is not a directory; cannot link var/uploads there" in out, out
    assert not site.live().exists()


def test_a_deploy_undoes_what_a_run_killed_on_this_machine_left_then_deploys(site, tmp_path):
    _killed_during(site, tmp_path, "sleep 2")
    site.edit(migrate="true")
    code, out = site.deploy()
    assert code == 0, out
    assert "which ran on this machine and is gone (killed): taking it over" in out
    assert site.live().is_symlink()
    history = json.loads(deployer(site, "history", "--json")[1])
    assert [(r["action"], r["outcome"]) for r in history] == [("unlock", "done"), ("deploy", "done")]


def test_after_rolling_back_from_a_bad_release_the_next_rollback_skips_it(site):
    # R1 good, R2 bad: rolled back to R1, then R3 deployed. Going back from R3
    # means R1, which was live before it, not R2; and pruning keeps R1.
    site.edit(keep_releases=2)
    r1, r2 = _deploy_versions(site, 2)
    assert deployer(site, "rollback")[0] == 0
    (site.source / "manage.py").write_text("print(3)\n")
    assert site.deploy()[0] == 0
    r3 = Path(os.readlink(site.live())).name
    kept = sorted(p.name for p in (site.root / "www" / "alpha.releases").iterdir())
    assert r1 in kept and r3 in kept
    code, out = deployer(site, "rollback", "--output", "plain")
    assert code == 0, out
    assert os.readlink(site.live()).endswith(r1)
    assert r2  # (pruned or not, never chosen)


def test_a_lock_left_without_an_owner_can_be_unlocked(site):
    _deploy_versions(site, 1)
    lock = site.root / "www" / "alpha.deployer" / "lock"
    lock.mkdir()  # a run died between taking it and naming itself
    code, out = site.deploy()
    assert code == 1 and "locked by a run that is taking or releasing the lock" in out, out
    code, out = deployer(site, "unlock", "--yes", "--output", "plain")
    assert code == 0, out
    assert not lock.exists()
    assert site.deploy()[0] == 0


# -- what a host says is held to deployer's shapes (a hostile host) -----------

@pytest.mark.parametrize("run", ["\\|.*", "x|.*", "../../etc", "feedfacefeedface0"])
def test_unlock_refuses_a_lock_whose_run_id_is_not_one_deployer_makes(site, run):
    # The run id went to every host as the relay key's tag, where a pattern
    # match on it emptied authorized_keys.
    made = _deploy_versions(site, 1)
    lock = site.root / "www" / "alpha.deployer" / "lock"
    lock.mkdir()
    (lock / "owner").write_text(f"{run}\ndeploy of release X by a@b (run {run})\n")
    before = tree_digest(site.root, history=True)
    code, out = deployer(site, "unlock", "--yes", "--output", "plain")
    assert code == 1 and "its lock names run" in out and "which is not a run id deployer makes" in out, out
    assert tree_digest(site.root, history=True) == before
    assert os.readlink(site.live()).endswith(made[0])


def test_rollback_refuses_a_live_link_that_is_not_a_release(site):
    _deploy_versions(site, 2)
    elsewhere = site.root / "www" / "alpha.releases" / "..ELSE"
    elsewhere.mkdir()
    os.unlink(site.live())
    os.symlink(elsewhere, site.live())
    code, out = deployer(site, "rollback", "--output", "plain")
    assert code == 1 and "which is not a release" in out, out
    assert os.readlink(site.live()) == str(elsewhere)


def test_a_lock_whose_owner_line_a_host_changed_cannot_make_a_deploy_kill_the_live_run(site, tmp_path):
    # Whether the holder is gone is this machine's own record, not the host's
    # word: a pid there that names no process must not make the next deploy
    # take over and stop a live run's commands on every host.
    started = tmp_path / "started"
    site.edit(migrate=f"touch {started}; sleep 4")
    proc = deploy_process("alpha", "alpha.example.test", site.targets_file)
    try:
        wait_until(started.exists, proc, 60)
        owner = site.root / "www" / "alpha.deployer" / "lock" / "owner"
        run_id, who = owner.read_text().splitlines()[:2]
        forged = re.sub(r"\(pid [0-9]+, process ([0-9a-f]+)-([0-9]+)-[0-9]+\)", r"(pid 4, process \1-\2-1)", who)
        assert forged != who
        owner.write_text(f"{run_id}\n{forged}\n")
        code, out = site.deploy()
        assert code == 1 and "locked by" in out and "taking it over" not in out, out
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out


def test_unlock_refuses_a_live_run_whatever_the_hosts_line_for_people_says(site, tmp_path):
    # The run undone is the one the lock's first line names: its liveness is
    # asked of this machine by that id, not by the text a host wrote beside it.
    started = tmp_path / "started"
    site.edit(migrate=f"touch {started}; sleep 4")
    proc = deploy_process("alpha", "alpha.example.test", site.targets_file)
    try:
        wait_until(started.exists, proc, 60)
        owner = site.root / "www" / "alpha.deployer" / "lock" / "owner"
        run_id = owner.read_text().splitlines()[0]
        owner.write_text(f"{run_id}\ndeploy of release R by someone (run 9999888877776666)\n")
        code, out = deployer(site, "unlock", "--yes", "--output", "plain")
        assert code == 1 and f"run {run_id}" in out and "still running on this machine" in out, out
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
