"""A fleet in the lab, 8 hosts through the VPN: the switch and reload go in
batches, each batch passes its health check before the next starts, and
`max_failed` is counted over the whole run. The fault: one host of the
second batch answers its health check 403 (a host-wide Apache rule)."""

# Fixtures are imported, so test parameters "redefine" them.
# ruff: noqa: F811

import json
import os
import subprocess
import time

import pytest

from tests.lab import lab as tests_lab
from tests.lab.fixtures import Site, assert_vpn_down, error_of, lab_session, release_of  # noqa: F401

pytestmark = pytest.mark.lab

HOSTS = 8
BAD = 2  # the third host: in the second batch
DEAD = 7  # the last: in the third batch
ROLLOUT = {"batches": [1, "25%", "100%"],  # 1 host, then 2, then the other 5
           "health": {"path": "/health", "timeout": 10}}
DENY = "/etc/apache2/conf-enabled/zz-deployer-test-deny-health.conf"


def live(site, name: str) -> list[str | None]:
    """What /var/www/NAME points at on each host."""
    out = []
    for h in site.lab.hosts:
        path = h.path(f"/var/www/{name}")
        out.append(os.readlink(path) if path.is_symlink() else None)
    return out


def serves(site, i: int, name: str) -> tuple[int, str]:
    status, _, body = site.lab.http_get(i, "/health", host=f"{name}.example.test")
    return status, body


def deny_health(site, on: bool) -> None:
    """Host BAD answers /health 403 for every site, or no longer; Apache
    reloaded and seen to answer so (a graceful returns before it has)."""
    conf = site.lab.hosts[BAD].path(DENY)
    if on:
        conf.write_text("<Location /health>\n    Require all denied\n</Location>\n")
    else:
        conf.unlink()
    site.lab.run(BAD, "apache2ctl graceful")
    deadline = time.monotonic() + 30
    with site.lab.vpn_client(log=site.tmp / "check.log"):
        while (serves(site, BAD, "fleet")[0] == 403) != on:
            assert time.monotonic() < deadline, "Apache did not reload"
            time.sleep(0.2)


def test_batches_stop_at_a_failed_health_check_and_max_failed_lets_one_host_through(lab_session, tmp_path):
    site = Site(lab_session.get(HOSTS), tmp_path)
    name = "fleet"
    site.write(**ROLLOUT)
    code, events = site.deploy(name)
    assert code == 0, error_of(events)
    old = f"/var/www/{name}.releases/{release_of(events)}"
    assert live(site, name) == [old] * HOSTS

    deny_health(site, True)
    try:
        # max_failed 0: the second batch's health check fails on the bad
        # host, and every switched host (the first batch's too) is put back;
        # the third batch is never switched.
        (site.app / "RELEASE.txt").write_text("stopped at batch 2\n")
        code, events = site.deploy(name)
        assert code == 1, error_of(events)
        assert "health check" in error_of(events) and site.lab.addresses[BAD] in error_of(events)
        assert live(site, name) == [old] * HOSTS
        switched = {e["host"] for e in events if e["event"] == "step_started" and e["step"].startswith("switch ")}
        assert switched == set(site.lab.addresses[:3])
        with site.lab.vpn_client(log=tmp_path / "check.log"):
            # The first host reloaded back, not only relinked.
            assert json.loads(serves(site, 0, name)[1])["release_dir"] == os.path.basename(old)
        assert_vpn_down(site.lab)

        # max_failed 2: the bad host is put back and left out, and so is a
        # host that does not answer at all (its link down); every other
        # host goes live; exit 5, and the last line says who serves what.
        site.write(**ROLLOUT, max_failed=2, connect_timeout=3)
        (site.app / "RELEASE.txt").write_text("six of eight\n")
        subprocess.run(["ip", "link", "set", f"{tests_lab.HOST_LINK_PREFIX}{DEAD}", "down"], check=True)
        try:
            code, events = site.deploy(name)
        finally:
            subprocess.run(["ip", "link", "set", f"{tests_lab.HOST_LINK_PREFIX}{DEAD}", "up"], check=True)
        assert code == 5, error_of(events)
        new = f"/var/www/{name}.releases/{release_of(events)}"
        expected = [new] * HOSTS
        expected[BAD] = expected[DEAD] = old
        assert live(site, name) == expected
        bad, dead = site.lab.addresses[BAD], site.lab.addresses[DEAD]
        assert error_of(events).startswith(f"2 of {HOSTS} hosts failed, within max_failed 2: the run went on"
                                           f" without them, and undid what it had changed there: {dead}: cannot"
                                           " connect")
        assert f"; {bad}: health check: GET /health answers 200" in error_of(events)
        # Their old code runs on the migrated database: the line says that stays.
        assert events[-1]["summary"] == (f"release {release_of(events)} is live on 6 of 8 hosts; {dead}, {bad} are"
                                         f" as before the run; NOT undone: migrate:"
                                         f" python manage.py migrate --noinput ran on {site.lab.addresses[0]};"
                                         " what it changed stays")
        # The bad host's history says the run left it out; the others' say done;
        # the dead one was never reached, and holds no lock.
        history = [h.path(f"/var/www/{name}.deployer/history").read_text().splitlines()[-1].split("\t")
                   for h in site.lab.hosts]
        assert [line[2] for i, line in enumerate(history) if i != DEAD] == [
            "left out, undone" if i == BAD else "done" for i in range(HOSTS) if i != DEAD]
        assert history[DEAD][3] != release_of(events)
        assert not any(h.path(f"/var/www/{name}.deployer/lock").exists() for h in site.lab.hosts)
        # The new release, unused on the bad host, was removed there.
        assert not site.lab.hosts[BAD].path(new).exists()
    finally:
        deny_health(site, False)
    # The hosts mended, a plain rerun puts the release on all eight (once
    # the dead one answers again: its neighbour entry takes a moment).
    deadline = time.monotonic() + 60
    while subprocess.run(["ip", "netns", "exec", tests_lab.VPN_NETNS, "timeout", "2", "bash", "-c",
                          f"</dev/tcp/{site.lab.addresses[DEAD]}/22"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "the dead host does not answer again"
        time.sleep(0.5)
    code, events = site.deploy(name)
    assert code == 0, error_of(events)
    assert len(set(live(site, name))) == 1
    assert_vpn_down(site.lab)
