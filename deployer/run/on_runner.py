"""The steps that run on this machine, one handler a kind: the build of the
tarball, the VPN, and a command (a local hook, the local target's steps)."""

import os

from deployer import steps
from deployer.artifact import packaging
from deployer.connectors.local import LocalTransport
from deployer.connectors.result import Result
from deployer.vpn import OpenVpnTunnel


class OnRunner:
    """`teardown` is the executor's: what must be undone however the run ends."""

    def __init__(self, local: LocalTransport, teardown: list, timeout):
        self.local, self.teardown, self.timeout = local, teardown, timeout
        self.handlers = {steps.Build: self.build, steps.OpenVpn: self.vpn, steps.Run: self.command}

    def run(self, step: steps.Step) -> Result:
        handler = steps.of_kind(self.handlers, step)
        if handler is None:
            raise TypeError(f"{type(step).__name__} cannot run on the runner")
        return handler(step)

    def build(self, step: steps.Build) -> Result:
        expect = step.manifest.digest if step.manifest else None
        m = packaging.build(step.source, step.rules, step.dest, expect=expect)
        return Result(0, f"{len(m.files)} files, {m.size} bytes, {os.path.getsize(step.dest)} bytes"
                      f" compressed: {step.dest}", "")

    def vpn(self, step: steps.OpenVpn) -> Result:
        tunnel = OpenVpnTunnel(step.config, step.timeout, probe=step.probe, linger=step.linger)
        # Registered before open(): a half-started OpenVPN is stopped too.
        self.teardown.append(("close VPN", tunnel.close))
        tunnel.open()
        return Result(0, tunnel.said(), "")

    def command(self, step: steps.Run) -> Result:
        return self.local.run(step.command.line(), timeout=self.timeout(step))
