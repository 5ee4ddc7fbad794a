"""One run of an instance at a time, and a failure after the switch undone:
whole deploys over a real sshd on 127.0.0.1, checked on disk."""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import (
    LOCAL_APACHE_CTL,
    default_template_with,
    deploy_process,
    next_second,
    tree_digest,
    wait_until,
)

pytestmark = pytest.mark.sshd


def _plant_lock(site, who="deploy of release X by someone@elsewhere (pid 1) (run feedfacefeedface)") -> None:
    site.lock().mkdir(parents=True)
    (site.lock() / "owner").write_text(f"feedfacefeedface\n{who}\n")


def _failing_graceful(site, tmp_path, fails: str) -> Path:
    """deployer's local Apache, whose graceful logs the live release, then
    fails while the file `fails` exists (once, if it says so); and a vhost
    the next deploy changes."""
    log = tmp_path / "graceful.log"
    ctl = tmp_path / "ctl"
    ctl.write_text(f"""#!/bin/sh
if [ "$2" = graceful ]; then
    echo "$(readlink {site.live()})" >> {log}
    if [ -e {fails} ]; then
        case $(cat {fails}) in
        once) rm {fails} ;;
        slow) rm {fails}; touch {fails}.started; exec sleep 20 ;;
        esac
        echo "graceful: could not bind to port 80" >&2
        exit 1
    fi
fi
exec /bin/sh {LOCAL_APACHE_CTL} "$@"
""")
    ctl.chmod(0o755)
    # A vhost that differs from the one deployed: Apache reloads (a deploy
    # of code only would restart the site's mod_wsgi daemons instead).
    template = default_template_with(tmp_path / "changed_template", "# changed\n")
    site.edit(apache={"dir": str(site.root / "apache2"), "ctl": f"{ctl} {site.root / 'apache2'}",
                      "port": site.http_port}, template=str(template))
    return log


def test_a_run_records_its_outcome_in_the_history_and_leaves_no_lock(site):
    assert site.deploy()[0] == 0
    site.edit(migrate="exit 4")
    (site.source / "manage.py").write_text("print('new')\n")
    assert site.deploy()[0] == 1
    history = site.history()
    assert [h[1:3] for h in history] == [["deploy", "done"], ["deploy", "failed, undone"]]
    assert all(h[4] == "alpha.example.test" and "@" in h[5] for h in history)
    assert not site.lock().exists()


def test_a_held_lock_fails_the_run_at_once_says_who_holds_it_and_is_left_alone(site):
    assert site.deploy()[0] == 0
    _plant_lock(site)
    before = tree_digest(site.root, history=True)
    (site.source / "manage.py").write_text("print('new')\n")
    started = time.monotonic()
    code, out = site.deploy()
    assert code == 1, out
    assert time.monotonic() - started < 20
    assert "locked by deploy of release X by someone@elsewhere (pid 1)" in out
    assert "--lock-wait" in out and "deployer unlock alpha" in out
    assert out.rstrip().endswith("nothing was changed on any host")
    # Not even a line in its history: the run never held the instance.
    assert tree_digest(site.root, history=True) == before


def test_lock_wait_waits_for_the_holder_to_finish(site):
    _plant_lock(site)

    def release():
        time.sleep(2)
        (site.lock() / "owner").unlink()
        site.lock().rmdir()
    t = threading.Thread(target=release)
    t.start()
    code, out = site.deploy("--lock-wait", "30")
    t.join()
    assert code == 0, out
    assert not site.lock().exists()


def test_a_second_deploy_of_the_instance_cannot_undo_the_first(site, tmp_path):
    # Reproduced before locks: B went live while A migrated, then A's undo
    # removed the vhost B's release needed.
    started = tmp_path / "started"
    site.edit(migrate=f"touch {started}; sleep 3; exit 1")
    a = deploy_process("alpha", "alpha.example.test", site.targets_file)
    try:
        wait_until(started.exists, a, 30)
        site.edit(migrate="true")
        (site.source / "manage.py").write_text("print('b')\n")
        code, out = site.deploy()
        assert code == 1 and "locked by deploy of release" in out, out
        out_a, _ = a.communicate(timeout=60)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 1, out_a
    assert not site.live().exists()
    assert not site.lock().exists()
    # And the next run, unhindered, goes live.
    assert site.deploy()[0] == 0
    assert site.live().is_symlink()


