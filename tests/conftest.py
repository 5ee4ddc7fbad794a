"""Shared fixtures: a real OpenSSH server on 127.0.0.1, and tree hashing."""

import hashlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from deployer.cli.deploy import main

REPO = Path(__file__).resolve().parent.parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def default_template_with(path: Path, tail: str) -> Path:
    """Write templates/default_template with `tail` at its end to `path`:
    a vhost that differs from the default's (Apache reloads), or adds lines."""
    path.write_text((REPO / "templates" / "default_template").read_text() + tail)
    return path


def deploy_process(name: str, hostname: str, targets: str | Path) -> subprocess.Popen:
    """`deploy` in a process of its own, to be signalled; plain output on its stdout."""
    return subprocess.Popen([sys.executable, "-m", "deployer", name, hostname, "--targets", str(targets),
                             "--output", "plain"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)


def ignores_term(started: Path, done: Path) -> str:
    """A migrate that ignores SIGTERM: it writes its pid to `started` (whole,
    by rename), then would create `done` 15 s later unless it is killed."""
    return f"trap '' TERM INT; echo $$ > {started}.tmp && mv {started}.tmp {started}; sleep 15; touch {done}"


def tree_digest(root: Path, history: bool = False) -> dict[str, str]:
    """Every path under root with its type, mode and content hash (or link
    target). Without `history`, an instance's history and the directory
    that holds it (<name>.deployer/) are left out: every run that reaches a
    host adds its line, failed or not; a lock left there still shows."""
    out = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if not history and (name.endswith(".deployer") and path.is_dir() and not path.is_symlink()
                                or name == "history" and dirpath.endswith(".deployer")):
                continue
            if path.is_symlink():
                out[rel] = f"link {os.readlink(path)}"
            elif path.is_dir():
                out[rel] = f"dir {st.st_mode:o}"
            elif not path.is_file():
                out[rel] = f"special {st.st_mode:o}"  # a FIFO: reading it would block
            else:
                out[rel] = f"file {st.st_mode:o} {hashlib.sha256(path.read_bytes()).hexdigest()}"
    return out


def process_running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has ended; only its exit status is left)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(ready, proc: subprocess.Popen, seconds: float = 60.0) -> None:
    """Until ready() holds; fails if `proc` (a deploy) ends first or the time runs out."""
    deadline = time.monotonic() + seconds
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


TRACING_TEMPLATE = "ServerName <<HOSTNAME>>\n# the code: <<DEPLOY_PATH>>\n"


def armed_local_target(root: Path, template: str = TRACING_TEMPLATE) -> Path:
    """A `transport: local` catch-all whose every stage would leave a trace under
    root (HOOKED, MIGRATED, RESTARTED, www/, apache2/): refused input must leave none."""
    (root / "app").mkdir()
    (root / "app" / "manage.py").write_text("print('hi')\n")
    (root / "vhost.tmpl").write_text(template)
    targets = root / "targets.yaml"
    targets.write_text(f"""\
defaults:
  transport: local
  deploy_root: www
  apache: {{dir: apache2, ctl: builtin, port: {free_port()}}}
  migrate: touch {root}/MIGRATED
  package: {{source: app}}
  template: vhost.tmpl
  pipeline: [package, upload, render, migrate, restart]
  hooks:
    before: {{package: [{{run: touch {root}/HOOKED, on: local}}]}}
    after: {{restart: [{{run: touch {root}/RESTARTED, on: all}}]}}
targets:
  "*": {{}}
""")
    return targets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@dataclass
class Sshd:
    port: int
    client_key: Path
    known_hosts: Path
    host_pub: Path
    log: Path
    proc: subprocess.Popen

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_sshd(d: Path, extra: str = "") -> Sshd:
    """A real sshd on 127.0.0.1 and a random port, its files in `d`: own host
    key, own authorized_keys, root login by key only; `extra` is added to its
    config (a ForceCommand of a hostile host, say). Stop it with .stop()."""
    if not os.path.exists(SSHD) or os.geteuid() != 0:
        pytest.skip("needs root and openssh-server (run .ci/run)")
    os.chmod(d, 0o755)
    _keygen(d / "host_ed25519")
    _keygen(d / "client_ed25519")
    auth = d / "authorized_keys"
    shutil.copy(d / "client_ed25519.pub", auth)
    port = _free_port()
    config = d / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\n"
        f"AuthorizedKeysFile {auth}\nPidFile {d}/sshd.pid\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n" + extra
    )
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    log = d / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start: {log.read_text()}")
            time.sleep(0.05)
    host_pub = d / "host_ed25519.pub"
    known_hosts = d / "known_hosts"
    key_type, key_b64 = host_pub.read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    return Sshd(port, d / "client_ed25519", known_hosts, host_pub, log, proc)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd (start_sshd) for the whole session; stopped by pid at its end."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


