"""python -m tests.lab up [--hosts N] [--dir DIR] [--replace] [--shape RATE] | down [--dir DIR]
                   | shape RATE|off [--dir DIR]

`shape` sets (or, with `off`, removes) a tbf of RATE (tc's units: 100mbit,
20mbit) on the VPN host's outer link, which the tunnel's UDP crosses, both ways.

`up` leaves a small keeper process behind that is the parent of the lab's
processes (this machine's PID 1 does not reap orphans, so without a living
parent they would linger as zombies). `down` stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .lab import DEFAULT_DIR, START_TIMEOUT, Lab, LabError, down, machine_lock, up


def _report(pipe, result: dict) -> bool:
    try:
        with pipe:
            pipe.write(json.dumps(result))
        return True
    except BrokenPipeError:
        return False


def _keep(workdir: Path, hosts: int, replace: bool, wait: float, ready_fd: int, shape: str | None = None) -> int:
    """Bring the lab up, report on ready_fd, then wait to be told to stop."""
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    ready = os.fdopen(ready_fd, "w")
    try:
        lab = up(workdir, hosts, replace=replace, wait=wait, shape=shape)
    except (LabError, OSError, subprocess.SubprocessError) as e:
        _report(ready, {"error": str(e)})
        return 1
    lab.keeper_pid = os.getpid()
    lab._save()
    # Owned by nobody: the lab outlives this process's parent.
    state = lab.workdir / "lab.json"
    data = json.loads(state.read_text())
    data["owner"] = None
    state.write_text(json.dumps(data, indent=1) + "\n")
    if not _report(ready, lab.summary()):
        # Whoever asked for the lab is gone (killed while we waited): a lab
        # nobody knows about would block every later run.
        lab.down()
        return 1
    # Reap the lab's processes as they end; leave when `down` signals us.
    deadline = time.monotonic() + 7 * 24 * 3600
    while not stop and time.monotonic() < deadline:
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.5)
    for p in lab._popens + ([lab._vpn_popen] if lab._vpn_popen else []):
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="bring the lab up")
    u.add_argument("--hosts", type=int, default=2)
    u.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    u.add_argument("--replace", action="store_true", help="tear down a live lab first")
    u.add_argument("--wait", type=float, default=0.0, help="seconds to wait for another run's lab to go")
    u.add_argument("--shape", metavar="RATE", help="shape the VPN host's outer link, e.g. 100mbit")
    d = sub.add_parser("down", help="tear the lab down")
    d.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    d.add_argument("--force", action="store_true", help="with no lab in DIR, tear down whatever lab is up")
    s = sub.add_parser("shape", help="shape the VPN host's outer link (tbf), or `off`")
    s.add_argument("rate", metavar="RATE|off")
    s.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    k = sub.add_parser("_keep")
    k.add_argument("--hosts", type=int)
    k.add_argument("--dir", type=Path)
    k.add_argument("--replace", action="store_true")
    k.add_argument("--wait", type=float, default=0.0)
    k.add_argument("--fd", type=int)
    k.add_argument("--shape")
    args = ap.parse_args(argv)

    if args.cmd == "_keep":
        return _keep(args.dir, args.hosts, args.replace, args.wait, args.fd, args.shape)
    if args.cmd == "shape":
        try:
            with machine_lock():  # the lab in DIR stays up meanwhile
                lab = Lab.load(args.dir.absolute())
                lab.shape(None if args.rate == "off" else args.rate)
                to_vpn, from_vpn = lab.shaping()
        except (LabError, OSError, ValueError) as e:
            print(f"lab shape: {e}", file=sys.stderr)
            return 1
        print(json.dumps({"to_vpn": to_vpn, "from_vpn": from_vpn}))
        return 0
    if args.cmd == "down":
        try:
            down(args.dir.absolute(), force=args.force)
        except LabError as e:
            print(f"lab down: {e}", file=sys.stderr)
            return 1
        return 0

    r, w = os.pipe()
    cmd = [sys.executable, "-m", "tests.lab", "_keep", "--hosts", str(args.hosts),
           "--dir", str(args.dir.absolute()), "--fd", str(w), "--wait", str(args.wait)]  # fmt: skip
    if args.replace:
        cmd.append("--replace")
    if args.shape:
        cmd += ["--shape", args.shape]
    # The keeper outlives this process: it must not hold on to our stdout.
    args.dir.mkdir(parents=True, exist_ok=True)
    log = open(args.dir / "keeper.log", "w")
    keeper = subprocess.Popen(
        cmd, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    os.close(w)
    log.close()
    with os.fdopen(r) as ready:
        # The keeper bounds its own waits; this is only a backstop.
        deadline = time.monotonic() + START_TIMEOUT * 4 + 60 + args.wait
        text = ""
        while time.monotonic() < deadline:
            chunk = ready.read()
            text += chunk
            if not chunk:
                break
    if not text:
        print("lab up: the keeper died without a word", file=sys.stderr)
        return 1
    result = json.loads(text)
    if "error" in result:
        keeper.wait(timeout=30)
        print(f"lab up: {result['error']}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