def test_a_failed_graceful_after_the_switch_puts_every_host_back_and_reloads(site, tmp_path):
    assert site.deploy()[0] == 0
    old = os.readlink(site.live())
    old_vhost = (site.root / "apache2" / "sites-available" / "alpha.conf").read_bytes()
    fails = tmp_path / "fail"
    log = _failing_graceful(site, tmp_path, fails)
    (site.source / "manage.py").write_text("print('new')\n")
    fails.write_text("once")
    code, out = site.deploy("--var", "EXTRA=1")
    assert code == 1, out
    assert "could not bind to port 80" in out
    assert os.readlink(site.live()) == old
    assert (site.root / "apache2" / "sites-available" / "alpha.conf").read_bytes() == old_vhost
    new = [p for p in (site.root / "www" / "alpha.releases").iterdir() if str(p) != old]
    assert new == []
    # graceful ran in the new release, then again once the old one was back.
    runs = log.read_text().split()
    assert len(runs) == 2 and runs[0] != old and runs[1] == old
    assert (f"every host's files are as they were before the run: release {Path(old).name} is live; NOT undone:"
            " migrate: echo") in out.splitlines()[-1]
    assert site.history()[-1][2] == "failed, undone"


def test_the_last_line_of_a_run_undone_after_migrate_says_the_database_was_not_rolled_back(site):
    assert site.deploy()[0] == 0
    old = Path(os.readlink(site.live())).name
    django = ("echo 'Running migrations:'; echo '  Applying hello.0001_initial... OK';"
              " echo '  Applying x.0002_b... OK'")
    site.edit(migrate=django, hooks={"after": {"migrate": "exit 4"}})
    (site.source / "manage.py").write_text("print('new')\n")
    code, out = site.deploy()
    assert code == 1, out
    last = out.splitlines()[-1]
    assert last.startswith(f"every host's files are as they were before the run: release {old} is live;"
                           " NOT undone:")
    assert "and the database is not rolled back: applied hello.0001_initial, x.0002_b" in last
    assert "after migrate: exit 4 ran on" in last and "what it changed stays" in last
    # A hook before the upload is a command of the user's too.
    site.edit(migrate=None, hooks={"before": {"upload": "true"}}, health={"path": "/", "port": 1, "timeout": 1})
    (site.source / "manage.py").write_text("print('newer')\n")
    code, out = site.deploy()
    assert code == 1 and "NOT undone: before upload: true ran on" in out.splitlines()[-1]


def test_sigterm_during_graceful_after_the_switch_undoes_and_says_so(site, tmp_path):
    assert site.deploy()[0] == 0
    old = os.readlink(site.live())
    fails = tmp_path / "fail"
    log = _failing_graceful(site, tmp_path, fails)
    (site.source / "manage.py").write_text("print('new')\n")
    fails.write_text("slow")
    proc = deploy_process("alpha", "alpha.example.test", site.targets_file)
    try:
        wait_until(Path(f"{fails}.started").exists, proc, 60)
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "apache: test the next vhost, make it live, reload and wait until loaded [127.0.0.1" in out  # shown
    assert os.readlink(site.live()) == old
    assert log.read_text().split()[-1] == old  # Apache read the old config again
    assert f"before the run: release {Path(old).name} is live; NOT undone: migrate" in out.splitlines()[-1]
    assert site.history()[-1][2] == "interrupted, undone"
    assert not site.lock().exists()


def test_an_undo_that_cannot_complete_exits_3_and_names_the_host(site, tmp_path):
    fails = tmp_path / "fail"
    assert site.deploy()[0] == 0
    _failing_graceful(site, tmp_path, fails)
    fails.touch()  # graceful fails, and so does the reload after the undo
    (site.source / "manage.py").write_text("print('new')\n")
    code, out = site.deploy()
    assert code == 3, out
    assert "THE UNDO DID NOT COMPLETE; these hosts need a person:" in out
    assert f"127.0.0.1:{site_port(site)}: then: apache: configtest, reload and wait until loaded:" in out
    assert site.history()[-1][2] == "undo incomplete"
    assert not site.lock().exists()


def site_port(site) -> int:
    import yaml
    return yaml.safe_load(site.targets_file.read_text())["targets"]["alpha"]["hosts"][0]["port"]


def test_old_releases_are_pruned_after_success_never_the_live_or_the_previous(site):
    site.edit(keep_releases=2)
    made = []
    for i in range(4):
        next_second()
        (site.source / "manage.py").write_text(f"print({i})\n")
        code, out = site.deploy()
        assert code == 0, out
        made.append(Path(os.readlink(site.live())).name)
    releases = sorted(p.name for p in (site.root / "www" / "alpha.releases").iterdir())
    assert releases == made[-2:]
    # A failed run prunes nothing.
    site.edit(keep_releases=2, migrate="exit 1")
    (site.source / "manage.py").write_text("print('x')\n")
    assert site.deploy()[0] == 1
    assert sorted(p.name for p in (site.root / "www" / "alpha.releases").iterdir()) == made[-2:]


