"""End to end: the real `deploy` CLI, through the OpenVPN tunnel its vpn stage
opens, onto the lab's web hosts (sshd + Apache + mod_wsgi in namespaces)."""

# Fixtures are imported, so test parameters "redefine" them.
# ruff: noqa: F811

import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from deployer.run import relay
from tests import s3server
from tests.conftest import REPO, tree_digest
from tests.lab import lab as tests_lab
from tests.lab.fixtures import (  # noqa: F401
    DEPLOY,
    Site,
    assert_vpn_down,
    error_of,
    lab,
    lab_session,
    release_of,
    site,
)

pytestmark = pytest.mark.lab

def applied_migrations(lab, name: str) -> list[tuple[str, int]]:
    db = sqlite3.connect(lab.shared_dir / f"{name}.shared" / "data" / f"{name}.sqlite3")
    try:
        return db.execute("SELECT name, COUNT(*) FROM django_migrations WHERE app = 'hello'"
                          " GROUP BY name ORDER BY name").fetchall()
    finally:
        db.close()


def check_deployed(site: Site, name: str, events: list[dict]) -> None:
    release = release_of(events)
    for i, h in enumerate(site.lab.hosts):
        conf = h.path(f"/etc/apache2/sites-available/{name}.conf")
        assert f"ServerName {name}.example.test" in conf.read_text()
        assert os.readlink(h.path(f"/etc/apache2/sites-enabled/{name}.conf")) == \
            f"../sites-available/{name}.stub"
        assert os.readlink(h.path(f"/var/www/{name}")) == f"/var/www/{name}.releases/{release}"
        info = site.health(i, name)
        assert info["instance"] == name and info["release_dir"] == release
    migrate = [e for e in events if e["event"] == "step_finished" and e["stage"] == "migrate"]
    assert [e["host"] for e in migrate] == [site.lab.addresses[0]]  # once, not once per host
    assert applied_migrations(site.lab, name) == [("0001_initial", 1), ("0002_seed_greetings", 1)]


def test_deploy_alpha_through_the_vpn(site):
    code, events = site.deploy("alpha")
    assert code == 0, error_of(events)
    check_deployed(site, "alpha", events)
    assert_vpn_down(site.lab)


def test_second_deploy_serves_the_changed_app_on_every_host(site):
    assert site.deploy("alpha")[0] == 0
    (site.app / "RELEASE.txt").write_text("second\n")
    since = site.lab.ssh_log_offsets()
    code, events = site.deploy("alpha")
    assert code == 0, error_of(events)
    for i in range(len(site.lab.hosts)):
        info = site.health(i, "alpha")
        assert info["release"] == "second" and info["release_dir"] == release_of(events)
    # Sessions: the lock to the configtest; migrate on the first host; the
    # switch and reload, whose session the run's end takes (run/held.py).
    assert site.lab.ssh_sessions(since) == [3] + [2] * (len(site.lab.hosts) - 1)


