"""`deployer check` over a real sshd on 127.0.0.1 (and, marked lab, through
the lab's VPN): each check's ✓ and ✗, the exit code, and that nothing on
the host changes."""

# Fixtures are imported, so test parameters "redefine" them.
# ruff: noqa: F811

import argparse
import io
import json
import os
import secrets
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from deployer import context
from deployer.cli import check
from tests.conftest import LOCAL_APACHE_CTL, armed_local_target, killed_run, tree_digest
from tests.lab.fixtures import lab_session  # noqa: F401

pytestmark = pytest.mark.sshd


def run_check(targets: Path, *argv: str, config: str = "alpha") -> tuple[int, str]:
    """`deployer check` as commands.main will call it."""
    p = argparse.ArgumentParser()
    check.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["check", config, *argv, "--targets", str(targets)])
    out = io.StringIO()
    return check.main(args, out), out.getvalue()


def report(targets: Path, *argv: str, config: str = "alpha") -> tuple[int, dict]:
    code, out = run_check(targets, "--json", *argv, config=config)
    return code, json.loads(out)


def statuses(found: dict) -> dict[str, dict[str, str]]:
    return {h: {k: c["status"] for k, c in host.items()} for h, host in found["hosts"].items()}


def only_host(found: dict) -> dict:
    (host,) = found["hosts"].values()
    return host


# A target without python: or shared files: the host's rows, and Django's check.
ROWS = (*check.HOST_CHECKS, "django")
EVERY = dict.fromkeys(ROWS, "ok")


def test_every_check_passes_on_a_ready_host(site):
    code, out = run_check(site.targets_file)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("checking alpha on 1 host")
    assert lines[1].startswith("✓ targets.yaml") and lines[2].startswith("✓ template")
    header = lines.index(next(line for line in lines if line.startswith("host ")))
    assert lines[header].split() == ["host", *ROWS]
    assert lines[header + 1].split() == [f"127.0.0.1:{site_port(site)}", *"✓" * len(ROWS)]
    assert lines[-1].startswith("OK: every check passed")
    assert "\x1b" not in out  # no colour codes in a log
    code, found = report(site.targets_file)
    assert code == 0 and found["ok"] and statuses(found) == {f"127.0.0.1:{site_port(site)}": EVERY}
    assert set(found["runner"]) == {"targets.yaml", "template"}  # no VPN in this target
    # Nothing is there yet: a deploy makes it under the host dir.
    assert only_host(found)["deploy_root"]["detail"] == f"{site.root / 'www'} can be made in {site.root}"


def site_port(site) -> int:
    return yaml.safe_load(site.targets_file.read_text())["targets"]["alpha"]["hosts"][0]["port"]


@pytest.mark.parametrize("key", ["unknown", "changed"])
def test_a_host_key_not_known_fails_ssh_and_runs_nothing_else(site, tmp_path, key):
    known = tmp_path / "known_hosts"
    if key == "unknown":
        known.write_text("")
    else:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
        key_type, key_b64 = (tmp_path / "other.pub").read_text().split()[:2]
        known.write_text(f"[127.0.0.1]:{site_port(site)} {key_type} {key_b64}\n")
    site.edit(known_hosts=str(known))
    code, found = report(site.targets_file)
    assert code == 1 and not found["ok"]
    host = only_host(found)
    assert host["ssh"]["status"] == "failed"
    assert ("is not in" if key == "unknown" else "host key CHANGED") in host["ssh"]["detail"]
    assert {host[k]["status"] for k in ROWS[1:]} == {"not run"}
    code, out = run_check(site.targets_file)
    assert code == 1
    assert f"✗ 127.0.0.1:{site_port(site)} ssh: " in out
    assert out.splitlines()[-1].startswith("FAILED: 1 check failed and 8 did not run; hosts not ready: 1 of 1")


