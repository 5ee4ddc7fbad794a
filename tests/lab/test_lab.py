"""The lab itself: isolation, the VPN, sshd and Apache on every host."""

# Fixtures are imported, so test parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from .fixtures import LAB_WAIT, lab, lab_session, vpn  # noqa: F401
from .lab import (
    HOST_NETNS_PREFIX,
    VPN_DMZ_LINK,
    VPN_NETNS,
    Lab,
    LabError,
    _alive,
    _leftover_state,
    machine_lock,
    rate_bits,
    up,
)

pytestmark = pytest.mark.lab

BOUND = 30.0  # seconds; every wait below stops by itself


def connect_error(address: str, port: int = 22, timeout: float = 5.0) -> int | None:
    """None if a TCP connection succeeds, else the errno."""
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((address, port))
        return None
    except TimeoutError:
        return errno.ETIMEDOUT
    except OSError as e:
        return e.errno
    finally:
        s.close()


def eventually(pred, what: str, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def test_private_hosts_reachable_only_through_the_vpn(lab: Lab, tmp_path: Path) -> None:
    for h in lab.hosts:
        # The blackhole route answers at once: no waiting on a timeout.
        assert connect_error(h.address) == errno.EHOSTUNREACH
    # The DMZ (the VPN server) is reachable without the VPN.
    assert connect_error(lab.vpn_server_address, 22, timeout=2) in (errno.ECONNREFUSED,)

    with lab.vpn_client(log=tmp_path / "client.log") as client:
        assert Path(f"/proc/{client.pid}").exists()
        for h in lab.hosts:
            assert connect_error(h.address) is None, h
            assert connect_error(h.address, 80) is None, h
    assert client.popen.returncode is not None

    for h in lab.hosts:
        eventually(lambda h=h: connect_error(h.address) == errno.EHOSTUNREACH, f"{h.address} unreachable")


def test_sshd_accepts_the_lab_key_and_known_hosts(lab: Lab, vpn) -> None:
    for i, h in enumerate(lab.hosts):
        c = paramiko.SSHClient()
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.load_host_keys(str(lab.known_hosts))
        c.connect(h.address, username="root", key_filename=str(lab.ssh_key),
                  timeout=10, banner_timeout=10, auth_timeout=10,
                  allow_agent=False, look_for_keys=False)  # fmt: skip
        try:
            _, out, _ = c.exec_command("hostname; id -u; python --version; echo $HOME", timeout=10)
            lines = out.read().decode().split()
            assert out.channel.recv_exit_status() == 0
            assert lines[0] == h.name
            assert lines[1] == "0"
            assert lines[2:4] == ["Python", lines[3]] and lines[3].startswith("3.")
            assert lines[4] == "/root"
        finally:
            c.close()
        # The same check through the helper the other tests use.
        with lab.ssh_client(i) as c2:
            _, out, _ = c2.exec_command("cat /proc/1/comm")
            assert out.read().decode().strip() == "sshd"


def test_unknown_host_key_is_rejected(lab: Lab, vpn, tmp_path: Path) -> None:
    # known_hosts lists host 0's key under host 1's address: must fail.
    if len(lab.hosts) < 2:
        pytest.skip("needs 2 hosts")
    k0 = lab.known_hosts.read_text().splitlines()[0].split(None, 1)[1]
    bad = tmp_path / "known_hosts"
    bad.write_text(f"{lab.hosts[1].address} {k0}\n")
    c = paramiko.SSHClient()
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.load_host_keys(str(bad))
    with pytest.raises(paramiko.BadHostKeyException):
        c.connect(lab.hosts[1].address, username="root", key_filename=str(lab.ssh_key),
                  timeout=10, allow_agent=False, look_for_keys=False)  # fmt: skip
    c.close()


def test_apache_answers_on_every_host(lab: Lab, vpn) -> None:
    for h in lab.hosts:
        status, headers, _ = lab.http_get(h.index, "/")
        assert 200 <= status < 500
        assert headers["Server"].startswith("Apache")
        assert lab.run(h.index, "apache2ctl -M 2>/dev/null | grep -c wsgi_module").stdout.strip() == "1"


def test_each_host_has_its_own_trees(lab: Lab, vpn) -> None:
    if len(lab.hosts) < 2:
        pytest.skip("needs 2 hosts")
    marker = f"written-on-web0-{time.monotonic_ns()}"
    with lab.ssh_client(0) as c:
        _, out, _ = c.exec_command(f"echo {marker} > /var/www/marker.txt && echo {marker} > /etc/apache2/marker")
        assert out.channel.recv_exit_status() == 0
    try:
        assert (lab.hosts[0].path("/var/www/marker.txt")).read_text().strip() == marker
        assert not lab.hosts[1].path("/var/www/marker.txt").exists()
        with lab.ssh_client(1) as c:
            _, out, _ = c.exec_command("ls /var/www /etc/apache2")
            assert "marker" not in out.read().decode()
        # Apache on web0 serves web0's file: sshd and Apache share the mounts.
        lab.run(0, "mkdir -p /var/www/html && cp /var/www/marker.txt /var/www/html/")
        lab.run(0, "printf 'DocumentRoot /var/www/html\\n' > /etc/apache2/conf-enabled/lab-docroot.conf")
        lab.run(0, "apache2ctl graceful")
        eventually(lambda: lab.http_get(0, "/marker.txt")[2].strip() == marker, "web0 serves its marker")
        assert lab.http_get(1, "/marker.txt")[0] == 404
        # The shared directory is one and the same everywhere.
        lab.run(0, f"echo {marker} > {lab.shared_dir_on_hosts}/shared.txt")
        assert lab.run(1, f"cat {lab.shared_dir_on_hosts}/shared.txt").stdout.strip() == marker
        assert (lab.shared_dir / "shared.txt").read_text().strip() == marker
        assert lab.run(1, f"su -s /bin/sh www-data -c 'test -w {lab.shared_dir_on_hosts}'").returncode == 0
    finally:
        lab.run(0, "rm -rf /var/www/marker.txt /var/www/html /etc/apache2/marker"
                   " /etc/apache2/conf-enabled/lab-docroot.conf; apache2ctl graceful")  # fmt: skip
        (lab.shared_dir / "shared.txt").unlink(missing_ok=True)


def test_dead_vpn_server_and_restart(lab: Lab, tmp_path: Path) -> None:
    pid = lab.vpn_server_pid
    assert pid and Path(f"/proc/{pid}").exists()
    with lab.vpn_server_stopped():
        assert lab.vpn_server_pid is None
        assert not Path(f"/proc/{pid}/status").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        with pytest.raises(LabError, match="timed out"):
            lab.vpn_client(log=tmp_path / "dead.log", timeout=3)
    with lab.vpn_client(log=tmp_path / "alive.log"):
        assert connect_error(lab.hosts[0].address) is None


def _comm(p: Path) -> str:
    try:
        return (p / "comm").read_text().strip()
    except OSError:
        return ""


def _netns(p: Path) -> str:
    try:
        return os.readlink(p / "ns/net")
    except OSError:
        return ""


def lab_leftovers() -> list[str]:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    found = [n.split()[0] for n in ns.splitlines() if n.startswith((VPN_NETNS, HOST_NETNS_PREFIX))]
    found += [ln.split(":")[1].strip() for ln in links.splitlines() if ": dl-" in ln]
    return found


def test_down_leaves_nothing_behind(lab_session, tmp_path: Path) -> None:
    lab_session.release()  # one lab at a time: this test needs the machine
    new = up(tmp_path / "lab", hosts=3, wait=LAB_WAIT)
    try:
        pids = list(new.host_pids) + [new.vpn_server_pid]
        # Processes started over SSH count too: something long-running in a host.
        new.run(1, "setsid sleep 600 > /dev/null 2>&1 < /dev/null &")
        host_ns = _netns(Path(f"/proc/{new.host_pids[1]}"))

        def sleepers() -> list[int]:
            # Pids as seen from the runner (the host has its own PID namespace).
            return [int(p.name) for p in Path("/proc").iterdir()
                    if p.name.isdigit() and _comm(p) == "sleep" and _netns(p) == host_ns]  # fmt: skip

        eventually(lambda: len(sleepers()) == 1, "the sleeper runs")
        pids += sleepers()
        with pytest.raises(LabError, match="already up"):
            up(tmp_path / "other", hosts=1)
    except BaseException:
        new.down()
        raise
    with machine_lock():  # no other test run's lab may appear meanwhile
        new.down()
        assert lab_leftovers() == []
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists(), pid
        new.down()  # twice is fine
        assert lab_leftovers() == []


def test_down_after_a_failed_up(lab_session, tmp_path: Path, monkeypatch) -> None:
    lab_session.release()
    from . import lab as labmod

    def broken(h, workdir):
        return "exit 7\n"

    monkeypatch.setattr(labmod, "_host_script", broken)
    with machine_lock():
        with pytest.raises(LabError, match=r"web\d exited"):
            up(tmp_path / "lab", hosts=2, wait=LAB_WAIT)
        assert lab_leftovers() == []


def test_cli_up_and_down(lab_session, tmp_path: Path) -> None:
    lab_session.release()
    repo = Path(__file__).resolve().parents[2]
    d = tmp_path / "cli"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tests.lab", *args], cwd=repo, capture_output=True,
                              text=True, timeout=LAB_WAIT + 120)  # fmt: skip

    r = cli("up", "--hosts", "2", "--dir", str(d), "--wait", str(LAB_WAIT), "--shape", "50mbit")
    assert r.returncode == 0, r.stderr
    try:
        info = json.loads(r.stdout)
        assert info["uplink_shaping"] == {"to_vpn": "50Mbit", "from_vpn": "50Mbit"}
        r = cli("shape", "off", "--dir", str(d))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"to_vpn": None, "from_vpn": None}
        assert "tbf" not in qdiscs()
        assert cli("shape", "fast", "--dir", str(d)).returncode == 1
        assert info["known_hosts"] == str(d / "known_hosts")
        assert [h["address"] for h in info["hosts"].values()] == ["198.18.1.10", "198.18.1.11"]
        attached = Lab.load(d)  # another process can drive the lab
        assert attached.run(1, "hostname").stdout.strip() == "web1"
        pids = attached.host_pids + [attached.vpn_server_pid, attached.keeper_pid]
        assert all(Path(f"/proc/{p}").exists() for p in pids)
    finally:
        r = cli("down", "--dir", str(d))
    assert r.returncode == 0, r.stderr
    for pid in pids:
        assert not _alive(pid), pid
    with machine_lock():
        # Another test run may have brought up its own lab since.
        assert lab_leftovers() == [] or _leftover_state()["workdir"] != str(d)
    assert cli("down", "--dir", str(d)).returncode == 0  # twice is fine


