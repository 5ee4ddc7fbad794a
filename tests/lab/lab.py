"""A small VPC on this machine, built from Linux network namespaces.

Layout (all addresses in 198.18.0.0/16, which the root namespace otherwise
routes to `unreachable`, so nothing leaks off the machine):

    runner (root ns) 198.18.0.1 --- bridge dl-dmz (198.18.0.0/24, the DMZ)
                                         |
                          VPN host (ns dl-vpn): 198.18.0.2, OpenVPN :1194/udp
                                         |     tunnel 198.18.2.0/24
                          198.18.1.1 --- bridge dl-priv (198.18.1.0/24)
                                         |
                  web hosts (ns dl-webN): 198.18.1.10+N, sshd :22, Apache :80

The runner reaches the private subnet only through the VPN: the server
pushes `route 198.18.1.0/24` and the web hosts route back via the VPN host.
The VPN host's outer link (dl-vd, and eth0 inside dl-vpn), which the OpenVPN
UDP traffic from the runner crosses, can be shaped with `tbf` like a real
uplink: `Lab.shape("100mbit")`, `Lab.shape(None)`.

Every sshd logs at LogLevel VERBOSE to /run/sshd.log of its host, so that
`Lab.ssh_sessions()` can count what any client (paramiko, ssh, Ansible) did.

Each web host is its own network, mount, UTS and PID namespace. Its
/etc/apache2, /var/www, /var/log/apache2, /var/lib/apache2, /run, /tmp,
/root and /srv are bind mounts of directories under `<workdir>/hosts/webN`,
so the runner can inspect them from outside, and sshd and Apache share that
view (commands over SSH see what Apache sees). `/srv/deployer-shared` is one
directory shared by every host (standing in for the database server).

Only one lab can be up at a time (addresses and names are fixed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
LAB_NET = "198.18.0.0/15"  # the whole benchmarking range is blackholed
RUNNER_ADDRESS = "198.18.0.1"
VPN_SERVER_ADDRESS = "198.18.0.2"
VPN_PRIVATE_ADDRESS = "198.18.1.1"
VPN_PORT = 1194
PRIVATE_SUBNET = "198.18.1.0/24"
TUNNEL_SUBNET = "198.18.2.0/24"
FIRST_HOST_OCTET = 10
MAX_HOSTS = 200

DMZ_BRIDGE = "dl-dmz"
PRIVATE_BRIDGE = "dl-priv"
VPN_NETNS = "dl-vpn"
VPN_DMZ_LINK = "dl-vd"  # root side of the VPN host's DMZ veth
VPN_PRIVATE_LINK = "dl-vp"  # root side of the VPN host's private veth
HOST_NETNS_PREFIX = "dl-web"  # dl-web0, dl-web1, ...
HOST_LINK_PREFIX = "dl-w"  # dl-w0, dl-w1, ... (root side of each host's veth)
VPN_OUTER_LINK_IN_NS = "eth0"  # the VPN host's side of VPN_DMZ_LINK
SSHD_LOG = "/run/sshd.log"  # on each host; Host.path() gives the runner's path
# sshd's lines (OpenSSH 9.x, LogLevel VERBOSE): one per authenticated
# connection, and one per session channel (exec, shell, subsystem such as
# sftp, which scp uses since OpenSSH 9.0).
SSH_LOGIN_LINE = "Accepted publickey for "
SSH_SESSION_LINE = "Starting session: "

SHARED_DIR_ON_HOSTS = "/srv/deployer-shared"
# Directories that each host has for itself, bind-mounted from hosts/webN.
PRIVATE_DIRS = (
    "run",  # first: the rest is mounted from a stash under it
    "etc/apache2",
    "etc/ssh",
    "var/www",
    "var/log/apache2",
    "var/lib/apache2",
    "tmp",
    "root",
    "srv",
)
STATE_FILE = "lab.json"
# Lets `down` with no --dir find the lab, and `up` find a leftover one.
POINTER_FILE = Path("/run/deployer-lab.json")
LOCK_FILE = Path("/run/deployer-lab.lock")
DEFAULT_DIR = Path("/tmp/deployer-lab")

CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class LabError(RuntimeError):
    pass


class VpnClient:
    """An OpenVPN client in the runner's namespace, started and stopped by pid.

    The lab itself never starts one: deployer does, in the real tests.
    """

    def __init__(self, config: Path, log: Path, timeout: float = START_TIMEOUT) -> None:
        self.config, self.log = config, log
        log.unlink(missing_ok=True)
        self.popen = subprocess.Popen(
            ["openvpn", "--config", str(config), "--log", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=CLEAN_ENV,
        )
        self.pid = self.popen.pid
        try:
            _wait(self._ready, timeout, "the OpenVPN client")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.popen.poll() is not None:
            raise LabError(f"OpenVPN client exited ({self.popen.returncode}):\n{_tail(self.log)}")
        return self.log.exists() and "Initialization Sequence Completed" in self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            _kill([self.pid], [self.popen])
        if self.popen.poll() is None:
            self.popen.wait(timeout=STOP_TIMEOUT)

    def __enter__(self) -> VpnClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Host:
    index: int
    name: str  # hostname inside the host: web0, web1, ...
    netns: str
    address: str
    root: Path  # on the runner: holds this host's private directories

    def path(self, host_path: str) -> Path:
        """The runner's path for a path inside this host, e.g. /var/www/x."""
        rel = host_path.strip("/")
        for d in PRIVATE_DIRS:
            if rel == d or rel.startswith(d + "/"):
                return self.root / rel
        raise ValueError(f"{host_path} is not private to {self.name}; private: {PRIVATE_DIRS}")


