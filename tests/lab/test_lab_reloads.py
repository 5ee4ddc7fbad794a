"""Apache's turn, in the lab (Debian's Apache and apache2ctl on every host):
two instances deployed at once on the same hosts, one of them broken; and a
reload held up by a request in flight while another run installs its vhost.
Apache stays up on every host, the broken run is undone, the other goes live
and answers at once, and every other site keeps answering. And requests from
the private network during deploys and a rollback. (The instances
are left on the hosts: this file runs after test_lab_deploy, which lists them.)"""

# Fixtures are imported, so test parameters "redefine" them.
# ruff: noqa: F811

import json
import os
import subprocess
import time
from collections import Counter

import pytest
import yaml

from tests.conftest import REPO, default_template_with
from tests.lab import lab as tests_lab
from tests.lab.fixtures import Site, error_of, lab, lab_session, release_of, site  # noqa: F401
from tests.lab.test_lab_faults import assert_whole, finish, first_deploy, release_path, start

pytestmark = pytest.mark.lab

BROKEN = "BadDirective on\n"

# Asks every host for /slow (the app sleeps SECONDS first) from inside the
# private network, all at once; prints each status.
SLOW = r"""
import http.client, sys, threading
hosts, name, seconds = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
def ask(h):
    try:
        c = http.client.HTTPConnection(h, 80, timeout=30)
        c.request("GET", "/slow?" + seconds, headers={"Host": name})
        print(h, c.getresponse().status, flush=True)
    except Exception as e:
        print(h, type(e).__name__, flush=True)
threads = [threading.Thread(target=ask, args=(h,)) for h in hosts]
for t in threads: t.start()
for t in threads: t.join(40)
"""


def with_template(site, name: str, extra: str) -> None:
    """Instance `name` deploys the default template with `extra` at its end."""
    template = default_template_with(site.tmp / f"{name}.template", extra)
    doc = yaml.safe_load(site.targets.read_text())
    doc["targets"][name] = {"template": str(template)}
    site.targets.write_text(yaml.safe_dump(doc))


def answers(site, name: str) -> list[int]:
    """GET /health for `name` on every host, on a fresh connection each."""
    with site.lab.vpn_client(log=site.tmp / f"answers-{name}.log"):
        return [site.lab.http_get(i, "/health", host=f"{name}.example.test")[0]
                for i in range(len(site.lab.hosts))]


def apache_up(site) -> None:
    for i in range(len(site.lab.hosts)):
        site.lab.run(i, "kill -0 $(cat /run/apache2/apache2.pid)")


def test_two_instances_at_once_one_broken_the_other_goes_live_and_every_site_keeps_answering(site):
    other = first_deploy(site, "ap-other")
    with_template(site, "ap-bad", BROKEN)
    good, bad = start(site, "ap-good"), start(site, "ap-bad")
    (good_code, good_events), (bad_code, bad_events) = finish(good), finish(bad)
    assert good_code == 0, error_of(good_events)
    # Live means a request reaches the new vhost, not the default site's 404.
    assert answers(site, "ap-good") == [200] * len(site.lab.hosts)
    assert bad_code == 1 and "Invalid command 'BadDirective'" in error_of(bad_events), error_of(bad_events)
    apache_up(site)
    assert answers(site, "ap-other") == [200] * len(site.lab.hosts)
    assert_whole(site, "ap-good", {release_path("ap-good", good_events)})
    assert_whole(site, "ap-other", {other})
    for h in site.lab.hosts:
        left = sorted(p.name for p in h.path("/etc/apache2/sites-available").iterdir() if "ap-bad" in p.name)
        assert left == [] and not h.path("/etc/apache2/sites-enabled/ap-bad.conf").is_symlink()


def test_a_reload_held_up_by_a_request_in_flight_while_another_run_installs_a_broken_vhost(site):
    # The app answers /slow after sleeping: an old daemon busy with it holds
    # Apache's reload back (Apache reads its config once they have stopped).
    wsgi = site.app / "django.wsgi"
    wsgi.write_text(wsgi.read_text() + (
        "\n_app = application\n\n\ndef application(environ, start_response):\n"
        "    if environ.get('PATH_INFO') == '/slow':\n"
        "        import time\n        time.sleep(float(environ.get('QUERY_STRING') or 5))\n"
        "    return _app(environ, start_response)\n"))
    first_deploy(site, "ap-slow")
    with_template(site, "ap-slow", "# the vhost changes: Apache reloads\n")
    with_template(site, "ap-late", BROKEN)
    slow = subprocess.Popen(["ip", "netns", "exec", tests_lab.VPN_NETNS, "/usr/bin/python3", "-c", SLOW,
                             ",".join(site.lab.addresses), "ap-slow.example.test", "6"],
                            stdout=subprocess.PIPE, text=True)
    try:
        (site.app / "RELEASE.txt").write_text("reloaded while busy\n")
        first = start(site, "ap-slow")
        late = start(site, "ap-late")
        (first_code, first_events), (late_code, late_events) = finish(first), finish(late)
    finally:
        out, _ = slow.communicate(timeout=60)
    assert first_code == 0, error_of(first_events)
    assert late_code == 1 and "Invalid command 'BadDirective'" in error_of(late_events), error_of(late_events)
    apache_up(site)
    assert answers(site, "ap-slow") == [200] * len(site.lab.hosts)
    for i in range(len(site.lab.hosts)):
        assert site.health(i, "ap-slow")["release_dir"] == release_of(first_events)
    print(f"\nthe slow requests during the reload: {out.split()}")


