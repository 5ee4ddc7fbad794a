"""The vpn stage's failures that need no VPN server: OpenVPN's own words, nothing changed."""

import io
import shutil

import pytest

from deployer.cli import main
from tests.conftest import armed_local_target, tree_digest

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