def test_a_host_that_does_not_answer_leaves_the_others_checked(site):
    port = site_port(site)
    # sshd listens on 127.0.0.1 only: 127.0.0.2 refuses at once.
    site.edit(hosts=[{"address": "127.0.0.1", "port": port, "user": "root"},
                     {"address": "127.0.0.2", "port": port, "user": "root"}])
    code, found = report(site.targets_file)
    assert code == 1
    assert statuses(found) == {f"127.0.0.1:{port}": EVERY,
                               f"127.0.0.2:{port}": {"ssh": "failed",
                                                     **dict.fromkeys(ROWS[1:], "not run")}}
    assert "cannot connect" in found["hosts"][f"127.0.0.2:{port}"]["ssh"]["detail"]


@pytest.mark.parametrize("where", ["under a file", "a file"])
def test_a_deploy_root_that_cannot_be_made_fails(site, where):
    (site.root / "plain").write_text("not a directory\n")
    root = site.root / "plain" / "www" if where == "under a file" else site.root / "plain"
    site.edit(deploy_root=str(root), apache={**apache_of(site), "dir": str(site.root / "plain" / "apache2")})
    code, found = report(site.targets_file)
    assert code == 1
    host = only_host(found)
    assert host["deploy_root"]["status"] == "failed"
    expected = (f"{root} cannot be made: {site.root / 'plain'} is not a directory" if where == "under a file"
                else f"{root} exists and is not a directory")
    assert host["deploy_root"]["detail"] == expected
    assert host["sites-available"]["status"] == host["sites-enabled"]["status"] == "failed"
    assert host["tools"]["status"] == host["lock"]["status"] == "ok"


def apache_of(site) -> dict:
    return yaml.safe_load(site.targets_file.read_text())["targets"]["alpha"]["apache"]


def test_a_deploy_root_on_a_read_only_mount_fails_even_for_root(site):
    ro = site.root / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        site.edit(deploy_root=str(ro / "www"))
        code, found = report(site.targets_file)
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert code == 1
    assert only_host(found)["deploy_root"]["status"] == "failed"
    assert only_host(found)["deploy_root"]["detail"].startswith(f"{ro} is not writable by root")


def test_a_vhost_that_breaks_configtest_fails_with_apaches_message(site):
    enabled = site.root / "apache2" / "sites-enabled"
    enabled.mkdir(parents=True)
    (enabled / "broken.conf").write_text("<VirtualHost *:80>\nNoSuchDirective on\n</VirtualHost>\n")
    code, found = report(site.targets_file)
    assert code == 1
    configtest = only_host(found)["configtest"]
    assert configtest["status"] == "failed" and "NoSuchDirective" in configtest["detail"]
    code, out = run_check(site.targets_file)
    assert f"✗ 127.0.0.1:{site_port(site)} configtest: exit code 1:" in out
    # Apache's own words, indented under it.
    assert any(line.startswith("    ") and "NoSuchDirective" in line for line in out.splitlines())


def test_a_configtest_past_the_time_limit_is_stopped_and_the_rest_still_reported(site, tmp_path):
    ctl = tmp_path / "slow-apache2ctl"
    ctl.write_text(f'#!/bin/sh\n[ "$2" != configtest ] || sleep 30\nexec /bin/sh {LOCAL_APACHE_CTL} "$@"\n')
    ctl.chmod(0o755)
    site.edit(step_timeout=2, apache={**apache_of(site), "ctl": f"{ctl} {site.root / 'apache2'}"})
    code, found = report(site.targets_file)
    assert code == 1
    host = only_host(found)
    assert host["configtest"]["status"] == "not run"
    assert "stopped after 2 s" in host["configtest"]["detail"]
    assert {k: c["status"] for k, c in host.items() if k != "configtest"} == dict.fromkeys(
        check.HOST_CHECKS[:-1], "ok") | {"django": "not run"}


def test_a_held_lock_fails_naming_its_holder(site):
    lock = site.root / "www" / "alpha.deployer" / "lock"
    lock.mkdir(parents=True)
    (lock / "owner").write_text("0123abcd\ndeploy of release 20260101T000000Z-abc by ci@agent-7 (pid 4242,"
                                " process 1a2b3c4d-4026531836-99), TeamCity build alpha #17 (run 0123abcd)\n")
    code, found = report(site.targets_file)
    assert code == 1
    held = only_host(found)["lock"]
    assert held["status"] == "failed"
    assert "held by deploy of release 20260101T000000Z-abc by ci@agent-7" in held["detail"]
    assert "TeamCity build alpha #17" in held["detail"] and "deployer unlock alpha" in held["detail"]