def qdiscs() -> str:
    """The root qdiscs of both ends of the VPN host's outer link."""
    out = ""
    for prefix in ([], ["ip", "netns", "exec", VPN_NETNS]):
        dev = "eth0" if prefix else VPN_DMZ_LINK
        out += subprocess.run([*prefix, "tc", "qdisc", "show", "dev", dev, "root"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
    return out


def test_shape_sets_and_removes_a_tbf_on_the_vpn_uplink(lab: Lab) -> None:
    try:
        lab.shape("100mbit")
        assert lab.shaping() == ("100Mbit", "100Mbit")
        assert qdiscs().count("qdisc tbf") == 2 and "rate 100Mbit" in qdiscs()
        lab.shape("20mbit")  # replaced, not stacked
        assert lab.shaping() == ("20Mbit", "20Mbit")
        assert qdiscs().count("qdisc tbf") == 2
    finally:
        lab.shape(None)
    assert lab.shaping() == (None, None)
    assert "tbf" not in qdiscs()
    lab.shape("off")  # twice is fine
    with pytest.raises(LabError, match="not a rate"):
        lab.shape("fast")
    assert "tbf" not in qdiscs()


def test_rate_bits() -> None:
    assert rate_bits("100mbit") == 100_000_000
    assert rate_bits("1.5Mbit") == 1_500_000
    assert rate_bits("500kbps") == 4_000_000
    for bad in ("100", "mbit", "-1mbit", "1tbit", "1bit"):
        with pytest.raises(LabError):
            rate_bits(bad)


def test_tunnel_bytes_count_what_crosses_the_tunnel(lab: Lab, vpn) -> None:
    dev = lab.tunnel_device()
    assert dev.startswith("tun")
    rx0, tx0 = lab.tunnel_bytes()
    payload = 2_000_000
    with lab.ssh_client(0) as c:
        stdin, out, _ = c.exec_command("wc -c")
        stdin.write(b"x" * payload)
        stdin.channel.shutdown_write()
        assert out.read().decode().strip() == str(payload)
    rx1, tx1 = lab.tunnel_bytes(dev)
    assert payload <= tx1 - tx0 < payload * 1.5
    assert 0 < rx1 - rx0 < payload / 2


def test_ssh_sessions_are_counted_per_host_whatever_the_client(lab: Lab, vpn) -> None:
    opts = ["-i", str(lab.ssh_key), "-o", f"UserKnownHostsFile={lab.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]  # fmt: skip
    since = lab.ssh_log_offsets()
    with lab.ssh_client(0) as c:  # paramiko: one connection, three sessions
        for cmd in ("true", "hostname", "true"):
            _, out, _ = c.exec_command(cmd)
            out.channel.recv_exit_status()
    last = len(lab.hosts) - 1
    subprocess.run(["ssh", *opts, f"root@{lab.addresses[last]}", "true"], check=True, timeout=BOUND)
    # scp speaks SFTP since OpenSSH 9.0: a session (subsystem) too.
    scp = ["scp", "-q", *opts, "/etc/hostname", f"root@{lab.addresses[last]}:/tmp/counted"]
    subprocess.run(scp, check=True, timeout=BOUND)
    want_sessions = [0] * len(lab.hosts)
    want_logins = [0] * len(lab.hosts)
    want_sessions[0] += 3
    want_logins[0] += 1
    want_sessions[last] += 2
    want_logins[last] += 2

    def counted() -> bool:  # sshd writes its log as it goes: allow it a moment
        return lab.ssh_sessions(since) == want_sessions and lab.ssh_logins(since) == want_logins

    eventually(counted, f"sessions {lab.ssh_sessions(since)} logins {lab.ssh_logins(since)}", timeout=10)
    # Without offsets: everything since the lab came up, at least this.
    assert all(a >= b for a, b in zip(lab.ssh_sessions(), want_sessions, strict=True))