def test_an_upload_outlives_two_deploys_and_a_rollback_on_every_host(site):
    name, host = "alpha", "alpha.example.test"
    assert site.deploy(name)[0] == 0
    photo = os.urandom(3000)
    with site.lab.vpn_client(log=site.tmp / "upload.log"):
        conn = http.client.HTTPConnection(site.lab.addresses[0], 80, timeout=10)
        conn.request("POST", "/upload/photo.bin", body=photo, headers={"Host": host})
        answer = conn.getresponse()
        assert answer.status == 201, answer.read()
        conn.close()
    for version in ("second", "third"):
        (site.app / "RELEASE.txt").write_text(f"{version}\n")
        code, events = site.deploy(name)
        assert code == 0, error_of(events)
    rollback = subprocess.run([sys.executable, "-m", "deployer.cli.manage", "rollback", name, "--targets",
                               str(site.targets), "--output", "plain"], capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    assert "health check" in rollback.stdout
    with site.lab.vpn_client(log=site.tmp / "check.log"):
        for i in range(len(site.lab.hosts)):
            status, _, body = site.lab.http_get(i, "/health", host=host)
            assert json.loads(body)["release"] == "second"
            assert http_bytes(site.lab, i, "/media/photo.bin", host) == photo


def http_bytes(lab, i: int, path: str, host: str) -> bytes:
    conn = http.client.HTTPConnection(lab.addresses[i], 80, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        assert r.status == 200, r.status
        return r.read()
    finally:
        conn.close()


def test_demo_instance_beside_alpha(site):
    assert site.deploy("alpha")[0] == 0
    code, events = site.deploy("demo-x")
    assert code == 0, error_of(events)
    check_deployed(site, "demo-x", events)
    for i in range(len(site.lab.hosts)):
        assert site.health(i, "alpha")["instance"] == "alpha"


def test_list_then_destroy_a_demo_on_every_host_while_alpha_serves(site):
    assert site.deploy("alpha")[0] == 0
    assert site.deploy("demo-x")[0] == 0
    listed = subprocess.run([sys.executable, "-m", "deployer.cli.manage", "list", "--targets", str(site.targets),
                             "--json"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    # And whatever earlier tests of the session left on the lab's hosts.
    assert {"alpha", "demo-x"} <= set(rows)
    assert rows["demo-x"]["hostname"] == "demo-x.example.test"
    assert set(rows["demo-x"]["hosts"]) == set(site.lab.addresses) and rows["demo-x"]["problems"] == []
    assert_vpn_down(site.lab)
    alpha = [tree_digest(h.path("/var/www/alpha.releases")) for h in site.lab.hosts]
    proc = subprocess.run([sys.executable, "-m", "deployer.cli.manage", "destroy", "demo-x", "--yes",
                           "--targets", str(site.targets), "--output", "plain"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for h in site.lab.hosts:
        for path in ("/var/www/demo-x", "/var/www/demo-x.releases", "/var/www/demo-x.deployer",
                     "/etc/apache2/sites-available/demo-x.conf", "/etc/apache2/sites-enabled/demo-x.conf"):
            assert not os.path.lexists(h.path(path)), path
    assert not (site.lab.shared_dir / "demo-x.shared").exists()
    assert [tree_digest(h.path("/var/www/alpha.releases")) for h in site.lab.hosts] == alpha
    for i in range(len(site.lab.hosts)):
        assert site.health(i, "alpha")["instance"] == "alpha"
        # Apache reloaded without it: no daemon of demo-x answers its name.
        with site.lab.vpn_client(log=site.tmp / f"gone-{i}.log"):
            _, _, body = site.lab.http_get(i, "/health", host="demo-x.example.test")
        assert '"instance": "demo-x"' not in body
    assert_vpn_down(site.lab)


def test_dry_run_changes_nothing_and_opens_no_vpn(site):
    assert site.deploy("alpha")[0] == 0
    before = site.hosts_digest()
    (site.app / "RELEASE.txt").write_text("not deployed\n")
    code, events = site.deploy("alpha", "--dry-run")
    assert code == 0, error_of(events)
    assert [e["step"] for e in events if e["event"] == "planned" and e["stage"] == "vpn"]
    assert not [e for e in events if e["event"] == "step_started"]
    assert site.hosts_digest() == before
    assert_vpn_down(site.lab)


def test_unknown_host_key_fails_changes_nothing_vpn_down(site):
    lines = site.lab.known_hosts.read_text().splitlines()
    last = site.lab.addresses[-1]
    kept = [line for line in lines if not line.startswith(f"{last} ")]
    assert len(kept) < len(lines)
    known = site.tmp / "known_hosts"
    known.write_text("\n".join(kept) + "\n")
    site.write(known_hosts=str(known))
    before = site.hosts_digest()
    code, events = site.deploy("alpha")
    assert code == 1
    assert f"{last}: host key" in error_of(events) and "refusing to connect" in error_of(events)
    assert site.hosts_digest() == before
    assert_vpn_down(site.lab)


def test_dead_vpn_server_fails_with_its_log_changes_nothing(site):
    site.write(vpn={"kind": "openvpn", "config": str(site.lab.client_ovpn), "timeout": 6})
    before = site.hosts_digest()
    with site.lab.vpn_server_stopped():
        code, events = site.deploy("alpha")
    assert code == 1
    assert "VPN not up after 6s" in error_of(events) and "openvpn log" in error_of(events)
    assert site.hosts_digest() == before
    assert_vpn_down(site.lab)


def test_template_with_missing_token_fails_before_anything(site):
    template = site.tmp / "vhost"
    template.write_text((REPO / "templates" / "default_template").read_text()
                        + "    SetEnv TIER <<TIER>>\n")
    site.write(template=str(template))
    before = site.hosts_digest()
    code, events = site.deploy("alpha")
    assert code == 2
    assert f"{template}:" in error_of(events) and "<<TIER>>" in error_of(events)
    assert not [e for e in events if e["event"] in ("step_started", "planned")]
    assert site.hosts_digest() == before
    assert_vpn_down(site.lab)


def test_configtest_failing_on_one_host_undoes_every_host(site):
    assert site.deploy("alpha")[0] == 0
    live = [os.readlink(h.path("/var/www/alpha")) for h in site.lab.hosts]
    broken = site.lab.hosts[-1].path("/etc/apache2/conf-enabled/broken.conf")
    broken.write_text("ThisIsNotADirective on\n")
    try:
        (site.app / "RELEASE.txt").write_text("never live\n")
        before = site.hosts_digest()
        code, events = site.deploy("alpha")
    finally:
        broken.unlink()
    assert code == 1
    assert f"{site.lab.addresses[-1]}:" in error_of(events) and "ThisIsNotADirective" in error_of(events)
    configtests = [e for e in events
                   if e["event"] == "step_finished" and e["step"] == "apache configtest with the next vhost"]
    # Hosts run at once: events come in the order hosts finish.
    broken_host = site.lab.addresses[-1]
    assert {e["host"]: e["ok"] for e in configtests} == {a: a != broken_host for a in site.lab.addresses}
    # Every host as it was: the host whose check passed was rolled back too.
    after = site.hosts_digest()
    for b, a in zip(before, after, strict=True):
        assert a["/var/www"] == b["/var/www"] and a["/root/.ssh"] == b["/root/.ssh"]
        assert {k: v for k, v in a["/etc/apache2"].items() if k != "conf-enabled/broken.conf"} == \
            {k: v for k, v in b["/etc/apache2"].items() if k != "conf-enabled/broken.conf"}
    assert [os.readlink(h.path("/var/www/alpha")) for h in site.lab.hosts] == live
    assert_vpn_down(site.lab)
    assert site.deploy("alpha")[0] == 0  # a plain re-run, the broken file gone


def test_sigterm_mid_deploy_undoes_and_closes_the_vpn(site):
    # TeamCity's "stop build" while migrate runs on the first host.
    started = site.lab.shared_dir / "migrate-started"
    started.unlink(missing_ok=True)
    site.write(migrate=f"touch {site.lab.shared_dir_on_hosts}/migrate-started && sleep 15")
    before = site.hosts_digest()
    code, events, err = site.deploy_and("alpha", started.exists, lambda p: p.send_signal(signal.SIGTERM))
    assert code == 130, err
    assert error_of(events) == "interrupted (SIGTERM)"
    assert site.hosts_digest() == before
    assert_vpn_down(site.lab)
    # The migrate command itself was stopped on the host, not left to run.
    assert site.lab.run(0, "pgrep -x sleep", check=False).returncode == 1


def test_deploy_alpha_on_four_hosts(lab_session, tmp_path):
    # Last in the file: it replaces the session's 2-host lab with a 4-host one.
    site = Site(lab_session.get(4), tmp_path)
    code, events = site.deploy("alpha")
    assert code == 0, error_of(events)
    check_deployed(site, "alpha", events)
    assert_vpn_down(site.lab)


@pytest.fixture
def four(lab_session, tmp_path):
    site = Site(lab_session.get(4), tmp_path)
    code, events = site.deploy("alpha")
    assert code == 0, error_of(events)
    return site


@pytest.mark.parametrize("stage", ["upload", "render", "migrate", "before-restart"])
def test_a_failure_on_one_host_of_four_leaves_all_four_as_they_were(four, stage):
    when, stage = ("before", "restart") if stage == "before-restart" else ("after", stage)
    four.write(hooks={when: {stage: ["test ! -e /etc/apache2/deployer-test-fail"]}})
    (four.app / "RELEASE.txt").write_text("never live\n")
    flag = four.lab.hosts[2].path("/etc/apache2/deployer-test-fail")
    flag.write_text("")
    try:
        before = four.hosts_digest()
        code, events = four.deploy("alpha")
        after = four.hosts_digest()
    finally:
        flag.unlink()
    assert code == 1, error_of(events)
    failed = [e["host"] for e in events if e["event"] == "step_finished" and not e["ok"]]
    assert failed == [four.lab.addresses[2]]
    assert after == before
    assert_vpn_down(four.lab)
    assert four.deploy("alpha")[0] == 0  # a plain re-run, the flag gone


def test_sigterm_while_four_hosts_run_stops_every_command_and_undoes_every_host(four):
    shared = four.lab.shared_dir
    for old in shared.glob("slow-*"):
        old.unlink()
    # A command that ignores TERM on every host at once: each must be killed.
    four.write(stages={"slow": {"run": f"touch {four.lab.shared_dir_on_hosts}/slow-$(hostname);"
                                       " trap '' TERM; sleep 20", "on": "all"}},
               pipeline=["package", "vpn", "upload", "render", "slow", "migrate", "restart"])
    before = four.hosts_digest()
    code, events, err = four.deploy_and("alpha", lambda: len(list(shared.glob("slow-*"))) == 4,
                                        lambda p: p.send_signal(signal.SIGTERM))
    assert code == 130, err
    assert error_of(events) == "interrupted (SIGTERM)"
    for i in range(4):
        assert four.lab.run(i, "pgrep -x sleep", check=False).returncode == 1, i
    assert four.hosts_digest() == before
    assert_vpn_down(four.lab)


def test_a_host_whose_link_dies_mid_step_fails_the_deploy_within_its_time_limit(site):
    # It used to hang the deploy: nothing answers, and TCP takes many minutes to tell.
    shared = site.lab.shared_dir
    for old in shared.glob("slow-*"):
        old.unlink()
    # connect_timeout: the rollback's new connection to the dead host gives up sooner (CI's time).
    site.write(step_timeout=5, connect_timeout=3, hooks={"before": {"restart": [
        f"touch {site.lab.shared_dir_on_hosts}/slow-$(hostname); sleep 30"]}})
    link = f"{tests_lab.HOST_LINK_PREFIX}1"
    try:
        code, events, err = site.deploy_and(
            "demo-cut", lambda: len(list(shared.glob("slow-*"))) == len(site.lab.hosts),
            lambda _: subprocess.run(["ip", "link", "set", link, "down"], check=True), timeout=240)
    finally:
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
    assert code == 3, err
    dead, alive = site.lab.addresses[1], site.lab.addresses[0]
    error = error_of(events)
    assert f"{dead}:" in error
    need = error.split("these hosts need a person:")[1]
    assert dead in need and alive not in need
    # The host that answered is as it was, its lock released and the run
    # in its history; the other needs a person, and is told so.
    host = site.lab.hosts[0]
    assert not host.path("/etc/apache2/sites-available/demo-cut.conf").exists()
    assert not [p for p in host.path("/var/www").glob("demo-cut*/*") if p.parent.name != "demo-cut.deployer"]
    assert not host.path("/var/www/demo-cut.deployer/lock").exists()
    assert "\tundo incomplete\t" in host.path("/var/www/demo-cut.deployer/history").read_text()
    assert_vpn_down(site.lab)
    # The link is back: a plain re-run finds the lock of the run that is gone,
    # undoes what it left on that host, and deploys. (Once the host answers
    # again: its neighbour entry takes a moment to come back.)
    deadline = time.monotonic() + 60
    while subprocess.run(["ip", "netns", "exec", tests_lab.VPN_NETNS, "timeout", "2", "bash", "-c",
                          f"</dev/tcp/{dead}/22"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, f"{dead} does not answer again"
        time.sleep(0.5)
    site.write()
    code, events = site.deploy("demo-cut")
    assert code == 0, error_of(events)
    assert any("is gone (killed): taking it over" in e.get("text", "") for e in events)
    check_deployed(site, "demo-cut", events)


# -- the tunnel crossed once ---------------------------------------------------

def into_tunnel() -> int:
    """Bytes the VPN's clients sent into the tunnel, as the server's tun device counts them."""
    out = subprocess.run(["ip", "-n", tests_lab.VPN_NETNS, "-s", "-j", "link", "show"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return sum(link["stats64"]["rx"]["bytes"] for link in json.loads(out) if link["ifname"].startswith("tun"))


def uploads(events: list[dict]) -> dict[str, str]:
    return {e["host"]: e["stdout"] for e in events if e["event"] == "step_finished"
            and e["step"].startswith("upload and unpack")}


def no_relay_left(site: Site, name: str) -> None:
    for h in site.lab.hosts:
        assert not list(h.path("/var/www").glob(f"{name}.releases/.deployer-relay-*")), h.name


def deploy_once_through(site: Site, name: str) -> tuple[list[dict], list[int]]:
    """A deploy that must send the artifact into the tunnel once (plus the
    sessions' own traffic; sent to each host it would be once a host) and
    leave every host's ~/.ssh as it was: its events, and each host's SSH
    logins meanwhile."""
    keys = [tree_digest(h.path("/root/.ssh")) for h in site.lab.hosts]
    logins = site.lab.ssh_log_offsets()
    sent = into_tunnel()
    code, events = site.deploy(name)
    sent = into_tunnel() - sent
    assert code == 0, error_of(events)
    package = next(e for e in events if e["event"] == "step_finished" and e["stage"] == "package")
    artifact = int(package["stdout"].split(" bytes compressed")[0].rsplit(" ", 1)[1])
    assert artifact < sent < 1.5 * artifact, (sent, artifact)
    assert [tree_digest(h.path("/root/.ssh")) for h in site.lab.hosts] == keys
    no_relay_left(site, name)
    return events, site.lab.ssh_logins(logins)


def test_the_artifact_crosses_the_tunnel_once_and_the_one_time_key_is_gone_after(four):
    events, logins = deploy_once_through(four, "demo-relay")
    first, *others = four.lab.addresses
    said = uploads(events)
    assert said[first].startswith("0 files linked from the live release, ") and " sent\n" in said[first]
    assert "is offered to the other hosts until" in said[first]
    for host in others:
        assert said[host].strip().endswith("read from the first host"), said[host]
    # Each other host logged in to the first one once, with the one-time key.
    assert logins == [1 + len(others), 1, 1, 1]
    for i in range(4):
        assert four.health(i, "demo-relay")["release_dir"] == release_of(events)


def test_a_new_instance_beside_another_is_sent_only_what_it_lacks(four):
    # alpha live on every host, from the same source but RELEASE.txt; an
    # artifact well above what a deploy's sessions send anyway (0.4 MB for 4 hosts).
    (four.app / "static" / "ballast.bin").write_bytes(os.urandom(4_000_000))
    assert four.deploy("alpha")[0] == 0
    (four.app / "RELEASE.txt").write_text("beside\n")
    four.write(link_from_other_instances=True)
    sent = into_tunnel()
    code, events = four.deploy("demo-beside")
    sent = into_tunnel() - sent
    assert code == 0, error_of(events)
    linked = re.compile(r"^[1-9][0-9]* files linked from the live release of alpha, 1 sent$", re.M)
    for host, said in uploads(events).items():
        assert linked.search(said), (host, said)
    package = next(e for e in events if e["event"] == "step_finished" and e["stage"] == "package")
    artifact = int(package["stdout"].split(" bytes compressed")[0].rsplit(" ", 1)[1])
    assert sent < artifact / 4, (sent, artifact)  # not once: the relay has nothing to carry either
    for i in range(4):
        health = four.health(i, "demo-beside")
        assert health["release_dir"] == release_of(events) and health["release"] == "beside"


@pytest.fixture
def store(four, tmp_path):
    """A real S3-compatible store (SeaweedFS) in the private network: in the
    VPN host's namespace, on its private address, which the hosts reach and
    the runner reaches through the tunnel."""
    why = s3server.available()
    if why:
        pytest.skip(why)
    with four.lab.vpn_client(log=tmp_path / "vpn-s3.log"):
        server = s3server.start(tests_lab.VPN_NETNS, tests_lab.VPN_PRIVATE_ADDRESS, tmp_path / "s3", offset=200)
    try:
        yield server
    finally:
        server.stop()


def test_with_an_artifact_store_every_host_reads_the_artifact_from_it(four, store, monkeypatch):
    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    four.write(artifact_store={"url": f"s3://{store.bucket}/deploys/", "endpoint": store.endpoint})
    events, logins = deploy_once_through(four, "demo-store")
    said = uploads(events)
    for host in four.lab.addresses:
        assert said[host].strip().endswith("read from the artifact store"), said[host]
    assert logins == [1, 1, 1, 1]  # no host logged in to another
    for i in range(4):
        assert four.health(i, "demo-store")["release_dir"] == release_of(events)

    # The store gone: the put fails, the runner sends the artifact to each
    # host itself, and the deploy goes on.
    store.stop()
    (four.app / "static" / "ballast.bin").write_bytes(os.urandom(relay.MIN_SIZE + 1000))
    code, events = four.deploy("demo-store")
    assert code == 0, error_of(events)
    notes = " ".join(e["text"] for e in events if e["event"] == "note")
    assert f"could not be put in s3://{store.bucket}/deploys/" in notes, notes
    said = uploads(events)
    for host in four.lab.addresses:
        assert said[host].strip().endswith(" sent"), said[host]
    no_relay_left(four, "demo-store")


def test_the_key_is_gone_after_an_interrupt_while_the_others_read_the_artifact(four):
    # configtest in the upload's session is slow on the last host: the first
    # host has offered the artifact, and the deploy is stopped there.
    shared, on_hosts = four.lab.shared_dir, four.lab.shared_dir_on_hosts
    ctl = shared / "slowctl"
    ctl.write_text(f'#!/bin/sh\n[ "$(hostname)" != web3 ] || {{ touch {on_hosts}/slow-ctl; sleep 30; }}\n'
                   'exec apache2ctl "$@"\n')
    ctl.chmod(0o755)
    (shared / "slow-ctl").unlink(missing_ok=True)
    four.write(apache={"ctl": f"{on_hosts}/slowctl"})
    before = four.hosts_digest()
    code, events, err = four.deploy_and("demo-stop", (shared / "slow-ctl").exists,
                                        lambda p: p.send_signal(signal.SIGTERM))
    assert code == 130, err
    assert "is offered to the other hosts" in uploads(events)[four.lab.addresses[0]]
    assert four.hosts_digest() == before
    assert_vpn_down(four.lab)


def test_a_first_host_that_cannot_offer_the_artifact_does_not_fail_the_deploy(four):
    # An authorized_keys that is a link (to a file managed elsewhere) is never written through.
    keys = four.lab.hosts[0].path("/root/.ssh/authorized_keys")
    real = keys.with_name("authorized_keys.real")
    shutil.copy2(keys, real)
    keys.unlink()
    keys.symlink_to("authorized_keys.real")
    try:
        code, events = four.deploy("demo-direct")
        assert code == 0, error_of(events)
        assert real.read_bytes() == keys.read_bytes() and keys.is_symlink()
    finally:
        keys.unlink()
        real.rename(keys)
    notes = " ".join(e["text"] for e in events if e["event"] == "note")
    assert "is not offered to the other hosts" in notes and "the runner sends it" in notes
    assert all(text.splitlines()[0].endswith(" sent") for text in uploads(events).values())
    no_relay_left(four, "demo-direct")