def test_the_lock_of_a_killed_run_of_this_machine_passes_with_a_note(site):
    # As a run that was killed would have left it: this machine, a pid that is gone.
    gone = subprocess.Popen(["true"])
    gone.wait()
    boot, namespace, _ = context.process_id(os.getpid()).split("-")
    lock = site.root / "www" / "alpha.deployer" / "lock"
    lock.mkdir(parents=True)
    run = secrets.token_hex(8)  # a run this machine has no record of, until killed_run makes one
    (lock / "owner").write_text(f"{run}\ndeploy of release 20260101T000000Z-abc by ci@{socket.gethostname()}"
                                f" (pid {gone.pid}, process {boot}-{namespace}-1) (run {run})\n")
    # Gone as this machine's own record says, not as the host's pid says.
    code, found = report(site.targets_file)
    assert code == 1 and "a deploy would fail" in only_host(found)["lock"]["detail"], found
    killed_run(run)
    code, found = report(site.targets_file)
    assert code == 0, found
    assert "a deploy takes the lock over" in only_host(found)["lock"]["detail"]
    assert any("lock: held by" in note for note in found["notes"])


def test_a_token_without_a_value_fails_the_template_and_the_hosts_are_still_checked(site, tmp_path):
    template = tmp_path / "vhost.tmpl"
    template.write_text("<VirtualHost *:80>\nServerName <<HOSTNAME>>\n# <<MISSING>>\n</VirtualHost>\n")
    site.edit(template=str(template))
    code, found = report(site.targets_file)
    assert code == 1
    assert found["runner"]["template"]["status"] == "failed"
    assert found["runner"]["template"]["detail"].startswith(f"{template}:3: token <<MISSING>> has no value")
    assert list(statuses(found).values()) == [EVERY] * len(found["hosts"])
    # As deploy takes it: a value given on the command line.
    code, found = report(site.targets_file, "--var", "MISSING=x")
    assert code == 0, found


def test_a_secret_never_shows(site, monkeypatch):
    # Apache quotes an unknown directive: here, the secret's value.
    enabled = site.root / "apache2" / "sites-enabled"
    enabled.mkdir(parents=True)
    (enabled / "leaky.conf").write_text("hunter2-very-secret on\n")
    site.edit(vars={"DB_PASSWORD": {"env": "CHECK_SECRET", "secret": True}})
    monkeypatch.setenv("CHECK_SECRET", "hunter2-very-secret")
    for argv in ((), ("--json",)):
        code, out = run_check(site.targets_file, *argv)
        assert code == 1 and "hunter2" not in out and "Invalid command '********'" in out


def test_a_check_changes_nothing_on_the_host(site):
    code, out = site.deploy()
    assert code == 0, out
    # The test's apache2ctl writes its config into the host dir on every call
    # (the same bytes each time): after a deploy, a configtest adds nothing.
    before = tree_digest(site.root, history=True)
    assert run_check(site.targets_file)[0] == 0
    assert tree_digest(site.root, history=True) == before
    lock = site.root / "www" / "alpha.deployer" / "lock"
    lock.mkdir()
    (lock / "owner").write_text("0123abcd\ndeploy by someone@elsewhere (run 0123abcd)\n")
    before = tree_digest(site.root, history=True)
    assert run_check(site.targets_file)[0] == 1  # the lock
    assert tree_digest(site.root, history=True) == before


def test_the_local_target_is_checked_on_this_machine_and_nothing_is_made(tmp_path):
    targets = armed_local_target(tmp_path)
    code, found = report(targets, config="demo")
    assert code == 0, found
    assert found["hostname"] == "demo.check.invalid"
    assert found["hosts"]["local"]["ssh"]["detail"] == "this machine (transport: local)"
    assert not (tmp_path / "www").exists() and not (tmp_path / "apache2").exists()
    assert not any((tmp_path / f).exists() for f in ("HOOKED", "MIGRATED", "RESTARTED"))


