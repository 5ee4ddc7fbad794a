"""The vpn stage's failures that need no VPN server: OpenVPN's own words, nothing changed."""

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from deployer import vpn
from deployer.cli.deploy import main
from deployer.errors import StepFailed
from deployer.vpn import keeper as vpn_keeper
from deployer.vpn import state as vpn_state
from deployer.vpn import tunnel as vpn_tunnel
from tests.conftest import REPO, armed_local_target, tree_digest, wait_until
from tests.lab.lab import _cert, blackhole

pytestmark = pytest.mark.skipif(not shutil.which("openvpn"), reason="needs openvpn (run .ci/run)")


@pytest.mark.parametrize("config, words", [
    # Refused while parsing its options.
    ("client\nbogus-directive yes\n", "Unrecognized option"),
    # Refused when it checks the TLS settings.
    ("client\ndev tun\nremote 198.18.0.99 1194\nnobind\n", "You must define CA file"),
])
def test_openvpn_refusing_its_config_fails_the_deploy_with_its_message(tmp_path, config, words):
    targets = armed_local_target(tmp_path)
    (tmp_path / "bad.ovpn").write_text(config)
    text = targets.read_text().replace(
        "  pipeline: [package, upload,",
        "  vpn: {kind: openvpn, config: bad.ovpn, timeout: 5}\n  pipeline: [package, vpn, upload,")
    assert "bad.ovpn" in text
    targets.write_text(text)
    before = tree_digest(tmp_path)
    out = io.StringIO()
    code = main(["demo-acme", "demo-acme.example.com", "--targets", str(targets), "--output", "plain"],
                stdout=out)
    assert code == 1
    assert "openvpn exited (code 1) before the tunnel came up" in out.getvalue()
    assert words in out.getvalue()
    # The before-package hook ran (it is the first step); nothing after the VPN did.
    after = tree_digest(tmp_path)
    assert set(after) - set(before) == {"HOOKED"}


