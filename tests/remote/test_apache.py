"""remote/sh/apache.sh against a real Apache (deployer's builtin local one,
on a loopback port): a vhost Apache never reads before it passed its test,
one run at a time at Apache, and a reload that is over when the step is."""

import fcntl
import http.client
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from deployer.connectors.local import LocalTransport
from deployer.connectors.result import Result
from deployer.plan.vhost import Site, owner_mark
from deployer.remote import hostscripts
from tests.conftest import LOCAL_APACHE_CTL, free_port, needs_local_site

pytestmark = needs_local_site


class Apache:
    """An Apache folder with instances' sites, as render leaves them: each
    one's next vhost, its stub, and its sites-enabled link."""

    def __init__(self, root: Path):
        self.dir = root / "apache2"
        for sub in ("sites-available", "sites-enabled"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.docs = root / "docs"
        self.ctl = ("/bin/sh", str(LOCAL_APACHE_CTL), str(self.dir))

    def site(self, name: str) -> Site:
        return Site(str(self.dir), name)

    def write_next(self, name: str, port: int, body: str, extra: str = "") -> None:
        """NAME.next serving `body` at / for name.test on `port`; enabled through its stub."""
        site, docs = self.site(name), self.docs / name / body
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "index.html").write_text(body)
        Path(site.next).write_text(
            f"{owner_mark(name)}\n<VirtualHost *:{port}>\n    ServerName {name}.test\n    DocumentRoot {docs}\n"
            f"    <Directory {docs}>\n        Require all granted\n    </Directory>\n{extra}</VirtualHost>\n")
        Path(site.stub).write_text(site.stub_content())
        enabled = Path(site.enabled)
        if not enabled.is_symlink():
            enabled.symlink_to(f"../sites-available/{name}.stub")

    def run(self, mode: str, name: str, run_id: str = "r1", wait: int = 30) -> Result:
        site = self.site(name)
        return LocalTransport().run(hostscripts.apache(
            mode, str(self.dir), wait, site.define, site.next, site.live, site.work(site.live, run_id),
            owner_mark(name), str(self.docs / name / "live"), self.ctl).line(), timeout=120)

    def pid(self) -> int:
        return int((self.dir / "run" / "apache2.pid").read_text())

    def stop(self) -> None:
        LocalTransport().run(" ".join((*self.ctl, "stop")), timeout=60)


