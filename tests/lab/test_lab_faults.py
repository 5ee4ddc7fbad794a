"""Faults in the lab, during real deploys through the VPN: a dying sshd or
VPN server, a full disk, a failed reload, SIGTERM in every stage, and runs
at once (a failed health check: test_lab_fleet.py, at 8 hosts). Each case
checks that every host serves one release (the old or the new, never a
mix), that no lock is left, that the VPN is down, and that a plain re-run
of the deploy succeeds."""

# Fixtures are imported, so test parameters "redefine" them.
# ruff: noqa: F811

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import default_template_with
from tests.lab import lab as tests_lab
from tests.lab.fixtures import DEPLOY, assert_vpn_down, error_of, lab, lab_session, release_of, site  # noqa: F401

pytestmark = pytest.mark.lab


def served(site, name: str) -> set[str | None]:
    out = set()
    for h in site.lab.hosts:
        live = h.path(f"/var/www/{name}")
        out.add(os.readlink(live) if live.is_symlink() else None)
    return out


def assert_whole(site, name: str, allowed: set[str | None], lock: bool = False) -> None:
    """One release on every host, one of `allowed`; no lock (unless `lock`: the
    hosts were unreachable when the run ended); the VPN down."""
    now = served(site, name)
    assert len(now) == 1 and now <= allowed, now
    if not lock:
        assert not any(h.path(f"/var/www/{name}.deployer/lock").exists() for h in site.lab.hosts)
    assert_vpn_down(site.lab)


def release_path(name: str, events: list[dict]) -> str:
    return f"/var/www/{name}.releases/{release_of(events)}"


def first_deploy(site, name: str) -> str:
    code, events = site.deploy(name)
    assert code == 0, error_of(events)
    return release_path(name, events)


def rerun_succeeds(site, name: str) -> None:
    code, events = site.deploy(name)
    assert code == 0, error_of(events)
    assert_whole(site, name, {release_path(name, events)})


def sshd_connections(lab, i: int) -> list[int]:
    """The processes host i's sshd runs a connection in (its other children,
    Apache among them, are not ours to kill)."""
    out = []
    for pid in tests_lab._children(lab.host_pids[i]):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"sshd"):
                    out.append(pid)
        except OSError:
            pass
    assert out, "no SSH connection to cut"
    return out


def test_sshd_connection_killed_during_the_upload_is_undone_over_a_new_one(site):
    name = "fault-sshd"
    old = first_deploy(site, name)
    (site.app / "static" / "more.bin").write_bytes(os.urandom(3_000_000))
    releases = site.lab.hosts[0].path(f"/var/www/{name}.releases")
    site.lab.shape("8mbit")  # the upload takes seconds: time to cut it
    try:
        code, events, err = site.deploy_and(
            name, lambda: any(releases.glob(".*.deployer-*")),
            lambda _: [os.kill(pid, signal.SIGKILL) for pid in sshd_connections(site.lab, 0)], timeout=180)
    finally:
        site.lab.shape(None)
    assert code == 1, error_of(events) + err
    assert_whole(site, name, {old})
    assert not list(releases.glob(".*.deployer-*"))
    rerun_succeeds(site, name)


def test_the_vpn_server_dying_mid_deploy_needs_a_person_then_a_rerun_cleans_up(site):
    name = "fault-vpn"
    old = first_deploy(site, name)
    marker = site.lab.shared_dir / f"{name}-cut"
    marker.unlink(missing_ok=True)
    site.write(step_timeout=8, connect_timeout=5, hooks={"before": {"migrate": [
        {"run": f"touch {tests_lab.SHARED_DIR_ON_HOSTS}/{name}-cut; sleep 30", "on": "first"}]}})
    (site.app / "RELEASE.txt").write_text("never live\n")
    try:
        code, events, err = site.deploy_and(name, marker.exists, lambda _: site.lab.stop_vpn_server(), timeout=180)
    finally:
        site.lab.start_vpn_server()
    # No host could be reached to undo: said so, with every host named.
    assert code == 3, error_of(events) + err
    assert all(a in error_of(events).split("need a person")[1] for a in site.lab.addresses)
    assert_whole(site, name, {old}, lock=True)
    site.write()
    rerun_succeeds(site, name)


def test_a_full_disk_on_one_host_during_unpack_is_undone(site):
    name = "fault-disk"
    full = f"/var/www/{name}.releases"
    site.lab.run(1, f"mkdir -p {full} && mount -t tmpfs -o size=256k tmpfs {full}")
    try:
        code, events = site.deploy(name)
        assert code == 1
        assert "full disk" in error_of(events) or "No space left" in error_of(events)
        assert_whole(site, name, {None})
    finally:
        site.lab.run(1, f"umount {full}", check=False)
    rerun_succeeds(site, name)


