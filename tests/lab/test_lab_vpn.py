"""Back-to-back and simultaneous runs get their tunnel, through the lab's
multi-client VPN server and through a point-to-point one (one peer at a
time, as a small NAT/VPN host may run it): deploys of alternating instances
one after the other and pairs started at the same moment, with and without
a linger; a lingering tunnel whose runs were all killed closes by itself; a
start that fails (OpenVPN exits, or hangs) is started again; runs that
start together start one client.

The client config is the lab's without explicit-exit-notify, as many a
user's is: a client that leaves says nothing to the server, the case that
made back-to-back deploys through a point-to-point server fail (every
second one, `VPN not up after 30s`). How many runs: DEPLOYER_LAB_VPN_RUNS,
"BACK_TO_BACK,PAIRS" per server and linger (default "3,1", for CI's time:
a-b-a back to back, then a pair; the issue's count is "20,10")."""

# Fixtures are imported, so test parameters "redefine" them.
# ruff: noqa: F811

import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from deployer import vpn
from deployer.vpn import state as vpn_state
from tests.conftest import REPO
from tests.lab.fixtures import DEPLOY, Site, assert_vpn_down, error_of, lab, lab_session, site  # noqa: F401

pytestmark = pytest.mark.lab

BACK_TO_BACK, PAIRS = (int(n) for n in os.environ.get("DEPLOYER_LAB_VPN_RUNS", "3,1").split(","))
NAMES = ("alpha", "demo-x")
PEER = "Peer Connection Initiated"  # the server's line for each client session


def quiet_client(lab, folder: Path) -> Path:
    """The lab's client config without explicit-exit-notify."""
    lines = lab.client_ovpn.read_text().splitlines(keepends=True)
    path = folder / "quiet-client.ovpn"
    path.write_text("".join(line for line in lines if not line.startswith("explicit-exit-notify")))
    path.chmod(0o600)
    return path


@pytest.fixture
def server(request, lab):
    if request.param == "point-to-point":
        with lab.point_to_point_vpn():
            yield "point-to-point"
    else:
        yield "multi-client"


def sessions(lab) -> int:
    """Client sessions the VPN server has begun since it started."""
    return lab.vpn_server_log.read_text(errors="replace").count(PEER)


def openvpn_clients(config: Path) -> list[int]:
    """The pids of the OpenVPN clients running on `config`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"openvpn") and str(config).encode() in argv and vpn_state.alive(int(pid)):
            found.append(int(pid))
    return found


def closes_within(config: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while openvpn_clients(config):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def deploy_together(site: Site, names) -> list[tuple[int, list[dict], str]]:
    """Deploys of `names` started at the same moment; (code, events, stderr) of each."""
    procs = [subprocess.Popen([*DEPLOY, n, f"{n}.example.test", "--targets", str(site.targets),
                               "--output", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for n in names]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        results.append((proc.returncode, [json.loads(line) for line in out.splitlines()], err))
    return results


def vpn_said(events: list[dict]) -> str:
    return next(e["stdout"] for e in events if e["event"] == "step_finished" and e["stage"] == "vpn")


# The multi-client server with no linger is every other lab test's. The
# point-to-point server's hazard is a tunnel that closes and opens again
# between runs (linger 0); a linger keeps one tunnel for the whole series,
# the same on either server, so it is run on one (CI's time).
CASES = [("point-to-point", 0), ("multi-client", 5)]


@pytest.mark.parametrize(("server", "linger"), CASES, indirect=["server"],
                         ids=[f"{s}-linger-{n}" for s, n in CASES])
def test_back_to_back_and_paired_deploys_all_get_their_tunnel(site, server, linger):
    config = quiet_client(site.lab, site.tmp)
    site.write(vpn={"kind": "openvpn", "config": str(config), "timeout": 30, "linger": linger})
    before = sessions(site.lab)
    failed, said = [], set()
    for i in range(BACK_TO_BACK):
        code, events = site.deploy(NAMES[i % 2])
        if code != 0:
            failed.append(f"back-to-back {i} ({NAMES[i % 2]}): {error_of(events)}")
        said.add(vpn_said(events))
    for i in range(PAIRS):
        for name, (code, events, err) in zip(NAMES, deploy_together(site, NAMES), strict=True):
            if code != 0:
                failed.append(f"pair {i} ({name}): {error_of(events) or err}")
    assert failed == [], "\n".join(failed)
    if linger:
        # One start for the whole series: each run came within the linger.
        assert sessions(site.lab) - before == 1
        assert all(f"it stays up {linger}s after the last run" in s for s in said), said
        assert closes_within(config, linger + 15), "the lingering tunnel did not close by itself"
    else:
        assert all("closed when the last run that uses it ends" in s for s in said), said
        assert not openvpn_clients(config)
    assert_vpn_down(site.lab)


RUNNER = """
import sys, time
from deployer.vpn import OpenVpnTunnel
config, registry, linger, go = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
while not __import__("os").path.exists(go):
    time.sleep(0.001)
