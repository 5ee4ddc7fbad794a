"""The steps that run on this machine, one handler a kind: the build of the
tarball, the VPN, and a command (a local hook, the local target's steps)."""

import os
import shutil
import time

from deployer import steps
from deployer.artifact import packaging, wheels
from deployer.connectors.local import LocalTransport
from deployer.connectors.result import Result
from deployer.vpn import OpenVpnTunnel


class OnRunner:
    """`teardown` is the executor's: what must be undone however the run ends."""

    def __init__(self, local: LocalTransport, teardown: list, timeout):
        self.local, self.teardown, self.timeout = local, teardown, timeout
        self.handlers = {steps.Build: self.build, steps.OpenVpn: self.vpn, steps.Run: self.command,
                         steps.CopySource: self.copy, steps.Wheels: self.wheels, steps.Pause: self.pause}

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

    def copy(self, step: steps.CopySource) -> Result:
        files = packaging.copy(step.source, step.dest, step.rules)
        return Result(0, f"{files} files and links copied to {step.dest}", "")

    def wheels(self, step: steps.Wheels) -> Result:
        if wheels.is_whole(step.dest):
            return Result(0, f"made by an earlier run, from the same requirements: {step.dest}", "")
        work = wheels.begin(step.python)
        try:
            for command in wheels.commands(step.python, work):
                r = self.local.run(command.line(), timeout=self.timeout(step))
                if not r.ok:
                    return r
            return Result(0, wheels.finish(work, step.dest), "")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def vpn(self, step: steps.OpenVpn) -> Result:
        tunnel = OpenVpnTunnel(step.config, step.timeout, probe=step.probe, linger=step.linger)
        # Registered before open(): a half-started OpenVPN is stopped too.
        self.teardown.append(("close VPN", tunnel.close))
        tunnel.open()
        return Result(0, tunnel.said(), "")

    def pause(self, step: steps.Pause) -> Result:
        # In slices: an interrupt lands between them, on this (the main) thread.
        until = time.monotonic() + step.seconds
        while (left := until - time.monotonic()) > 0:
            if self.local.stop.wait(min(left, 0.1)):
                return Result(1, "", "stopped")
        return Result(0, f"paused {step.seconds:g} s", "")

    def command(self, step: steps.Run) -> Result:
        return self.local.run(step.command.line(), timeout=self.timeout(step))