def start(site, name: str) -> subprocess.Popen:
    """A deploy in a process of its own: JSON events on its stdout (stderr goes to pytest)."""
    return subprocess.Popen([*DEPLOY, name, f"{name}.example.test", "--targets", str(site.targets),
                             "--output", "json"], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def finish(proc: subprocess.Popen) -> tuple[int, list[dict]]:
    out, _ = proc.communicate(timeout=180)
    return proc.returncode, [json.loads(line) for line in out.splitlines()]


def deploy_until(site, name: str, stage: str) -> tuple[int, list[dict]]:
    """A deploy, sent SIGTERM as soon as it says `stage` has started."""
    proc = start(site, name)
    events = []
    try:
        for line in proc.stdout:
            event = json.loads(line)
            events.append(event)
            if event["event"] == "stage_started" and event["stage"] == stage:
                proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, events


@pytest.mark.parametrize("stage", ["vpn", "upload", "render", "migrate", "restart"])
def test_sigterm_in_each_stage_undoes_every_host(site, stage):
    name = f"fault-term-{stage}"
    old = first_deploy(site, name)
    (site.app / "RELEASE.txt").write_text(f"stopped in {stage}\n")
    code, events = deploy_until(site, name, stage)
    assert code == 130, error_of(events)
    assert_whole(site, name, {old})
    rerun_succeeds(site, name)


def test_two_deploys_of_one_instance_at_once_one_goes_live(site):
    name = "fault-twice"
    results = [finish(p) for p in [start(site, name), start(site, name)]]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], [error_of(events) for _, events in results]
    (_, won), (_, lost) = sorted(results, key=lambda r: r[0])
    assert "locked by" in error_of(lost)
    assert_whole(site, name, {release_path(name, won)})
    rerun_succeeds(site, name)


def test_two_instances_at_once_share_one_tunnel(site):
    names = ["fault-one", "fault-two"]
    results = [finish(p) for p in [start(site, n) for n in names]]
    for (code, events), n in zip(results, names, strict=True):
        assert code == 0, error_of(events)
        assert_whole(site, n, {release_path(n, events)})


def test_a_failed_migration_leaves_the_old_release_live(site):
    name = "fault-migrate"
    old = first_deploy(site, name)
    site.write(migrate="python manage.py migrate --noinput && echo 'the migration fails' >&2 && exit 1")
    (site.app / "RELEASE.txt").write_text("its migration fails\n")
    code, events = site.deploy(name)
    assert code == 1 and "the migration fails" in error_of(events), error_of(events)
    assert_whole(site, name, {old})
    site.write()
    rerun_succeeds(site, name)


def test_a_failed_graceful_on_one_host_after_the_switch_puts_every_host_back(site):
    name = "fault-graceful"
    ctl = ('#!/bin/sh\nif [ "$1" = graceful ] && [ -e /etc/apache2/fail-graceful ]; then\n'
           '    rm -f /etc/apache2/fail-graceful; echo "graceful: failed on purpose" >&2; exit 1\nfi\n'
           'exec apache2ctl "$@"\n')
    for i in range(len(site.lab.hosts)):
        site.lab.run(i, "cat > /etc/apache2/lab-ctl && chmod 755 /etc/apache2/lab-ctl", input=ctl)
    site.write(apache={"ctl": "/etc/apache2/lab-ctl"})
    old = first_deploy(site, name)
    site.lab.run(1, "touch /etc/apache2/fail-graceful")
    (site.app / "RELEASE.txt").write_text("reload fails\n")
    # A vhost that changes: Apache reloads (code alone restarts the daemons).
    changed = default_template_with(site.tmp / "changed_template", "# changed\n")
    site.write(apache={"ctl": "/etc/apache2/lab-ctl"}, template=str(changed))
    code, events = site.deploy(name)
    assert code == 1 and "failed on purpose" in error_of(events), error_of(events)
    assert_whole(site, name, {old})
    for i in range(len(site.lab.hosts)):
        assert site.health(i, name)["release_dir"] == os.path.basename(old)
    rerun_succeeds(site, name)


def test_unlock_after_a_kill_between_the_hosts_finishing_keeps_the_new_release_on_every_host(site):
    # Killed after web2 recorded the run as done, before web1 (the first
    # host, last to finish) did: the run was past its commit point, so
    # unlock must keep it on both hosts, never undo web1 alone.
    name = "fault-split"
    first_deploy(site, name)
    marker = site.tmp / "restarted"
    site.write(hooks={"after": {"restart": [{"run": f"touch {marker}; sleep 3", "on": "local"}]}})
    (site.app / "RELEASE.txt").write_text("kept\n")
    web1, web2 = site.lab.hosts[0], site.lab.hosts[1]
    history = web2.path(f"/var/www/{name}.deployer/history")
    done_before = history.read_text().count("\tdone\t")
    proc = start(site, name)
    stopped: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        stopped = sshd_connections(site.lab, 0)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        while history.read_text().count("\tdone\t") == done_before:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.kill()
        proc.wait(30)
        # web1's sshd dies with the runner: the run's end it may have sent
        # (in its held session, run/held.py) never reached web1's shell,
        # which runs none of what came cut short. Resumed instead, it could
        # read those commands and finish the run there after all.
        for pid in stopped:
            os.kill(pid, signal.SIGKILL)
        stopped = []
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    new = os.readlink(web2.path(f"/var/www/{name}"))
    assert web1.path(f"/var/www/{name}.deployer/lock").exists()
    assert os.readlink(web1.path(f"/var/www/{name}")) == new
    site.write()
    out = subprocess.run([DEPLOY[0], "-m", "deployer.cli.manage", "unlock", name, "--yes", "--targets",
                          str(site.targets), "--output", "plain"],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "its changes are kept on every host" in out.stdout, out.stdout
    assert_whole(site, name, {new})
    assert not list(web1.path("/var/www").glob(f"{name}.deployer-*"))