def get(port: int, name: str) -> tuple[int, str]:
    """GET / for name.test on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": f"{name}.test"})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


@pytest.fixture
def apache(tmp_path):
    a = Apache(tmp_path)
    yield a
    a.stop()


@pytest.fixture
def live(apache):
    """Instance `a` live on a port, v1; Apache running."""
    port = free_port()
    apache.write_next("a", port, "v1")
    result = apache.run("promote", "a", "r0")
    assert result.ok, result.stderr
    assert get(port, "a") == (200, "v1")
    return port


def test_promote_returns_once_apache_serves_the_new_vhost_from_the_same_parent(apache, live):
    pid = apache.pid()
    apache.write_next("a", live, "v2")
    result = apache.run("promote", "a")
    assert result.ok, result.stderr
    assert f"Apache reloaded its configuration (pid {pid})" in result.stdout
    # No wait here: the step is over only once Apache has loaded it.
    assert get(live, "a") == (200, "v2")
    assert apache.pid() == pid and not Path(apache.site("a").next).exists()
    # What the undo needs: the previous vhost, which restore puts back (and a reload loads).
    assert apache.run("restore", "a").ok
    assert "v1" in Path(apache.site("a").live).read_text()
    assert apache.run("reload", "a").ok
    assert get(live, "a") == (200, "v1")


def test_the_local_apache_stops_even_once_its_config_no_longer_parses(apache, live):
    # A site's file edited by hand after the start: apache2ctl stop cannot read
    # the config, and the local ctl stops the parent it started by its pid.
    pid = apache.pid()
    Path(apache.site("a").live).write_text("ServerName broken.test\nNoSuchDirective here\n")
    result = LocalTransport().run(" ".join((*apache.ctl, "stop")), timeout=60)
    assert result.ok, result.stderr
    assert "with SIGTERM" in result.stderr and "local Apache stopped" in result.stdout
    assert not Path(f"/proc/{pid}").exists()


def test_a_next_vhost_that_fails_its_test_is_never_read_by_anyones_reload(apache, live):
    pid = apache.pid()
    apache.write_next("a", live, "v2", extra="    BadDirective on\n")
    result = apache.run("test", "a")
    assert not result.ok and "Invalid command 'BadDirective'" in result.stderr
    # Another instance's deploy, logrotate or an admin reloads meanwhile:
    # Apache reads the live vhost, and stays up.
    graceful = LocalTransport().run(" ".join((*apache.ctl, "graceful")), timeout=60)
    assert graceful.ok, graceful.stderr
    assert apache.run("reload", "a").ok
    assert get(live, "a") == (200, "v1") and apache.pid() == pid
    # Nor is it made live.
    result = apache.run("promote", "a")
    assert not result.ok and "fails its test" in result.stderr
    assert "v1" in Path(apache.site("a").live).read_text() and get(live, "a") == (200, "v1")


def test_two_instances_promoted_at_once_one_broken_the_other_goes_live_and_apache_stays_up(apache, live):
    pid, other = apache.pid(), free_port()
    apache.write_next("a", live, "v2", extra="    BadDirective on\n")
    apache.write_next("b", other, "b1")
    results = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, apache.run("promote", n)))
               for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not results["a"].ok and results["b"].ok, (results["a"].stderr, results["b"].stderr)
    assert apache.pid() == pid
    assert get(live, "a") == (200, "v1") and get(other, "b") == (200, "b1")


def test_a_run_waits_its_turn_at_apache_and_gives_up_after_its_wait(apache, live):
    apache.write_next("a", live, "v2")
    lock = apache.dir / "sites-available" / ".deployer-apache.lock"
    with open(lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = apache.run("promote", "a", wait=1)
    assert not result.ok and "held this host's Apache lock" in result.stderr
    assert get(live, "a") == (200, "v1") and Path(apache.site("a").next).exists()


def test_a_reload_starts_an_apache_that_is_not_running(apache, live):
    apache.stop()
    assert not (apache.dir / "run" / "apache2.pid").exists()
    result = apache.run("reload", "a")
    assert result.ok, result.stderr
    assert f"Apache started (pid {apache.pid()})" in result.stdout and get(live, "a") == (200, "v1")


def test_an_apache_that_dies_loading_a_tested_config_fails_the_step_and_says_why(apache, live):
    # configtest cannot see that a port is taken: Apache finds out as it loads.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        apache.write_next("b", taken.getsockname()[1], "b1")
        assert apache.run("test", "b").ok
        result = apache.run("promote", "b")
    assert not result.ok
    assert "stopped while it reloaded: it is not running" in result.stderr
    assert "Address already in use" in result.stderr
    # The undo: the previous config back, and Apache up again.
    assert apache.run("restore", "b").ok
    assert apache.run("reload", "b").ok
    assert get(live, "a") == (200, "v1")


def _wsgi_release(root: Path, name: str) -> Path:
    release = root / name
    release.mkdir(parents=True)
    (release / "version.py").write_text(f"NAME = {name!r}\n")
    (release / "app.wsgi").write_text(
        "from version import NAME\n\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [NAME.encode()]\n")
    return release


class Load:
    """Threads asking for / until stopped (bounded: 60 s): fresh connections
    and keep-alive ones; every answer that is not a 200 is kept."""

    def __init__(self, port: int, name: str, threads: int = 4):
        self.port, self.host, self.stop_ = port, f"{name}.test", threading.Event()
        self.ok, self.failed = 0, []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i % 2 == 0,)) for i in range(threads)]

    def _run(self, keep_alive: bool) -> None:
        conn = None
        for _ in range(6000):  # 60 s at most, at 10 ms a request
            if self.stop_.is_set():
                break
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("GET", "/", headers={"Host": self.host})
                r = conn.getresponse()
                body = r.read()
                with self.lock:
                    if r.status == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"{r.status} {body[:200]!r}")
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.failed.append(repr(e))
                conn = None
            if not keep_alive and conn:
                conn.close()
                conn = None
            self.stop_.wait(0.01)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_.set()
        for t in self.threads:
            t.join(60)


def test_a_code_only_promote_restarts_the_daemons_one_at_a_time_and_drops_no_request(apache):
    port, root = free_port(), apache.docs / "w"
    r1, r2 = _wsgi_release(root, "r1"), _wsgi_release(root, "r2")
    live = root / "live"
    live.symlink_to(r1)
    site = apache.site("w")
    vhost = (f"{owner_mark('w')}\nWSGISocketRotation Off\nWSGIScriptReloading Off\n"
             f"<VirtualHost *:{port}>\n    ServerName w.test\n"
             f"    WSGIDaemonProcess w processes=2 threads=4 display-name=%{{GROUP}} home={live}"
             f" python-path={live} graceful-timeout=15\n"
             "    WSGIProcessGroup w\n    WSGIApplicationGroup %{GLOBAL}\n"
             f"    WSGIScriptAlias / {live}/app.wsgi process-group=w application-group=%{{GLOBAL}}\n"
             f"    <Directory {live}>\n        Require all granted\n    </Directory>\n</VirtualHost>\n")
    Path(site.next).write_text(vhost)
    Path(site.stub).write_text(site.stub_content())
    Path(site.enabled).symlink_to("../sites-available/w.stub")
    first = apache.run("promote", "w", "r0")
    assert first.ok, first.stderr
    assert get(port, "w") == (200, "r1")
    pidfile = apache.dir / "run" / "apache2.pid"
    generation = (pidfile.stat().st_ino, pidfile.stat().st_mtime_ns)
    with Load(port, "w") as load:
        time.sleep(1)
        (root / "switching").symlink_to(r2)  # as deployer switches: one rename(2)
        os.replace(root / "switching", live)
        Path(site.next).write_text(vhost)
        result = apache.run("promote", "w")
        time.sleep(0.5)
    assert result.ok, result.stderr
    assert "mod_wsgi daemons of w restarted one at a time (2)" in result.stdout
    # Apache itself was not reloaded: its pid file is the one it wrote last.
    assert (pidfile.stat().st_ino, pidfile.stat().st_mtime_ns) == generation
    assert load.failed == [] and load.ok > 50
    assert {get(port, "w") for _ in range(10)} == {(200, "r2")}


def test_a_port_only_an_untested_next_vhost_names_is_never_listened_on(apache, live):
    # Another run has written its next vhost, on a port something else holds:
    # the builtin Apache's reload for `a` must not bind it, and stays up.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        apache.write_next("b", taken.getsockname()[1], "b1")
        apache.write_next("a", live, "v2")
        result = apache.run("promote", "a")
    assert result.ok, result.stderr
    assert get(live, "a") == (200, "v2")


def test_a_fifo_planted_as_the_lock_fails_the_step_at_once(apache, live):
    lock = apache.dir / "sites-available" / ".deployer-apache.lock"
    lock.unlink()
    os.mkfifo(lock)
    apache.write_next("a", live, "v2")
    started = time.monotonic()
    result = apache.run("promote", "a")
    assert not result.ok and "is not a regular file" in result.stderr
    assert time.monotonic() - started < 10 and get(live, "a") == (200, "v1")