@pytest.mark.parametrize("argv, problem", [
    (["beta"], "no target named 'beta'"),
    (["alpha", "not a host"], "invalid hostname"),
    (["Alpha"], "invalid config name"),
    (["alpha", "--var", "NOEQUALS"], "expected KEY=VALUE"),
])
def test_a_wrong_argument_or_target_exits_2(site, capsys, argv, problem):
    p = argparse.ArgumentParser()
    check.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["check", *argv, "--targets", str(site.targets_file)])
    out = io.StringIO()
    assert check.main(args, out) == 2
    assert out.getvalue() == "" and problem in capsys.readouterr().err


def test_a_broken_targets_file_exits_2(tmp_path, capsys):
    targets = tmp_path / "targets.yaml"
    targets.write_text("targets:\n  alpha:\n    hosts: [{address: a, port: x}]\n")
    assert run_check(targets)[0] == 2
    assert "targets/alpha/hosts/0/port" in capsys.readouterr().err


# -- the lab: through the VPN, on 2 hosts ---------------------------------------

@pytest.fixture
def lab2(lab_session):
    return lab_session.get(2)


@pytest.mark.lab
def test_check_through_the_vpn_on_every_lab_host_and_close_it(lab2, tmp_path):
    from tests.lab.test_lab_deploy import assert_vpn_down

    targets = tmp_path / "targets.yaml"
    targets.write_text(yaml.safe_dump(lab2.targets()))
    dirs = ("/var/www", "/etc/apache2", "/root/.ssh")
    before = [{d: tree_digest(h.path(d), history=True) for d in dirs} for h in lab2.hosts]
    code, found = report(targets)
    assert code == 0, json.dumps(found, indent=2)
    assert found["runner"]["vpn"]["status"] == "ok"
    assert len(found["hosts"]) == len(lab2.hosts) >= 2
    assert list(statuses(found).values()) == [EVERY] * len(found["hosts"])
    assert_vpn_down(lab2)
    assert [{d: tree_digest(h.path(d), history=True) for d in dirs} for h in lab2.hosts] == before


@pytest.mark.lab
def test_a_vpn_that_does_not_come_up_leaves_every_host_not_run(lab2, tmp_path):
    from tests.lab.test_lab_deploy import assert_vpn_down

    targets = tmp_path / "targets.yaml"
    doc = lab2.targets()
    doc["defaults"]["vpn"]["timeout"] = 6
    targets.write_text(yaml.safe_dump(doc))
    with lab2.vpn_server_stopped():
        code, found = report(targets)
    assert code == 1
    assert found["runner"]["vpn"]["status"] == "failed"
    assert "VPN not up after 6s" in found["runner"]["vpn"]["detail"]
    assert {s for host in statuses(found).values() for s in host.values()} == {"not run"}
    assert_vpn_down(lab2)


def test_the_shared_files_and_writable_folders_and_the_hosts_python_are_checked(site, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("")
    site.edit(shared={"files": ["local_settings.py"], "writable": ["media"], "group": "www-data"},
              python={"requirements": str(requirements), "version": "3.11.99"})
    code, found = report(site.targets_file)
    assert code == 1
    host = only_host(found)
    assert list(host) == [*check.HOST_CHECKS, "python", "shared", "django"]
    assert host["python"]["status"] == "failed"
    assert "is Python 3.11.2, not 3.11.99 (python/version)" in host["python"]["detail"]
    shared = site.root / "www" / "alpha.shared"
    assert host["shared"] == {"status": "failed", "detail": f"missing in {shared} (deployer never writes them):"
                                                            " local_settings.py"}
    # Placed by hand: then only the folder is left for the next deploy to make writable.
    shared.mkdir(parents=True)
    (shared / "local_settings.py").write_text("")
    site.edit(python={"requirements": str(requirements), "version": "3.11.2"})
    code, out = run_check(site.targets_file)
    assert code == 0, out
    assert f"note: 127.0.0.1:{site_port(site)}: shared: the next deploy makes these writable for group www-data:" \
           " media" in out
    assert not (shared / "media").exists()
