"""The VPN tunnel's bookkeeping that needs no OpenVPN: what one tunnel is shared by, and where
its state lives."""

import base64
import os
import tempfile
import textwrap
import time
from types import SimpleNamespace

import pytest

from deployer import config, vpn
from deployer.errors import ConfigError, StepFailed
from deployer.plan import stages
from deployer.vpn import state as vpn_state


def pem(label: str, data: bytes) -> str:
    body = base64.b64encode(data).decode()
    return f"-----BEGIN {label}-----\n" + "\n".join(textwrap.wrap(body, 64)) + f"\n-----END {label}-----\n"


CERT, OTHER_CERT = pem("CERTIFICATE", b"client A " * 40), pem("CERTIFICATE", b"client B " * 40)
KEY = pem("PRIVATE KEY", b"key " * 30)


def client(cert: str = CERT, remote: str = "remote vpn.example.com 1194", head: str = "") -> str:
    return (f"{head}client\ndev tun\nproto udp\n{remote}\nnobind\nverb 3\n"
            f"<cert>\n{cert}</cert>\n<key>\n{KEY}</key>\n")


def key(path) -> str:
    """The name of the tunnel a deploy with this config uses (nothing is started)."""
    return os.path.basename(vpn.OpenVpnTunnel(str(path), timeout=1, registry="/nonexistent").base)


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_two_checkouts_of_one_config_differing_in_comments_and_spaces_share_one_tunnel(tmp_path):
    # Two OpenVPN clients with one certificate: the server cuts one off.
    one = write(tmp_path / "agent1" / "client.ovpn", client())
    two = write(tmp_path / "agent2" / "client.ovpn", client(head="# checked out for agent 2\n\n; staging\n")
                .replace("remote vpn.example.com 1194", "  remote   vpn.example.com\t1194   # the office")
                .replace("nobind\n", "--nobind\n\n"))
    assert one.read_bytes() != two.read_bytes()
    assert key(one) == key(two)


def test_configs_with_different_certificates_get_tunnels_of_their_own(tmp_path):
    one = write(tmp_path / "a" / "client.ovpn", client())
    two = write(tmp_path / "b" / "client.ovpn", client(cert=OTHER_CERT))
    assert key(one) != key(two)


def test_the_same_certificate_to_another_server_is_another_tunnel(tmp_path):
    one = write(tmp_path / "a" / "client.ovpn", client())
    two = write(tmp_path / "b" / "client.ovpn", client(remote="remote vpn2.example.com 1194"))
    tcp = write(tmp_path / "c" / "client.ovpn", client(remote="remote vpn.example.com 1194 tcp"))
    assert len({key(one), key(two), key(tcp)}) == 3


def test_a_relative_cert_file_counts_by_its_bytes_in_each_folder(tmp_path):
    text = "client\ndev tun\nremote vpn.example.com 1194\ncert client.crt\nkey client.key\n"
    for agent in ("agent1", "agent2"):
        write(tmp_path / agent / "client.ovpn", text)
        write(tmp_path / agent / "client.key", KEY)
    write(tmp_path / "agent1" / "client.crt", CERT)
    # The same certificate, as `openssl x509 -text` writes it, with CRLFs.
    write(tmp_path / "agent2" / "client.crt", "Certificate:\n    Data: ...\n" + CERT.replace("\n", "\r\n"))
    same = [key(tmp_path / agent / "client.ovpn") for agent in ("agent1", "agent2")]
    assert same[0] == same[1]
    write(tmp_path / "agent2" / "client.crt", OTHER_CERT)
    assert key(tmp_path / "agent2" / "client.ovpn") != same[0]


def test_a_certificate_inline_or_in_a_file_is_one_client(tmp_path):
    inline = write(tmp_path / "a" / "client.ovpn", client())
    write(tmp_path / "b" / "client.crt", CERT)
    write(tmp_path / "b" / "client.key", KEY)
    named = write(tmp_path / "b" / "client.ovpn", "client\ndev tun\nproto udp\nremote vpn.example.com\n"
                                                   "cert client.crt\nkey client.key\n")
    assert key(inline) == key(named)


def test_without_a_certificate_the_options_count_and_the_user_pass_file(tmp_path):
    text = "client\ndev tun\nremote vpn.example.com 1194\nauth-user-pass pass.txt\nca ca.crt\n"
    one = write(tmp_path / "a" / "client.ovpn", text)
    two = write(tmp_path / "b" / "client.ovpn", "# agent 2\n" + text.replace(" 1194", "   1194 ; port"))
    write(tmp_path / "a" / "pass.txt", "deploy\nsecret\n")
    write(tmp_path / "b" / "pass.txt", "deploy\nsecret\n")
    assert key(one) == key(two)
    write(tmp_path / "b" / "pass.txt", "someone-else\nsecret\n")
    assert key(one) != key(two)
    other = write(tmp_path / "c" / "client.ovpn", text.replace("vpn.example.com", "vpn2.example.com"))
    write(tmp_path / "c" / "pass.txt", "deploy\nsecret\n")
    assert key(other) != key(one)


def test_a_config_over_1_mib_fails_naming_it(tmp_path):
    big = write(tmp_path / "client.ovpn", client() + "#" * (1024 * 1024) + "\n")
    with pytest.raises(StepFailed, match=r"the VPN config .*client\.ovpn is over 1 MiB"):
        key(big)


def test_a_hostile_config_is_read_in_linear_time(tmp_path):
    lines = ['remote "a\\" \'b' * 2000, "<cert>", "-----BEGIN " * 5000, "<connection>" * 3000, "\\" * 20000]
    hostile = write(tmp_path / "client.ovpn", "\n".join(lines * 6))
    assert os.path.getsize(hostile) < 1024 * 1024
    started = time.monotonic()
    key(hostile)
    assert time.monotonic() - started < 2