# How many deploys: the ten with DEPLOYER_LAB_LOAD_DEPLOYS=10 (docs/explanation/a-run.md);
# six in CI, for its time. Every third one (2, 5, 8) changes the vhost.
DEPLOYS = int(os.environ.get("DEPLOYER_LAB_LOAD_DEPLOYS", "6"))


def test_requests_during_deploys_and_a_rollback(lab_session, tmp_path, capsys):
    """An HTTP client in the private network asks every host for the instance
    during DEPLOYS deploys (code only, and every third one changes the vhost)
    and a rollback, at 4 hosts. Every run exits 0 and reloads as its kind says;
    after each, every host answers from its release and no other; not one
    request fails during the deploys of code and the rollback. Apache's
    graceful restart, which a vhost change needs, still fails requests
    (docs/explanation/a-run.md says why): counted and printed, not asserted."""
    site, name = Site(lab_session.get(4), tmp_path), "load"
    first_deploy(site, name)
    stop = site.tmp / "stop-load"
    client = subprocess.Popen(["ip", "netns", "exec", tests_lab.VPN_NETNS, "/usr/bin/python3",
                               str(REPO / "tests" / "lab" / "load_client.py"),
                               ",".join(site.lab.addresses), f"{name}.example.test", str(stop)],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    runs: list[tuple[str, float, float, str]] = []  # (kind, started, ended, release served after)
    try:
        time.sleep(1)
        for n in range(1, DEPLOYS + 2):
            assert client.poll() is None
            # The last deploy changes only code: the rollback from it keeps the vhost (daemons restarted).
            kind = "rollback" if n == DEPLOYS + 1 else "vhost" if n % 3 == 2 else "code"
            if kind == "vhost":
                with_template(site, name, f"SetEnv DEPLOYER_LOAD_TEST {n}\n")
            if kind != "rollback":
                (site.app / "RELEASE.txt").write_text(f"load {n}\n")
            started = time.monotonic()
            code, events = site.rollback(name) if kind == "rollback" else site.deploy(name)
            runs.append((kind, started, time.monotonic(), release_of(events)))
            assert code == 0, error_of(events)
            said = "\n".join(e.get("stdout", "") for e in events
                             if e["event"] == "step_finished" and e["step"].startswith("apache: "))
            assert ("Apache reloaded its configuration" if kind == "vhost"
                    else f"mod_wsgi daemons of {name} restarted one at a time") in said, (kind, said)
            time.sleep(1.5)
        assert runs[-1][3] == runs[-3][3], "the rollback went back to the release before the last"
    finally:
        stop.touch()
        try:
            out, _ = client.communicate(timeout=90)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    assert client.returncode == 0
    load = json.loads(out)
    hosts = site.lab.addresses
    # After each run, until the next one starts, every host answers from the
    # run's release and no other.
    for i, (kind, _, ended, release) in enumerate(runs):
        until = runs[i + 1][1] if i + 1 < len(runs) else float("inf")
        for host in hosts:
            seen = load["releases"].get(host, [])
            answered = {r for r, first, last in seen if first < until and last > ended}
            assert answered == {release}, (f"after run {i + 1} ({kind}), {host} answered from {answered or 'none'}"
                                           f" instead of {release}", seen)

    def during_vhost_changes(times: list[list]) -> list[list]:
        return [t for t in times if any(k == "vhost" and s <= t[0] <= e for k, s, e, _ in runs)]
    vhost = during_vhost_changes(load["failed"])
    with capsys.disabled():  # CI's log keeps the numbers
        print(f"\n{load['ok']} requests answered 200 at {len(hosts)} hosts during {len(runs) - 1} deploys and a "
              f"rollback; failed: {len(load['failed'])}, of them during the {(DEPLOYS + 1) // 3} deploys that "
              f"changed the vhost: {len(vhost)} (by host: {dict(Counter(h for _, h in vhost))}); kept-alive "
              f"connections closed by Apache and opened again: {len(load['reconnects'])}")
    assert load["ok"] > 100 * len(hosts)
    assert [f for f in load["failed"] if f not in vhost] == [], load["failures"][:10]
    # Only a reload of Apache closes kept-alive connections.
    assert during_vhost_changes(load["reconnects"]) == load["reconnects"], load["reconnects"]