@pytest.fixture
def http_app():
    """An HTTP server on 127.0.0.1 standing in for the site behind Apache:
    /health answers `status` (settable); every Host header it saw is kept."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class App:
        status = 200
        redirect = False  # plain HTTP gets a 301 to https://
        hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            App.hosts.append(self.headers.get("Host", ""))
            if App.redirect and self.headers.get("X-Forwarded-Proto") != "https":
                # As Django's SECURE_SSL_REDIRECT behind a proxy that ends TLS.
                self.send_response(301)
                self.send_header("Location", f"https://{self.headers.get('Host')}{self.path}")
            else:
                self.send_response(App.status if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"body\n")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    App.port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield App
    server.shutdown()
    server.server_close()


def test_a_healthy_site_completes_the_deploy(site, http_app):
    site.edit(health={"path": "/health", "port": http_app.port, "timeout": 10})
    code, out = site.deploy()
    assert code == 0, out
    assert "health check: GET /health answers 200" in out
    assert set(http_app.hosts) == {"alpha.example.test"}


def test_a_failed_health_check_puts_every_host_back(site, http_app, tmp_path):
    assert site.deploy()[0] == 0
    old = os.readlink(site.live())
    site.edit(health={"path": "/health", "port": http_app.port, "timeout": 2})
    log = _failing_graceful(site, tmp_path, tmp_path / "never")
    http_app.status = 503
    (site.source / "manage.py").write_text("print('new')\n")
    started = time.monotonic()
    code, out = site.deploy()
    assert code == 1, out
    assert time.monotonic() - started < 60
    assert "did not answer 200 within 2 s" in out and "last: 503" in out
    assert os.readlink(site.live()) == old
    assert log.read_text().split()[-1] == old  # reloaded with the old release back
    assert site.history()[-1][2] == "failed, undone"


def test_a_redirect_fails_the_health_check_at_once_and_says_where_it_points(site, http_app):
    assert site.deploy()[0] == 0
    http_app.redirect = True
    site.edit(health={"path": "/health", "port": http_app.port, "timeout": 60})
    (site.source / "manage.py").write_text("print('new')\n")
    started = time.monotonic()
    code, out = site.deploy()
    assert code == 1, out
    assert "answered 301 Moved Permanently (Location: https://alpha.example.test/health)" in out
    assert "not 200, for 5 s; a 301 does not change by waiting" in out
    assert time.monotonic() - started < 40  # for 5 s, not for the 60 s its time allows
    assert 2 <= len(http_app.hosts) < 40


@pytest.mark.parametrize("health", [{"headers": {"X-Forwarded-Proto": "https"}}, {"status": [200, 301]}])
def test_a_health_check_sends_the_headers_and_accepts_the_statuses_it_is_given(site, http_app, health):
    http_app.redirect = True
    site.edit(health={"path": "/health", "port": http_app.port, "timeout": 10, **health})
    code, out = site.deploy()
    assert code == 0, out
    assert ("answers 200 or 301" if "status" in health else "answers 200") in out


def test_a_health_check_with_nothing_listening_fails_within_its_time(site, http_app):
    assert site.deploy()[0] == 0
    site.edit(health={"path": "/health", "port": 1, "timeout": 1})
    (site.source / "manage.py").write_text("print('new')\n")
    code, out = site.deploy()
    assert code == 1 and "ConnectionRefusedError" in out, out


def test_a_host_that_answers_a_byte_at_a_time_cannot_hold_the_health_check(tmp_path):
    # The socket's timeout bounds each read; the attempt has its own bound.
    import socket

    from deployer.run import health
    from deployer.steps import HealthCheck

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            server.settimeout(0.5)
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 100:
                    if stop.is_set():
                        break
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break
                    time.sleep(0.4)
    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    started = time.monotonic()
    try:
        step = HealthCheck("", port=server.getsockname()[1], path="/health", host_header="x.test", timeout=3)
        r = health.check(step, "127.0.0.1", threading.Event())
    finally:
        stop.set()
        t.join(5)
        server.close()
    assert not r.ok and "no whole answer within" in r.stderr
    assert time.monotonic() - started < 8


def test_lock_wait_takes_the_lock_anew_after_the_instance_was_destroyed_meanwhile(site):
    # What the deploy waited on (a destroy) removes the lock with the instance's state.
    _plant_lock(site)

    def destroyed():
        time.sleep(2)
        shutil.rmtree(site.lock().parent)
    t = threading.Thread(target=destroyed)
    t.start()
    code, out = site.deploy("--lock-wait", "30")
    t.join()
    assert code == 0, out
    assert site.live().is_symlink() and not site.lock().exists()


def test_a_closed_output_pipe_never_stops_a_deploy(site):
    """`deploy ... | head`: the reader goes after its lines (here, before the
    first); the deploy goes on to its end, and says nothing of the pipe."""
    proc = subprocess.Popen([sys.executable, "-m", "deployer", "alpha", "alpha.example.test", "--targets",
                             str(site.targets_file), "--output", "plain"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert err == b""
    assert site.live().is_symlink() and (site.live() / "manage.py").is_file()
    assert site.history()[-1][2] == "done"
