"""The vpn stage's failures that need no VPN server: OpenVPN's own words, nothing changed."""

import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from deployer.cli import main
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
        # Its keeper sees nobody uses the tunnel any more, and stops it.
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}") or _state(pid) == "Z", "openvpn outlived the killed deploy"
        assert not list(registry.glob("tunnel-*.state"))
    finally:
        if runner.poll() is None:
            runner.kill()
        if pid and os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
            os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "Z"