t = OpenVpnTunnel(config, timeout=30, registry=registry, linger=linger, probe="198.18.1.10")
t.open()
print("up", t.shared, flush=True)
sys.stdin.readline()
t.close()
"""


def runners(config: Path, registry: Path, linger: float, go: Path, n: int) -> list[subprocess.Popen]:
    """n runs of the tunnel, each in a process of its own, that open it once
    `go` exists, say so, and close it at a line on their stdin."""
    return [subprocess.Popen([sys.executable, "-c", textwrap.dedent(RUNNER), str(config), str(registry),
                              str(linger), str(go)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=REPO) for _ in range(n)]


def test_runs_that_start_together_start_one_client(lab, tmp_path):
    config, go = quiet_client(lab, tmp_path), tmp_path / "go"
    procs = runners(config, tmp_path / "registry", 0, go, 6)
    before = sessions(lab)
    try:
        go.touch()
        said, most = all_up(procs, config)
        assert sorted(said) == ["up False"] + ["up True"] * 5
        assert most == 1 and len(openvpn_clients(config)) == 1
        assert sessions(lab) - before == 1
        for proc in procs:
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.wait(30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert not openvpn_clients(config), "the last run closes the tunnel (linger 0) before it returns"


def all_up(procs: list[subprocess.Popen], config: Path, seconds: float = 60) -> tuple[list[str], int]:
    """What each run said once its tunnel was up, and the most OpenVPN
    clients of `config` seen at once meanwhile (looked at every few ms)."""
    said: dict[int, str] = {}
    most, deadline = 0, time.monotonic() + seconds
    while len(said) < len(procs):
        assert time.monotonic() < deadline, f"not up after {seconds}s: {said}"
        most = max(most, len(openvpn_clients(config)))
        for i, proc in enumerate(procs):
            if i not in said and select.select([proc.stdout], [], [], 0)[0]:
                said[i] = proc.stdout.readline().strip()
                assert said[i], f"a run ended: {proc.wait()}"
    return list(said.values()), most


def test_a_lingering_tunnel_closes_by_itself_when_every_run_that_used_it_was_killed(lab, tmp_path):
    # TeamCity's last word is SIGKILL: no run's teardown ran. The keeper
    # closes the tunnel by itself once nobody has used it for the linger.
    config, go = quiet_client(lab, tmp_path), tmp_path / "go"
    procs = runners(config, tmp_path / "registry", 8, go, 2)
    try:
        go.touch()
        assert sorted(all_up(procs, config)[0]) == ["up False", "up True"]
        for proc in procs:
            proc.kill()
            proc.wait(10)
        assert openvpn_clients(config), "no linger: the tunnel closed with its runs"
        socket.create_connection((lab.addresses[0], 22), timeout=5).close()  # still routed, for a next run
        assert closes_within(config, 8 + 15), "the tunnel outlived its linger"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    # Its keeper removes its state once OpenVPN is gone, and exits.
    deadline = time.monotonic() + 10
    while list((tmp_path / "registry").glob("tunnel-*.state")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list((tmp_path / "registry").glob("tunnel-*.state"))
    assert_vpn_down(lab)


def test_a_start_that_exits_is_started_again_and_comes_up(lab, tmp_path):
    # OpenVPN gives up after one try while the server is away, and exits.
    config = quiet_client(lab, tmp_path)
    config.write_text(config.read_text().replace("server-poll-timeout 5\n", "server-poll-timeout 2\n"
                                                 "connect-retry-max 1\n"))
    tunnel = vpn.OpenVpnTunnel(str(config), timeout=30, registry=str(tmp_path / "registry"))
    log = opened_meanwhile(lab, tunnel, lambda: "deployer: openvpn exited (code 1)" in vpn_state.read(tunnel.log))
    assert "deployer: starting openvpn (start 2 of this keeper)" in log, log
    assert not openvpn_clients(config)


def test_a_start_that_hangs_is_killed_and_started_again(lab, tmp_path):
    # A start that does not come up and does not exit (here, stopped with
    # SIGSTOP: it does not even hear SIGTERM) is killed after a third of
    # the timeout, by its pid, and the next start comes up.
    config = quiet_client(lab, tmp_path)
    tunnel = vpn.OpenVpnTunnel(str(config), timeout=30, registry=str(tmp_path / "registry"))
    hung: list[int] = []

    def hang_the_first() -> bool:
        state = vpn_state.keeper_state(tunnel.base)
        if state and state.openvpn and not hung:
            os.kill(state.openvpn, signal.SIGSTOP)
            hung.append(state.openvpn)
        return bool(hung)

    log = opened_meanwhile(lab, tunnel, hang_the_first)
    assert "deployer: openvpn not up 10s after its start: stopped, to start it again" in log, log
    assert "deployer: openvpn stopped (code -9)" in log and "(start 2 of this keeper)" in log, log
    assert not vpn_state.alive(hung[0]) and not openvpn_clients(config)


def opened_meanwhile(lab, tunnel, ready) -> str:
    """The tunnel opened, the VPN server away until ready() holds; its log."""
    opened: list[BaseException | None] = []
    lab.stop_vpn_server()
    try:
        opening = threading.Thread(target=lambda: opened.append(_outcome(tunnel.open)))
        opening.start()
        deadline = time.monotonic() + 20
        while not ready() and opening.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        lab.start_vpn_server()
        opening.join(tunnel.timeout + 10)
        log = vpn_state.read(tunnel.log)
    finally:
        lab.start_vpn_server()
        tunnel.close()
    assert opened == [None], log
    return log


def _outcome(call) -> BaseException | None:
    try:
        call()
    except BaseException as e:  # noqa: BLE001 - the test reads it
        return e
    return None