# The sshd's "web host" is this machine: its Apache is deployer's builtin
# local one (remote/local-apache2ctl), on a free loopback port, run for real.
LOCAL_APACHE_CTL = REPO / "deployer" / "remote" / "local-apache2ctl"


# Stops still going (Apache takes 1.5-2 s to stop: its parent polls its
# children at growing intervals): each test's go on while the next test
# runs, and all are waited for at the session's end.
_STOPPING: list[subprocess.Popen] = []
# The ports a test asks for by number (README's first command, `init`'s
# survey from 8480 up): an Apache on one of these stops before the next test.
_FIXED_PORTS = re.compile(r"^Listen 127\.0\.0\.1:84[89][0-9]$", re.M)


def stop_local_apaches(under: Path, wait: bool = True) -> None:
    """Stop every builtin local Apache whose folder is under `under`; without
    `wait`, in the background unless it listens on a fixed port."""
    for conf in under.glob("**/apache2.conf"):
        text = conf.read_text(errors="replace")
        if text.startswith("# Written by deployer's local-apache2ctl"):
            stop = subprocess.Popen(["/bin/sh", str(LOCAL_APACHE_CTL), str(conf.parent), "stop"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if wait or _FIXED_PORTS.search(text):
                stop.wait(60)
            else:
                _STOPPING.append(stop)


@pytest.fixture(autouse=True)
def _stop_local_apaches(request):
    """After each test, every builtin local Apache a deploy of it started in
    its tmp_path is stopped; those of fixtures that outlive a test, at the end."""
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is not None:
        stop_local_apaches(tmp, wait=False)


@pytest.fixture(autouse=True, scope="session")
def _stop_every_local_apache(tmp_path_factory):
    yield
    for stop in _STOPPING:
        stop.wait(60)
    stop_local_apaches(tmp_path_factory.getbasetemp())


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
    port = free_port()  # the vhost's: <<HTTP_PORT>>
    targets = {
        "targets": {
            "alpha": {
                "hosts": [{"address": "127.0.0.1", "port": sshd.port, "user": "root"}],
                "identity_file": str(sshd.client_key),
                "known_hosts": str(sshd.known_hosts),
                "deploy_root": str(host / "www"),
                "apache": {"dir": str(host / "apache2"), "port": port,
                           "ctl": f"/bin/sh {LOCAL_APACHE_CTL} {host / 'apache2'}"},
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
        http_port = port

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

        def history(self) -> list[list[str]]:
            """The instance's history, a list of fields a line ([] if none)."""
            path = host / "www" / "alpha.deployer" / "history"
            return [line.split("\t") for line in path.read_text().splitlines()] if path.exists() else []

        def lock(self) -> Path:
            return host / "www" / "alpha.deployer" / "lock"

    return Site()


def killed_run(run_id: str) -> None:
    """This machine's record of run `run_id` (run/records.py) as a run SIGKILLed
    would leave it: there, and held by nobody."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from deployer.run import records;"
                               " records.RunLock(sys.argv[1]).hold(); print('held', flush=True); time.sleep(60)",
                               run_id], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
    finally:
        holder.kill()
        holder.wait(10)


def next_second() -> None:
    """Wait for the clock's next second. A release's name orders it by the
    second its run began: two deploys of one instance in one second (a local
    one takes well under that) sort by their hash instead, and a test that
    reads "newer" and "older" from the names would depend on the hash."""
    time.sleep(1 - time.time() % 1)


SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-django, as on a fresh machine


def _has_django() -> bool:
    return subprocess.run([SYSTEM_PYTHON, "-c", "import django"], capture_output=True).returncode == 0


# A site served on this machine by the local target's own Apache.
needs_local_site = pytest.mark.skipif(
    not os.path.exists(SYSTEM_PYTHON) or not _has_django() or not shutil.which("apache2ctl", path="/usr/sbin"),
    reason="needs Debian's python3-django and apache2 (run .ci/run)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
