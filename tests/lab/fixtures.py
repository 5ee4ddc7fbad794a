"""pytest fixtures for the lab. Import them where needed:

    from tests.lab.fixtures import lab, lab_session, vpn  # noqa: F401

`lab` is one lab per test session (hosts: env DEPLOYER_LAB_HOSTS, default 2),
brought up on first use; `vpn` connects the runner to it for one test.
If another process (another test run) has a lab up, the session waits for
it, at most DEPLOYER_LAB_WAIT seconds (default 900).
Mark such tests `@pytest.mark.lab`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from deployer.run import relay
from tests.conftest import REPO, tree_digest, wait_until

from .lab import Lab, VpnClient, up

# A lab that another test run owns is waited for, this long, then it fails:
# only one lab fits on a machine.
LAB_WAIT = float(os.environ.get("DEPLOYER_LAB_WAIT", "900"))

# The session's lab hangs off pytest's config, not this module, so that one
# lab serves even if this module is imported under two names
# (tests.lab.fixtures and lab.fixtures, depending on rootdir and sys.path).
_ATTR = "_deployer_lab_session"


class LabSession:
    """Holds the session's lab; a test that needs the machine to itself (or
    a bigger lab) can release it, and the next `get` brings a new one up."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.lab: Lab | None = None
        self._n = 0

    def get(self, hosts: int | None = None) -> Lab:
        """A lab of DEPLOYER_LAB_HOSTS hosts, or of `hosts` if that is more.
        Without `hosts`, a bigger lab that a test asked for goes: every deploy
        of the tests after it would be slower for it (CI's time)."""
        default = int(os.environ.get("DEPLOYER_LAB_HOSTS", "2"))
        want = max(hosts or 0, default)
        if self.lab is not None and (len(self.lab.hosts) < want or hosts is None and len(self.lab.hosts) > want):
            self.release()
        if self.lab is None:
            self._n += 1
            self.lab = up(self.base / f"lab{self._n}", want, wait=LAB_WAIT)
        # Each test starts with no site enabled: every instance that earlier
        # tests left would have its mod_wsgi daemons started again, and its
        # app loaded, by each reload of this test's deploys (a deploy took
        # 2.6 s after the first tests of a file, 9.5 s after fifteen). The
        # next reload stops their daemons; their files stay.
        # A deploy killed mid-switch leaves its own staging directory here too.
        for h in self.lab.hosts:
            for site in h.path("/etc/apache2/sites-enabled").iterdir():
                if site.is_dir() and not site.is_symlink():
                    shutil.rmtree(site)
                else:
                    site.unlink()
        return self.lab

    def release(self) -> None:
        if self.lab is not None:
            lab, self.lab = self.lab, None
            lab.down()


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")


@pytest.fixture(scope="session")
def lab_session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSession]:
    _require_root()
    existing = getattr(request.config, _ATTR, None)
    if existing is not None:
        yield existing
        return
    session = LabSession(tmp_path_factory.mktemp("deployer-lab"))
    setattr(request.config, _ATTR, session)
    try:
        yield session
    finally:
        session.release()
        delattr(request.config, _ATTR)


@pytest.fixture
def lab(lab_session: LabSession) -> Lab:
    return lab_session.get()


@pytest.fixture
def vpn(lab: Lab, tmp_path: Path) -> Iterator[VpnClient]:
    with lab.vpn_client(log=tmp_path / "openvpn-client.log") as client:
        yield client


# What a lab test deploys with, and how it reads the result.

# SIGUSR1 dumps every thread's stack to stderr: a deploy that overruns its
# test's limit says where it waits (see `_run`) instead of only "timed out".
DEPLOY = [sys.executable, "-c",
          "import faulthandler, runpy, signal; faulthandler.register(signal.SIGUSR1, all_threads=True); "
          "runpy.run_module('deployer', run_name='__main__', alter_sys=True)"]
OVERRUN_GRACE = 60