def _host(workdir: Path, i: int) -> Host:
    return Host(
        index=i,
        name=f"web{i}",
        netns=f"{HOST_NETNS_PREFIX}{i}",
        address=f"198.18.1.{FIRST_HOST_OCTET + i}",
        root=workdir / "hosts" / f"web{i}",
    )


def _sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        why = proc.stderr.strip() or proc.stdout.strip()
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {why}")
    return proc


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _alive(pid: int | None, start: str | None = None) -> bool:
    if not pid:
        return False
    now = _start_time(pid)
    return now is not None and (start is None or now == start)


def _listening(pid: int, port: int) -> bool:
    """True if a TCP socket listens on `port` in the network namespace of `pid`."""
    hexport = f":{port:04X}"
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(hexport) and fields[3] == "0A":
                return True
    return False


def _wait(pred, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _kill(pids: list[int], popens: list[subprocess.Popen] | None = None) -> None:
    """SIGTERM, then SIGKILL what is left; bounded; reaps our own children."""
    popens = popens or []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT / 2
        while time.monotonic() < deadline:
            for p in popens:
                p.poll()
            if not any(_alive(pid) for pid in pids):
                return
            time.sleep(0.05)


# ---------------------------------------------------------------- the network


def _netns_list() -> list[str]:
    out = _sh("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _lab_netns() -> list[str]:
    return [n for n in _netns_list() if n == VPN_NETNS or n.startswith(HOST_NETNS_PREFIX)]


def _lab_links() -> list[str]:
    out = _sh("ip", "-o", "link", "show").stdout
    names = []
    for line in out.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        if name.startswith("dl-"):
            names.append(name)
    return names


def _netns_pids(ns: str) -> list[int]:
    out = _sh("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split()]


def _no_ipv6(link: str) -> None:
    # The lab speaks IPv4 only; no router solicitations or DAD on its links.
    p = Path(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6")
    if p.exists():
        p.write_text("1")


def _in_ns(ns: str, script: str) -> None:
    _sh("ip", "netns", "exec", ns, "sh", "-ec", script)


def _add_netns(ns: str) -> None:
    _sh("ip", "netns", "add", ns)
    _in_ns(
        ns,
        "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6\nip link set lo up\n",
    )


def _add_veth(link: str, ns: str, peer: str, bridge: str) -> None:
    _sh("ip", "link", "add", link, "type", "veth", "peer", "name", peer, "netns", ns)
    _no_ipv6(link)
    _sh("ip", "link", "set", link, "master", bridge, "up")


def _build_network(hosts: list[Host]) -> None:
    for br in (DMZ_BRIDGE, PRIVATE_BRIDGE):
        _sh("ip", "link", "add", br, "type", "bridge")
        _no_ipv6(br)
        _sh("ip", "link", "set", br, "up")
    _sh("ip", "addr", "add", f"{RUNNER_ADDRESS}/24", "dev", DMZ_BRIDGE)

    _add_netns(VPN_NETNS)
    _add_veth(VPN_DMZ_LINK, VPN_NETNS, "eth0", DMZ_BRIDGE)
    _add_veth(VPN_PRIVATE_LINK, VPN_NETNS, "eth1", PRIVATE_BRIDGE)
    _in_ns(
        VPN_NETNS,
        f"ip addr add {VPN_SERVER_ADDRESS}/24 dev eth0\n"
        f"ip addr add {VPN_PRIVATE_ADDRESS}/24 dev eth1\n"
        "ip link set eth0 up\nip link set eth1 up\n"
        "echo 1 > /proc/sys/net/ipv4/ip_forward\n",
    )
    for h in hosts:
        _add_netns(h.netns)
        _add_veth(f"{HOST_LINK_PREFIX}{h.index}", h.netns, "eth0", PRIVATE_BRIDGE)
        _in_ns(
            h.netns,
            f"ip addr add {h.address}/24 dev eth0\nip link set eth0 up\n"
            f"ip route add default via {VPN_PRIVATE_ADDRESS}\n",
        )


# ------------------------------------------------------------ keys and certs


def _make_keys(workdir: Path, hosts: list[Host]) -> None:
    key = workdir / "id_ed25519"
    for p in (key, key.with_suffix(".pub")):
        p.unlink(missing_ok=True)
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deployer-lab", "-f", str(key))
    lines = []
    for h in hosts:
        hk = h.root / "etc/ssh/ssh_host_ed25519_key"
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h.name, "-f", str(hk))
        keytype, blob = hk.with_suffix(".pub").read_text().split()[:2]
        lines.append(f"{h.address} {keytype} {blob}\n")
        _write(h.root / "root/.ssh/authorized_keys", key.with_suffix(".pub").read_text(), 0o600)
    _write(workdir / "known_hosts", "".join(lines))


def _cert(d: Path, name: str) -> tuple[str, str, str]:
    """A self-signed EC certificate: (cert PEM, key PEM, SHA-256 fingerprint)."""
    crt, key = d / f"{name}.crt", d / f"{name}.key"
    _sh(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "3650", "-subj", f"/CN=deployer-lab-{name}",
        "-keyout", str(key), "-out", str(crt),
    )  # fmt: skip
    key.chmod(0o600)
    fp = _sh("openssl", "x509", "-in", str(crt), "-noout", "-fingerprint", "-sha256").stdout
    return crt.read_text(), key.read_text(), fp.strip().split("=", 1)[1]


# How the VPN host serves: many clients at once (OpenVPN's server mode), or
# point to point, one peer at a time, as a small NAT/VPN host may run it.
# The point-to-point server (OpenVPN 2.6) knows one session: a client that
# comes within seconds of one that left without a word (no
# explicit-exit-notify) gets its TLS session but no answer to its
# PUSH_REQUEST, and waits in vain (about every second such start).
_SERVER_MODES = {
    False: "topology subnet\nserver 198.18.2.0 255.255.255.0\npush \"route 198.18.1.0 255.255.255.0\"",
    True: "tls-server\ntopology p2p\nifconfig 198.18.2.1 198.18.2.2\npush \"ifconfig 198.18.2.2 198.18.2.1\"\n"
          "push \"route 198.18.1.0 255.255.255.0\"",
}


def _make_vpn_config(workdir: Path) -> tuple[Path, Path]:
    d = workdir / "vpn"
    d.mkdir(parents=True, exist_ok=True)
    s_crt, s_key, s_fp = _cert(d, "server")
    c_crt, c_key, c_fp = _cert(d, "client")
    server = _write(
        d / "server.conf",
        f"""# OpenVPN server of the deployer lab (peer-fingerprint mode, no CA)
dev tun
proto udp
local {VPN_SERVER_ADDRESS}
port {VPN_PORT}
{_SERVER_MODES[False]}
keepalive 2 10
dh none
persist-key
verb 3
<cert>
{s_crt.strip()}
</cert>
<key>
{s_key.strip()}
</key>
<peer-fingerprint>
{c_fp}
</peer-fingerprint>
""",
        0o600,
    )
    # The same server, point to point (Lab.start_vpn_server(point_to_point=True)).
    _write(d / "server-p2p.conf", server.read_text().replace(_SERVER_MODES[False], _SERVER_MODES[True]), 0o600)
    client = _write(
        workdir / "client.ovpn",
        f"""# OpenVPN client for the deployer lab: reaches {PRIVATE_SUBNET}
client
dev tun
proto udp
remote {VPN_SERVER_ADDRESS} {VPN_PORT}
nobind
resolv-retry 5
connect-retry 1 2
server-poll-timeout 5
explicit-exit-notify 1
verb 3
peer-fingerprint {s_fp}
<cert>
{c_crt.strip()}
</cert>
<key>
{c_key.strip()}
</key>
""",
        0o600,
    )
    return server, client


# ------------------------------------------------------------------ the hosts


def _prepare_host(h: Host) -> None:
    """Lay out the host's private directories and its sshd config."""
    if h.root.exists():
        shutil.rmtree(h.root)
    r = h.root
    shutil.copytree("/etc/apache2", r / "etc/apache2", symlinks=True)
    shutil.copytree("/var/lib/apache2", r / "var/lib/apache2", symlinks=True)
    # The host's own /etc/ssh: the system's client config, no system host keys.
    shutil.copytree("/etc/ssh", r / "etc/ssh", symlinks=True,
                    ignore=shutil.ignore_patterns("ssh_host_*", "sshd_config.d"))  # fmt: skip
    apache = r / "etc/apache2"
    (apache / "sites-enabled/000-default.conf").unlink(missing_ok=True)
    for f in ("wsgi.load", "wsgi.conf"):
        link = apache / "mods-enabled" / f
        if not link.exists() and (apache / "mods-available" / f).exists():
            link.symlink_to(f"../mods-available/{f}")
    _write(apache / "conf-available/lab-servername.conf", f"ServerName {h.name}\n")
    (apache / "conf-enabled/lab-servername.conf").symlink_to("../conf-available/lab-servername.conf")

    for d, mode in (("var/www", 0o755), ("run", 0o755), ("run/lock", 0o1777), ("run/sshd", 0o755),
                    ("run/apache2", 0o755), ("tmp", 0o1777), ("root", 0o700), ("srv", 0o755),
                    ("srv/deployer-shared", 0o755), ("root/.ssh", 0o700)):  # fmt: skip
        (r / d).mkdir(parents=True, exist_ok=True)
        (r / d).chmod(mode)
    log = r / "var/log/apache2"
    log.mkdir(parents=True)
    shutil.chown(log, "root", "adm")
    log.chmod(0o750)
    (r / "run/lock/apache2").mkdir()
    shutil.chown(r / "run/lock/apache2", "www-data", "root")
    for f in (".bashrc", ".profile"):
        if Path("/etc/skel", f).exists():
            shutil.copy(Path("/etc/skel", f), r / "root" / f)
    _write(
        r / "etc/ssh/sshd_config",
        f"""# sshd of lab host {h.name} ({h.address})
Port 22
AddressFamily inet
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
StrictModes yes
UseDNS no
PrintMotd no
MaxStartups 64:30:128
MaxSessions 64
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel VERBOSE
""",
    )


def _host_script(h: Host, workdir: Path) -> str:
    # The workdir may live under /tmp or /root, which the host shadows, so
    # mount sources come from a stash of it made before any shadowing, and
    # the stash goes away once the host's tree is in place.
    stash = "/run/.lab-src"
    rel = h.root.relative_to(workdir)
    binds = "\n".join(f'mount --bind "{stash}/{rel}/{d}" "/{d}"' for d in PRIVATE_DIRS[1:])
    return f"""set -e
mount --bind "{h.root}/run" /run
mkdir -p {stash}
mount --bind "{workdir}" {stash}
{binds}
mount --bind "{stash}/shared" "{SHARED_DIR_ON_HOSTS}"
umount {stash}
rmdir {stash}
hostname {h.name}
apache2ctl start
exec /usr/sbin/sshd -D -e -E {SSHD_LOG} -f /etc/ssh/sshd_config
"""


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# ----------------------------------------------------------------- the lab


class Lab:
    """A running lab. Build one with `up()`; `down()` removes all of it."""

    def __init__(self, workdir: Path, nhosts: int) -> None:
        self.workdir = workdir
        self.hosts = [_host(workdir, i) for i in range(nhosts)]
        self.known_hosts = workdir / "known_hosts"
        self.ssh_key = workdir / "id_ed25519"
        self.client_ovpn = workdir / "client.ovpn"
        self.vpn_server_config = workdir / "vpn" / "server.conf"
        self.vpn_server_p2p_config = workdir / "vpn" / "server-p2p.conf"
        self.vpn_point_to_point = False  # which of the two the running server is
        self.vpn_server_log = workdir / "vpn" / "server.log"
        self.shared_dir = workdir / "shared"  # on the runner
        self.shared_dir_on_hosts = SHARED_DIR_ON_HOSTS
        self.runner_address = RUNNER_ADDRESS
        self.vpn_server_address = VPN_SERVER_ADDRESS
        self.vpn_port = VPN_PORT
        self.private_subnet = PRIVATE_SUBNET
        # Outer pid of each host's init (sshd, PID 1 in the host's PID ns):
        # the target for nsenter.
        self.host_pids: list[int] = []
        self.vpn_server_pid: int | None = None
        self._popens: list[subprocess.Popen] = []
        self._vpn_popen: subprocess.Popen | None = None
        self._launchers: list[int] = []
        self.keeper_pid: int | None = None

    # -- what tests use

    @property
    def addresses(self) -> list[str]:
        return [h.address for h in self.hosts]

    def run(
        self, i: int, cmd: str | list[str], *, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside host i (its namespaces, as root, a clean env).

        A string runs under `sh -c`. Raises LabError when check and it fails.
        """
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        full = ["nsenter", "--target", str(self.host_pids[i]), "--mount", "--uts", "--net", "--pid", "--",
                "env", "-i", *(f"{k}={v}" for k, v in CLEAN_ENV.items()), *argv]  # fmt: skip
        proc = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout, cwd="/")
        if check and proc.returncode != 0:
            raise LabError(f"web{i}: {argv} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def targets(self, app: Path = REPO / "examples" / "djangoapp", **defaults: object) -> dict:
        """A targets.yaml document for deployer: alpha, and "*" for demos, on every host
        through the lab's VPN, with the real default migrate command."""
        return {
            "defaults": {
                "hosts": self.addresses,
                "user": "root",
                "identity_file": str(self.ssh_key),
                "known_hosts": str(self.known_hosts),
                # linger 0: the tunnel is down when a deploy returns, as the
                # tests that look with a client of their own (the same
                # certificate) need; tests of the linger set theirs.
                "vpn": {"kind": "openvpn", "config": str(self.client_ovpn), "timeout": 30, "linger": 0},
                "package": {"source": str(app), "exclude": ["__pycache__", "*.pyc"]},
                "template": str(REPO / "templates" / "default_template"),
                # The example app's database and uploads, on the storage every host shares.
                "shared": {"root": SHARED_DIR_ON_HOSTS, "dirs": ["data", "media"], "group": "www-data"},
                "health": {"path": "/health", "timeout": 30},
                **defaults,
            },
            "targets": {"alpha": {}, "*": {}},
        }

    def vpn_client(self, log: Path | None = None, timeout: float = START_TIMEOUT) -> VpnClient:
        """Start an OpenVPN client with client.ovpn; use it as a context manager."""
        return VpnClient(self.client_ovpn, log or self.workdir / "client.log", timeout)

    def ssh_client(self, i: int, timeout: float = 10):  # -> paramiko.SSHClient
        """A paramiko client logged in as root on host i (needs the VPN up).
        Unknown host keys are rejected: only known_hosts counts."""
        import paramiko

        c = paramiko.SSHClient()
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.load_host_keys(str(self.known_hosts))
        c.connect(
            self.hosts[i].address,
            username="root",
            key_filename=str(self.ssh_key),
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
        )
        return c

    def http_get(self, i: int, path: str = "/", host: str | None = None, timeout: float = 10):
        """GET from host i's Apache (needs the VPN up): (status, headers, body)."""
        import http.client

        conn = http.client.HTTPConnection(self.hosts[i].address, 80, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Host": host or self.hosts[i].address})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read().decode(errors="replace")
        finally:
            conn.close()

    # -- measuring: the uplink, the tunnel, SSH sessions

    def shape(self, rate: str | None) -> None:
        """Shape the VPN host's outer link, both ways, to `rate` (tc's units:
        "100mbit", "20mbit", "512kbit") with a token bucket (tbf), as a real
        uplink; None (or "off") removes it. Takes effect at once, VPN up or not."""
        shape_uplink(rate)

    def shaping(self) -> tuple[str | None, str | None]:
        """The rate of the outer link's tbf (runner to VPN host, VPN host to
        runner) as tc prints it ("100Mbit"), None where it is not shaped."""
        return uplink_shaping()

    def tunnel_device(self) -> str:
        """The runner's tun device of the VPN client that is up (the one with
        an address in the tunnel subnet)."""
        out = _sh("ip", "-o", "-4", "addr", "show", "to", TUNNEL_SUBNET).stdout
        devs = sorted({line.split()[1] for line in out.splitlines() if line.strip()})
        if len(devs) != 1:
            raise LabError(f"expected one tun device in {TUNNEL_SUBNET}, found {devs or 'none'}")
        return devs[0]

    def tunnel_bytes(self, device: str | None = None) -> tuple[int, int]:
        """(rx, tx) bytes that crossed the runner's tun device since it came up:
        the payload of the tunnel (IP packets), without OpenVPN's overhead."""
        stats = Path("/sys/class/net") / (device or self.tunnel_device()) / "statistics"
        return int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())

    def ssh_log(self, i: int) -> Path:
        """Host i's sshd log (LogLevel VERBOSE), on the runner."""
        return self.hosts[i].path(SSHD_LOG)

    def ssh_log_offsets(self) -> list[int]:
        """Where each host's sshd log ends now: pass to ssh_sessions() later."""
        return [self.ssh_log(i).stat().st_size if self.ssh_log(i).exists() else 0 for i in range(len(self.hosts))]

    def ssh_sessions(self, since: list[int] | None = None) -> list[int]:
        """Per host, the SSH sessions opened since the offsets (from
        ssh_log_offsets(); default: since the lab came up): one per command a
        client ran (exec), shell or subsystem (sftp, which scp uses), whatever
        the client."""
        return self._count_ssh_log(SSH_SESSION_LINE, since)

    def ssh_logins(self, since: list[int] | None = None) -> list[int]:
        """Per host, the SSH connections that logged in since the offsets."""
        return self._count_ssh_log(SSH_LOGIN_LINE, since)

    def _count_ssh_log(self, needle: str, since: list[int] | None) -> list[int]:
        counts = []
        for i in range(len(self.hosts)):
            try:
                with open(self.ssh_log(i), "rb") as f:
                    f.seek(since[i] if since else 0)
                    text = f.read().decode(errors="replace")
            except FileNotFoundError:
                text = ""
            counts.append(sum(needle in line for line in text.splitlines()))
        return counts

    @contextlib.contextmanager
    def vpn_server_stopped(self):
        """Stop the VPN server for the duration (a dead VPN), then restart it as it was."""
        point_to_point = self.vpn_point_to_point
        self.stop_vpn_server()
        try:
            yield
        finally:
            self.start_vpn_server(point_to_point)

    @contextlib.contextmanager
    def point_to_point_vpn(self):
        """The VPN host serves point to point (one peer at a time) for the
        duration, then as it did before."""
        self.stop_vpn_server()
        try:
            self.start_vpn_server(point_to_point=True)
            yield
        finally:
            self.stop_vpn_server()
            self.start_vpn_server()

    def start_vpn_server(self, point_to_point: bool = False) -> int:
        """The VPN server, if it is not running: many clients at once, or
        one peer at a time (point_to_point; see _SERVER_MODES)."""
        if self.vpn_server_pid and _alive(self.vpn_server_pid):
            return self.vpn_server_pid
        log = self.vpn_server_log
        log.unlink(missing_ok=True)
        config = self.vpn_server_p2p_config if point_to_point else self.vpn_server_config
        self.vpn_point_to_point = point_to_point
        with open(log, "w") as out:
            p = subprocess.Popen(
                ["ip", "netns", "exec", VPN_NETNS, "openvpn", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=CLEAN_ENV,
            )  # fmt: skip
        self._vpn_popen, self.vpn_server_pid = p, p.pid
        self._save()

        # A point-to-point server completes its start only with a peer: it
        # is ready once it listens.
        words = "UDPv4 link local (bound)" if point_to_point else "Initialization Sequence Completed"

        def ready() -> bool:
            if p.poll() is not None:
                raise LabError(f"OpenVPN server exited ({p.returncode}):\n{_tail(log)}")
            return words in log.read_text(errors="replace")

        _wait(ready, START_TIMEOUT, "the OpenVPN server")
        return p.pid

    def stop_vpn_server(self) -> None:
        """Kill the VPN server (by pid), e.g. to test a dead VPN."""
        if self.vpn_server_pid:
            _kill([self.vpn_server_pid], [self._vpn_popen] if self._vpn_popen else None)
        self.vpn_server_pid, self._vpn_popen = None, None
        self._save()

    def down(self) -> None:
        """Remove every namespace, link and process of this lab. Idempotent."""
        with machine_lock():
            self._down()

    def _down(self) -> None:
        popens = self._popens + ([self._vpn_popen] if self._vpn_popen else [])
        if _machine_lab_is(self.workdir):
            _teardown(self._launchers + self.host_pids + [self.vpn_server_pid or 0], popens)
        else:
            # The namespaces on the machine now belong to another lab (ours
            # was swept as stale): end only the processes we hold ourselves.
            _kill([p.pid for p in popens if p.poll() is None], popens)
        self.host_pids, self._launchers, self.vpn_server_pid = [], [], None
        self._popens, self._vpn_popen = [], None
        (self.workdir / STATE_FILE).unlink(missing_ok=True)
        _clear_pointer(self.workdir)
        if self.keeper_pid and self.keeper_pid != os.getpid() and _is_keeper(self.keeper_pid, self.workdir):
            _kill([self.keeper_pid])

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- state, so that another process can `down` this lab

    def _save(self, owner: int | None = None) -> None:
        state_path = self.workdir / STATE_FILE
        old = json.loads(state_path.read_text()) if state_path.exists() else {}
        state = {
            "workdir": str(self.workdir),
            "hosts": len(self.hosts),
            "host_pids": self.host_pids,
            "launcher_pids": self._launchers,
            "vpn_server_pid": self.vpn_server_pid,
            "keeper_pid": self.keeper_pid,
            "owner": old.get("owner"),
        }
        if owner:
            state["owner"] = {"pid": owner, "start": _start_time(owner)}
        _write(state_path, json.dumps(state, indent=1) + "\n")
        _write(POINTER_FILE, json.dumps({"workdir": str(self.workdir)}) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> Lab:
        """Attach to a lab that another process brought up in workdir."""
        state = json.loads((workdir / STATE_FILE).read_text())
        lab = cls(Path(state["workdir"]), state["hosts"])
        lab.host_pids = state["host_pids"]
        lab._launchers = state["launcher_pids"]
        lab.vpn_server_pid = state["vpn_server_pid"]
        lab.keeper_pid = state.get("keeper_pid")
        return lab

    def summary(self) -> dict[str, object]:
        return {
            "workdir": str(self.workdir),
            "known_hosts": str(self.known_hosts),
            "ssh_key": str(self.ssh_key),
            "client_ovpn": str(self.client_ovpn),
            "shared_dir": str(self.shared_dir),
            "shared_dir_on_hosts": self.shared_dir_on_hosts,
            "vpn_server": f"{self.vpn_server_address}:{self.vpn_port}/udp (pid {self.vpn_server_pid})",
            "uplink_shaping": dict(zip(("to_vpn", "from_vpn"), self.shaping(), strict=True)),
            "hosts": {
                h.name: {"address": h.address, "root": str(h.root), "pid": pid}
                for h, pid in zip(self.hosts, self.host_pids, strict=False)
            },  # fmt: skip
        }


_RATE = re.compile(r"(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)", re.IGNORECASE)
_RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9,
               "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}  # fmt: skip


def rate_bits(rate: str) -> int:
    """Bits per second of a tc rate ("100mbit", "1.5mbit", "500kbps")."""
    m = _RATE.fullmatch(rate.strip())
    if not m:
        raise LabError(f"{rate!r} is not a rate tc understands, e.g. 100mbit, 20mbit, 512kbit")
    bits = int(float(m[1]) * _RATE_UNITS[m[2].lower()])
    if not 8_000 <= bits <= 100_000_000_000:
        raise LabError(f"rate {rate!r} out of range (8kbit..100gbit)")
    return bits


def _outer_links() -> list[tuple[str, ...]]:
    """`ip netns exec` prefixes (or none) and device names of the VPN host's
    outer link: the runner's side (egress: the runner's uploads) and the VPN
    host's side (egress: downloads)."""
    return [((), VPN_DMZ_LINK), (("ip", "netns", "exec", VPN_NETNS), VPN_OUTER_LINK_IN_NS)]


def shape_uplink(rate: str | None) -> None:
    """tbf at `rate` on both directions of the VPN host's outer link, or none."""
    if rate is None or rate == "off":
        for prefix, dev in _outer_links():
            r = _sh(*prefix, "tc", "qdisc", "del", "dev", dev, "root", check=False)
            if r.returncode != 0 and "handle of zero" not in r.stderr and "No such file" not in r.stderr:
                raise LabError(f"tc qdisc del on {dev} failed: {r.stderr.strip()}")
        return
    bits = rate_bits(rate)
    # Bucket: 10 ms at the rate (at least 16 KiB, so an MTU and a timer tick
    # fit); the queue holds 50 ms more before tbf drops, as a modem would.
    burst = max(bits // 8 // 100, 16 * 1024)
    for prefix, dev in _outer_links():
        _sh(*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
            "rate", str(bits), "burst", str(burst), "latency", "50ms")  # fmt: skip


def uplink_shaping() -> tuple[str | None, str | None]:
    found: list[str | None] = []
    for prefix, dev in _outer_links():
        out = _sh(*prefix, "tc", "qdisc", "show", "dev", dev, "root").stdout
        m = re.search(r"\btbf\b.*?\brate (\S+)", out)
        found.append(m[1] if m else None)
    return found[0], found[1]


def blackhole() -> None:
    """The safety net, first: nothing for 198.18.0.0/15 may ever leave the machine."""
    r = _sh("ip", "route", "add", "unreachable", LAB_NET, check=False)
    if r.returncode != 0 and "File exists" not in r.stderr:
        raise LabError(f"cannot add the unreachable route: {r.stderr.strip()}")


def _clear_pointer(workdir: Path) -> None:
    try:
        if json.loads(POINTER_FILE.read_text()).get("workdir") == str(workdir):
            POINTER_FILE.unlink()
    except (OSError, ValueError):
        pass


def _machine_lab_is(workdir: Path) -> bool:
    """True unless the machine's lab is a live one of another workdir."""
    state = _leftover_state()
    return state is None or state.get("workdir") == str(workdir) or not _is_live(state)


def _is_keeper(pid: int, workdir: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"_keep" in argv and str(workdir).encode() in argv


def _teardown(pids: list[int], popens: list[subprocess.Popen]) -> None:
    """Kill the given pids and every process in a lab namespace, then remove
    the namespaces, links and bridges (by their fixed names)."""
    namespaces = _lab_netns()
    victims = {p for p in pids if p}
    for ns in namespaces:
        victims.update(_netns_pids(ns))
    victims.discard(os.getpid())
    _kill(sorted(victims), popens)
    for p in popens:
        if p.poll() is None:
            p.wait(timeout=STOP_TIMEOUT)
    for ns in namespaces:
        _sh("ip", "netns", "del", ns, check=False)
    for link in _lab_links():
        _sh("ip", "link", "del", link, check=False)
    left = _lab_netns() + _lab_links()
    if left:
        raise LabError(f"could not remove {left}")


def _leftover_state() -> dict | None:
    try:
        workdir = Path(json.loads(POINTER_FILE.read_text())["workdir"])
        return json.loads((workdir / STATE_FILE).read_text())
    except (OSError, ValueError, KeyError):
        return None


def _is_live(state: dict | None) -> bool:
    """A leftover lab counts as live (not to be torn down by `up`) when its
    owner (the process that brought it up) still runs, or, for a lab from the
    CLI, when its hosts still run."""
    if not state:
        return False
    owner = state.get("owner")
    if owner:
        return _alive(owner["pid"], owner["start"])
    return any(_alive(p) for p in state.get("host_pids", []))


def down(workdir: Path | None = None, *, force: bool = False) -> None:
    """Tear down the lab recorded in workdir, plus anything left in the lab's
    namespaces and links. Idempotent. With no lab recorded in workdir (or no
    workdir), only a dead lab's leftovers are swept, unless force=True."""
    with machine_lock():
        _down(workdir, force)


def _down(workdir: Path | None, force: bool = False) -> None:
    if workdir is not None and (workdir / STATE_FILE).exists():
        Lab.load(workdir).down()
        return
    # No lab recorded there: sweep what is left of a dead lab, but never a
    # live one that another process (another test run) owns.
    if _is_live(_leftover_state()) and not force:
        if workdir is None:
            return
        raise LabError(f"no lab in {workdir}; the lab that is up is {_leftover_state()['workdir']}")
    _teardown([], [])
    POINTER_FILE.unlink(missing_ok=True)


def up(
    workdir: Path,
    hosts: int = 2,
    *,
    replace: bool = False,
    owner: int | None = None,
    wait: float = 0.0,
    shape: str | None = None,
) -> Lab:
    """Bring up a lab with `hosts` web hosts, its files under workdir.
    `shape` (e.g. "100mbit") shapes the VPN host's outer link, see Lab.shape.

    A leftover lab is torn down first if it is dead (its owner process gone);
    a live one owned by another process is waited for, up to `wait` seconds,
    then this fails (unless replace=True: then it is torn down).
    `owner` is the pid whose death marks the lab stale (default: this process).
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, bind mounts)")
    if not 1 <= hosts <= MAX_HOSTS:
        raise LabError(f"hosts must be 1..{MAX_HOSTS}, not {hosts}")
    if shape is not None and shape != "off":
        rate_bits(shape)
    for tool in ("ip", "unshare", "nsenter", "openvpn", "sshd", "apache2ctl", "ssh-keygen", "openssl", "tc"):
        if not shutil.which(tool, path=CLEAN_ENV["PATH"]):
            raise LabError(f"{tool} is not installed")
    blackhole()

    with machine_lock():
        _clear_leftover(replace, wait)
        workdir = workdir.absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        lab = Lab(workdir, hosts)
        lab._save(owner=owner or os.getpid())
        try:
            _bring_up(lab)
            if shape is not None:
                lab.shape(shape)
        except BaseException:
            lab.down()
            raise
        lab._save()
        # For people trying deployer by hand: `deploy alpha alpha.example.test --targets <this>`.
        (workdir / "targets.yaml").write_text(yaml.safe_dump(lab.targets(), sort_keys=False))
    return lab


def _clear_leftover(replace: bool, wait: float) -> None:
    """Tear down a dead leftover lab; wait (bounded) for a live one that
    another process owns to go away, or fail."""
    deadline = time.monotonic() + wait
    while _lab_netns() or _lab_links():
        state = _leftover_state()
        if replace or not _is_live(state):
            down(Path(state["workdir"]) if state else None)
            return
        owner = (state or {}).get("owner") or {}
        if owner.get("pid") == os.getpid() or time.monotonic() >= deadline:
            where = state["workdir"] if state else "?"
            raise LabError(
                f"a lab is already up (state in {where}); "
                f"run `python -m tests.lab down --dir {where}` first, or pass --replace (replace=True)"
            )
        # Another test run owns it: let go of the lock while it finishes.
        depth = _LOCK.suspend()
        time.sleep(1.0)
        _LOCK.resume(depth)


class _Lock:
    """An flock on LOCK_FILE, so that two processes never build or tear down
    the (fixed-name) lab at the same time. Reentrant within a process."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.depth = 0

    def acquire(self, timeout: float = 120.0) -> None:
        if self.depth:
            self.depth += 1
            return
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise LabError(f"another process holds {LOCK_FILE} for more than {timeout:.0f}s") from None
                time.sleep(0.1)
        self.fd, self.depth = fd, 1

    def suspend(self) -> int:
        """Drop the lock whatever the nesting; resume() takes it back."""
        depth, self.depth = self.depth, 1
        self.release()
        return depth

    def resume(self, depth: int) -> None:
        self.acquire()
        self.depth = depth

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.fd is not None:
            os.close(self.fd)  # drops the flock
            self.fd = None


_LOCK = _Lock()


@contextlib.contextmanager
def machine_lock():
    """Held while building or tearing down a lab; hold it to look at the
    machine without another process's lab appearing meanwhile."""
    _LOCK.acquire()
    try:
        yield
    finally:
        _LOCK.release()


def _bring_up(lab: Lab) -> None:
    workdir = lab.workdir
    lab.shared_dir.mkdir(exist_ok=True)
    shutil.chown(lab.shared_dir, "www-data", "www-data")
    lab.shared_dir.chmod(0o2775)
    (workdir / "logs").mkdir(exist_ok=True)
    for h in lab.hosts:
        _prepare_host(h)
    _make_keys(workdir, lab.hosts)
    _make_vpn_config(workdir)
    _build_network(lab.hosts)
    lab.start_vpn_server()

    for h in lab.hosts:
        log = open(workdir / "logs" / f"{h.name}.log", "w")
        p = subprocess.Popen(
            ["ip", "netns", "exec", h.netns,
             "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
             "--propagation", "private",
             "sh", "-c", _host_script(h, workdir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=CLEAN_ENV,
        )  # fmt: skip
        log.close()
        lab._popens.append(p)
        lab._launchers.append(p.pid)
    lab._save()

    def check_alive(h: Host, p: subprocess.Popen) -> None:
        if p.poll() is not None:
            raise LabError(f"{h.name} exited ({p.returncode}):\n{_tail(workdir / 'logs' / f'{h.name}.log')}")

    for h, p in zip(lab.hosts, lab._popens, strict=True):

        seen: list[int] = []

        def init_started(h: Host = h, p: subprocess.Popen = p, seen: list[int] = seen) -> bool:
            check_alive(h, p)
            # Kept from the check itself: a host that exits right after has no children to read again.
            seen[:] = _children(p.pid)
            return bool(seen)

        _wait(init_started, START_TIMEOUT, f"{h.name} to start")
        lab.host_pids.append(seen[0])
    lab._save()

    for h, p, pid in zip(lab.hosts, lab._popens, lab.host_pids, strict=True):

        def serving(h: Host = h, p: subprocess.Popen = p, pid: int = pid) -> bool:
            check_alive(h, p)
            return _listening(pid, 22) and _listening(pid, 80)

        _wait(serving, START_TIMEOUT, f"sshd and Apache on {h.name}")