def test_openvpn_dies_with_a_deploy_killed_without_warning(tmp_path):
    # TeamCity escalates to SIGKILL: no teardown runs, and OpenVPN, in a
    # session of its own, used to stay up with its routes. Now its keeper
    # stops it once no deploy holds the tunnel.
    blackhole()  # it tries to reach a server in the lab's range: nothing may leave
    _, _, server = _cert(tmp_path, "server")
    crt, key, _ = _cert(tmp_path, "client")
    config = tmp_path / "client.ovpn"
    config.write_text(f"client\ndev tun\nproto udp\nremote 198.18.0.99 1194\nnobind\nconnect-retry 1 2\n"
                      f"peer-fingerprint {server}\n<cert>\n{crt}</cert>\n<key>\n{key}</key>\n")
    registry = tmp_path / "registry"
    runner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import threading, time
            from deployer.vpn import OpenVpnTunnel
            t = OpenVpnTunnel({str(config)!r}, timeout=60, registry={str(registry)!r})
            def say():
                while t.openvpn_pid is None:
                    time.sleep(0.01)
                print(t.openvpn_pid, flush=True)
            threading.Thread(target=say).start()
            t.open()
        """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    pid = None
    try:
        pid = int(runner.stdout.readline())
        log = next(registry.glob("tunnel-*.log"))
        wait_until(lambda: "TCP/UDP" in log.read_text(), runner)  # it is trying
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(10)
        # Its keeper sees nobody uses the tunnel any more, stops it, and
        # then removes its state and exits.
        deadline = time.monotonic() + 15
        while (_alive(pid) or list(registry.glob("tunnel-*.state"))) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "openvpn outlived the killed deploy"
        assert not list(registry.glob("tunnel-*.state"))
    finally:
        if runner.poll() is None:
            runner.kill()
        if pid and os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
            os.kill(pid, signal.SIGKILL)


# A Python without deployer installed: the keeper must still run ours.
BARE_PYTHON = "/usr/bin/python3"


@pytest.mark.parametrize("python", [sys.executable, BARE_PYTHON])
def test_the_keeper_imports_nothing_from_the_config_folder(tmp_path, monkeypatch, python):
    # The keeper used to be `python -m deployer.vpn` run in the config's
    # folder, which puts that folder first on sys.path: a checkout's
    # deployer/vpn.py beside client.ovpn ran as root. Now it runs isolated,
    # in /, and OpenVPN is given --cd, so the config's relative names still work.
    if python == BARE_PYTHON and subprocess.run([python, "-I", "-c", "import deployer"], cwd="/",
                                                capture_output=True).returncode == 0:
        pytest.skip(f"{python} has a deployer of its own")
    subprocess.run(["ip", "route", "add", "unreachable", "198.18.0.0/15"], capture_output=True)
    checkout = tmp_path / "checkout"
    planted = checkout / "deployer"
    planted.mkdir(parents=True)
    marker = tmp_path / "PLANTED-CODE-RAN"
    for name in ("__init__.py", "vpn.py"):
        (planted / name).write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    _, _, server = _cert(tmp_path, "server")
    _cert(checkout, "client")  # client.crt and client.key, named relatively below
    (checkout / "pass.txt").write_text("user\npassword\n")
    (checkout / "pass.txt").chmod(0o600)
    config = checkout / "client.ovpn"
    config.write_text(f"client\ndev tun\nproto udp\nremote 198.18.0.99 1194\nnobind\nconnect-retry 1 2\n"
                      f"peer-fingerprint {server}\ncert client.crt\nkey client.key\nauth-user-pass pass.txt\n")
    monkeypatch.setattr(vpn_keeper.sys, "executable", python)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    tunnel = vpn.OpenVpnTunnel(str(config), timeout=3, registry=str(tmp_path / "registry"))
    state = None
    try:
        with pytest.raises(StepFailed) as failed:
            tunnel.open()
        state = vpn_state.keeper_pids(tunnel.base)
        log = vpn_state.read(tunnel.log)
    finally:
        tunnel.close()
    assert not marker.exists(), marker.read_text()
    assert "VPN not up after 3s" in str(failed.value)  # our keeper ran, and OpenVPN found no server
    assert state is not None
    assert not any(_alive(pid) for pid in state), "the keeper or its OpenVPN outlived the deploy"
    # OpenVPN found the config's relative files and got as far as the network.
    assert "No such file" not in log and "UDPv4 link remote" in log, log


def test_openvpn_reads_relative_names_from_the_config_folder():
    assert vpn_keeper._openvpn_argv("/srv/ci/vpn/client.ovpn")[-4:] == [
        "--cd", "/srv/ci/vpn", "--config", "/srv/ci/vpn/client.ovpn"]


def _alive(pid: int) -> bool:
    return _state(pid) != "Z"


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "Z"


# -- starts that fail, and what is kept of them ---------------------------------------

def unreachable_client(tmp_path, extra: str = "") -> Path:
    """A client of a server in the lab's blackholed range: OpenVPN gets as far
    as the network, and no further."""
    blackhole()
    _, _, server = _cert(tmp_path, "server")
    crt, key, _ = _cert(tmp_path, "client")
    config = tmp_path / "client.ovpn"
    config.write_text(f"client\ndev tun\nproto udp\nremote 198.18.0.99 1194\nnobind\n{extra}"
                      f"peer-fingerprint {server}\n<cert>\n{crt}</cert>\n<key>\n{key}</key>\n")
    return config


def test_a_start_that_exits_is_started_again_until_the_timeout_and_its_log_is_kept(tmp_path):
    # OpenVPN gives up by itself after one try (connect-retry-max 1) and
    # exits: the keeper starts it again, until the deploy's timeout.
    config = unreachable_client(tmp_path, "connect-retry 1 1\nconnect-retry-max 1\nserver-poll-timeout 1\n")
    registry = tmp_path / "registry"
    errors = []
    # The second run only needs to start it once (CI's time).
    for timeout in (9, 3):
        tunnel = vpn.OpenVpnTunnel(str(config), timeout=timeout, registry=str(registry))
        with pytest.raises(StepFailed) as failed:
            try:
                tunnel.open()
            finally:
                tunnel.close()
        errors.append(str(failed.value))
    assert re.search(r"VPN not up after 9s \(openvpn started [2-9] times, none came up\)", errors[0]), errors[0]
    assert f"all of it in {tunnel.log}" in errors[0]
    log = vpn_state.read(tunnel.log, limit=1 << 20)
    # Both runs' starts are there: the second run did not overwrite the first's.
    assert len(re.findall(r" deployer: starting openvpn \(start 1 ", log)) == 2, log
    assert re.search(r" deployer: starting openvpn \(start 2 ", log), log
    assert "deployer: openvpn exited (code 1)" in log and "connect-retry-max" in log
    assert not list(registry.glob("tunnel-*.state"))


def test_openvpn_refusing_its_config_is_not_started_again_and_its_words_reach_the_error_printable(tmp_path):
    # What OpenVPN prints of a config line is the config's (or a server's)
    # text: control characters never reach the terminal, lines are cut.
    hostile = "\x1b]0;pwned\x07\x1b[2J" + "x" * 200
    (tmp_path / "bad.ovpn").write_text(f"client\n{hostile} yes\n")
    tunnel = vpn.OpenVpnTunnel(str(tmp_path / "bad.ovpn"), timeout=20, registry=str(tmp_path / "registry"))
    with pytest.raises(StepFailed) as failed:
        try:
            tunnel.open()
        finally:
            tunnel.close()
    error = str(failed.value)
    assert "openvpn exited (code 1) before the tunnel came up" in error
    assert "Unrecognized option" in error and "?]0;pwned??[2Jxxx" in error
    assert not any(c in error for c in "\x1b\x07\r"), repr(error)
    assert all(len(line) <= 4 + vpn_tunnel.TAIL_WIDTH + 3 for line in error.splitlines()), error
    # Refused twice at once: the third start would fail the same way.
    log = vpn_state.read(tunnel.log)
    assert log.count("deployer: starting openvpn") == 2
    assert "exited twice within 1s of its start: not started again" in log


@pytest.mark.parametrize("config, notify", [
    ("client\nremote vpn.example.com 1194\n", True),
    ("client\nproto udp4\nremote vpn.example.com 1194\nremote vpn2.example.com 1194 udp6\n", True),
    ("client\nproto tcp-client\nremote vpn.example.com 443\n", False),
    ("client\nremote vpn.example.com 1194\nremote vpn.example.com 443 tcp\n", False),
    ("client\n<connection>\nremote vpn.example.com 443 tcp-client\n</connection>\n"
     "<connection>\nremote vpn.example.com 1194 udp\n</connection>\n", False),
])
def test_openvpn_says_goodbye_to_a_udp_server_and_never_gets_the_option_with_tcp(tmp_path, config, notify):
    # OpenVPN before 2.5 refuses --explicit-exit-notify with TCP (2.6 ignores it).
    path = tmp_path / "client.ovpn"
    path.write_text(config)
    argv = vpn_keeper._openvpn_argv(str(path))
    assert ("--explicit-exit-notify" in argv) is notify
    if notify:  # before --config: a setting of the config's own wins
        assert argv.index("--explicit-exit-notify") < argv.index("--config")


def test_the_openvpn_of_a_killed_keeper_is_stopped_before_another_starts(tmp_path):
    # Killed with SIGKILL, the keeper cannot wait for its OpenVPN, which
    # pdeathsig only asks to stop (and it takes a second to say goodbye;
    # here it is stopped, and hears nothing): the next run stops it, by
    # its pid, before it starts a keeper, so the config never has two.
    config = unreachable_client(tmp_path)
    registry = str(tmp_path / "registry")
    runner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import threading, time
        from deployer.vpn import OpenVpnTunnel
        t = OpenVpnTunnel({str(config)!r}, timeout=60, registry={registry!r})
        threading.Thread(target=t.open, daemon=True).start()
        while t.openvpn_pid is None:
            time.sleep(0.01)
        print(t.openvpn_pid, flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    old = None
    try:
        old = int(runner.stdout.readline())
        keeper, _ = vpn_state.keeper_pids(vpn.OpenVpnTunnel(str(config), timeout=1, registry=registry).base)
        os.kill(old, signal.SIGSTOP)
        for pid in (keeper, runner.pid):
            os.kill(pid, signal.SIGKILL)
        runner.wait(10)
        assert _alive(old)
        tunnel = vpn.OpenVpnTunnel(str(config), timeout=3, registry=registry)
        seen, done = [], threading.Event()
        watching = threading.Thread(target=lambda: seen.extend(_clients(config, done)), daemon=True)
        watching.start()
        with pytest.raises(StepFailed, match="VPN not up after 3s"):
            try:
                tunnel.open()
            finally:
                tunnel.close()
                done.set()
        watching.join(10)
    finally:
        if runner.poll() is None:
            runner.kill()
        if old and _alive(old):
            os.kill(old, signal.SIGKILL)
    assert max(seen) == 1 and not _alive(old)
    assert "deployer: starting openvpn (start 1 of this keeper)" in vpn_state.read(tunnel.log)


def _clients(config, done: threading.Event) -> list[int]:
    """How many OpenVPN clients of `config` run, every few ms, until `done`."""
    counts = []
    while not done.is_set():
        counts.append(sum(1 for pid in filter(str.isdigit, os.listdir("/proc")) if _is_client(pid, config)))
        time.sleep(0.005)
    return counts


def _is_client(pid: str, config) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv[0].endswith(b"openvpn") and str(config).encode() in argv and _alive(int(pid))