def _run(args: list[str], timeout: float, lab: Lab) -> subprocess.CompletedProcess:
    """Run a deploy; past `timeout`, dump its stacks and what runs on each
    host, then SIGTERM it (its own undo runs, so the lab stays usable by the
    next tests) and fail with those and the last events."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        hosts = "\n".join(f"web{i}:\n" + lab.run(i, "ps -eo pid,ppid,etimes,args", check=False).stdout[-3000:]
                          for i in range(len(lab.hosts)))
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1)
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=OVERRUN_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        tail = "\n".join(out.splitlines()[-30:])
        what = " ".join(args[len(DEPLOY):])
        pytest.fail(f"deploy {what} overran {timeout} s; last events:\n{tail}\nstderr:\n{err}\n"
                    f"on the hosts then:\n{hosts}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


class Site:
    """A checkout of the example app and a targets.yaml for the lab."""

    def __init__(self, lab, tmp: Path):
        self.lab, self.tmp = lab, tmp
        self.app = tmp / "app"
        shutil.copytree(REPO / "examples" / "djangoapp", self.app,
                        ignore=shutil.ignore_patterns("__pycache__"))
        # Incompressible, so that the artifact is past relay.MIN_SIZE and the
        # other hosts read it from the first one, as for any real-sized app.
        (self.app / "static").mkdir(exist_ok=True)
        (self.app / "static" / "ballast.bin").write_bytes(os.urandom(relay.MIN_SIZE + 200_000))
        self.targets = tmp / "targets.yaml"
        self.write()

    def write(self, **changes) -> None:
        # migrate is left to the real default, `python manage.py migrate --noinput`.
        self.targets.write_text(yaml.safe_dump(self.lab.targets(self.app, **changes)))

    def deploy(self, name: str, *extra: str) -> tuple[int, list[dict]]:
        proc = _run([*DEPLOY, name, f"{name}.example.test", "--targets", str(self.targets),
                     "--output", "json", *extra], 300, self.lab)
        events = [json.loads(line) for line in proc.stdout.splitlines()]
        assert proc.stderr == "" or proc.returncode != 0, proc.stderr
        return proc.returncode, events

    def rollback(self, name: str) -> tuple[int, list[dict]]:
        proc = subprocess.run(
            [DEPLOY[0], "-m", "deployer.cli.manage", "rollback", name, "--targets", str(self.targets),
             "--output", "json"], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]

    def deploy_and(self, name: str, ready, act, timeout: float = 60) -> tuple[int, list[dict], str]:
        """Start a deploy, wait until ready(), then act(proc): send a signal, cut a link."""
        proc = subprocess.Popen(
            [*DEPLOY, name, f"{name}.example.test", "--targets", str(self.targets), "--output", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:
            wait_until(ready, proc)
            act(proc)
            out, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        return proc.returncode, [json.loads(line) for line in out.splitlines()], err

    def hosts_digest(self) -> list[dict]:
        # /root/.ssh: the relay's one-time key must be gone, whatever happened.
        return [{d: tree_digest(h.path(d)) for d in ("/var/www", "/etc/apache2", "/root/.ssh")}
                for h in self.lab.hosts]

    def health(self, i: int, name: str) -> dict:
        with self.lab.vpn_client(log=self.tmp / f"check-{i}.log"):
            status, _, body = self.lab.http_get(i, "/health", host=f"{name}.example.test")
        assert status == 200, body
        return json.loads(body)


@pytest.fixture
def site(lab, tmp_path):
    return Site(lab, tmp_path)


def error_of(events: list[dict]) -> str:
    return events[-1]["error"] or ""


def release_of(events: list[dict]) -> str:
    return events[0]["release"]


def assert_vpn_down(lab) -> None:
    """No tunnel route left and no OpenVPN client of ours still running."""
    with pytest.raises(OSError):
        socket.create_connection((lab.addresses[0], 22), timeout=2).close()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # deployer's own client (openvpn --cd DIR --config FILE); the lab's checking client adds --log.
        ours = cmdline[:1] == [b"openvpn"] and str(lab.client_ovpn).encode() in cmdline
        assert not ours or b"--log" in cmdline, pid