# -- the registry ---------------------------------------------------------------

ANOTHER_USER = 65534  # nobody
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="makes folders of another user's (chown)")


def home_of_ours(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return home


@as_root
def test_without_run_or_xdg_runtime_dir_a_folder_another_user_made_first_cannot_take_our_registry(
        tmp_path, monkeypatch):
    # It used to be /tmp/deployer-UID: any local user could make it first,
    # and every VPN deploy of ours then failed (it is not ours, so refused).
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    squatted = shared / f"deployer-{os.getuid()}"
    squatted.mkdir(mode=0o700)
    os.chown(squatted, ANOTHER_USER, ANOTHER_USER)
    home = home_of_ours(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: path != "/run" and access(path, mode, **kw))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    registry = vpn.registry_dir()
    assert not registry.startswith(str(shared))
    assert registry == str(home / ".local" / "state" / "deployer")
    for folder in (home, home / ".local", home / ".local" / "state"):
        assert folder.stat().st_uid == os.getuid() and not folder.stat().st_mode & 0o022, folder
    vpn.private_dir(registry)  # ours: a deploy can use it
    assert os.stat(registry).st_mode & 0o777 == 0o700


def home_not_ours(home):
    os.chown(home, ANOTHER_USER, ANOTHER_USER)


def local_made_by_another_user(home):
    (home / ".local").mkdir()
    os.chown(home / ".local", ANOTHER_USER, ANOTHER_USER)


def state_writable_by_all(home):
    (home / ".local" / "state").mkdir(parents=True)
    (home / ".local" / "state").chmod(0o777)


@as_root
@pytest.mark.parametrize("plant, words", [
    (home_not_ours, "home folder .* is not this user's"),
    (local_made_by_another_user, r"\.local belongs to user 65534"),
    (state_writable_by_all, r"others may write in .*/\.local/state"),
])
def test_a_state_folder_another_user_can_change_is_refused(tmp_path, plant, words):
    home = home_of_ours(tmp_path)
    plant(home)
    with pytest.raises(StepFailed, match=words):
        vpn.registry_dir(environ={"HOME": str(home)}, run_writable=False)


def test_xdg_state_home_and_runtime_dir_are_used_only_when_only_ours(tmp_path):
    runtime, state = tmp_path / "runtime", tmp_path / "state"
    runtime.mkdir(mode=0o700)
    home = home_of_ours(tmp_path)
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime), "XDG_STATE_HOME": str(state)}
    assert vpn.registry_dir(environ=env, run_writable=False) == str(runtime / "deployer")
    runtime.chmod(0o1777)  # a shared folder, however it is named
    assert vpn.registry_dir(environ=env, run_writable=False) == str(state / "deployer")
    assert state.stat().st_mode & 0o777 == 0o700
    assert vpn.registry_dir(environ={**env, "XDG_STATE_HOME": "relative"}, run_writable=False) == str(
        home / ".local" / "state" / "deployer")
    assert vpn.registry_dir(environ=env, run_writable=True) == f"/run/deployer-{os.getuid()}"


# -- vpn/linger in targets.yaml -------------------------------------------------------

def targets_with_vpn(tmp_path, vpn_line: str):
    (tmp_path / "client.ovpn").write_text(client())
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "app").mkdir(exist_ok=True)
    (tmp_path / "vhost").write_text("ServerName <<HOSTNAME>>\n")
    path = tmp_path / "targets.yaml"
    path.write_text(f"defaults:\n  known_hosts: known_hosts\n  package: {{source: app}}\n  template: vhost\n"
                    f"targets:\n  alpha:\n    hosts: [198.18.1.10]\n    vpn: {vpn_line}\n")
    return path


@pytest.mark.parametrize("vpn_line, linger", [
    ("{kind: openvpn, config: client.ovpn}", 10.0),  # the default: a next run within 10 s finds it up
    ("{kind: openvpn, config: client.ovpn, linger: 0}", 0.0),  # closed at once
    ("{kind: openvpn, config: client.ovpn, linger: 90.5}", 90.5),
])
def test_the_linger_is_a_vpn_option_with_a_default(tmp_path, vpn_line, linger):
    t = config.load(targets_with_vpn(tmp_path, vpn_line)).resolve("alpha")
    assert t.vpn.linger == linger
    step = stages.vpn(SimpleNamespace(target=t))[0]
    assert step.linger == linger


@pytest.mark.parametrize("value", ["-1", "3601", "soon"])
def test_a_linger_out_of_bounds_is_refused_naming_its_key(tmp_path, value):
    with pytest.raises(ConfigError, match=r"targets/alpha/vpn/linger: expected seconds from 0 to 3600"):
        config.load(targets_with_vpn(tmp_path, f"{{kind: openvpn, config: client.ovpn, linger: {value}}}"))


def test_a_keeper_of_the_deployer_before_is_known_by_its_state(tmp_path):
    # It wrote "KEEPER OPENVPN" only: read as no keeper, a run would start
    # a second client of the config beside it.
    base = str(tmp_path / "tunnel-0123456789abcdef")
    vpn_state.write(f"{base}.state", "12 34\n")
    assert vpn_state.recorded(base) == vpn_state.KeeperState(12, 34, 1, 0)
    vpn_state.write(f"{base}.state", "12 34 2 4096\n")
    assert vpn_state.recorded(base) == vpn_state.KeeperState(12, 34, 2, 4096)
    for junk in ("", "12", "12 x", "1 2 3 4 5"):
        vpn_state.write(f"{base}.state", junk)
        assert vpn_state.recorded(base) is None
