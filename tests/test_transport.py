"""SshTransport takes hosts from targets.yaml only and always checks host keys."""

from deployer.config import Host
from deployer.transport import SshTransport, _RejectUnknown


def test_ssh_config_cannot_add_a_gateway_or_change_the_host(tmp_path, monkeypatch):
    # A ProxyJump here would make Fabric open a gateway Connection with
    # AutoAddPolicy and no known_hosts: a host-key hole.
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(
        "Host *\n  ProxyJump bastion\n  User evil\n  Port 2200\n  HostName 203.0.113.9\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    known = tmp_path / "known_hosts"
    known.write_text("")
    t = SshTransport(Host("web1.internal", user="deploy"), str(known), timeout=0.5)
    assert t.conn.gateway is False
    assert (t.conn.host, t.conn.user, t.conn.port) == ("web1.internal", "deploy", 22)
    assert isinstance(t.conn.client._policy, _RejectUnknown)
    assert t.conn.connect_kwargs["timeout"] == 0.5  # sub-second timeouts are kept
