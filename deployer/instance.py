"""What an instance's hosts hold (their live release, their releases, the
lock, the history), as `hostscripts.state` prints it, and the release a
rollback goes back to."""

import os
import re
import socket
from dataclasses import dataclass, field

from deployer import context, names
from deployer.errors import DeployError

HISTORY_FIELDS = ("time", "action", "outcome", "release", "hostname", "who", "ci", "revision", "run")


@dataclass(frozen=True)
class Release:
    name: str
    whole: bool  # has its file list: unpacked to the end
    vhost: bool  # keeps the vhost it was deployed with: a rollback can go back to it


@dataclass(frozen=True)
class HostState:
    live: str = ""  # "" when no release is live
    releases: tuple[Release, ...] = ()  # oldest first
    lock: str = ""  # who holds the lock and for how long, "" when nobody does
    lock_run: str = ""
    history: tuple[dict[str, str], ...] = field(default=())

    def usable(self) -> set[str]:
        return {r.name for r in self.releases if r.whole and r.vhost}


def parse(stdout: str) -> HostState:
    live, releases, lock, lock_run, history = "", [], "", "", []
    for row in stdout.splitlines():
        kind, _, rest = row.partition(" ")
        if kind == "live":
            live = rest
        elif kind == "release":
            name, whole, vhost = (rest.split(" ") + ["0", "0"])[:3]
            releases.append(Release(name, whole == "1", vhost == "1"))
        elif kind == "lock":
            age, run, who = (rest.split(" ", 2) + ["", ""])[:3]
            lock_run = run
            lock = f"{who.strip() or 'a run that is taking or releasing it'}, for {_age(age)}"
        elif kind == "history":
            values = rest.split("\t")
            history.append(dict(zip(HISTORY_FIELDS, values + [""] * (len(HISTORY_FIELDS) - len(values)),
                                    strict=True)))
    return HostState(live, tuple(releases), lock, lock_run, tuple(history))


def _age(seconds: str) -> str:
    s = int(seconds) if seconds.isdigit() else 0
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} days"


def rollback_target(states: dict[str, HostState], wanted: str | None) -> str:
    """The release to go back to: `wanted`, or the newest one older than
    every host's live release; either must be whole, with its vhost, on
    every host."""
    common = set.intersection(*(s.usable() for s in states.values()))
    if wanted:
        lacking = [h for h, s in states.items() if wanted not in s.usable()]
        if lacking:
            raise DeployError(f"release {wanted} is not whole, with the vhost it was deployed with, on "
                              f"{', '.join(lacking)}; `deployer releases` shows what each host has")
        return wanted
    lives = [s.live for s in states.values() if s.live]
    if not lives:
        raise DeployError("no release is live on any host: nothing to roll back from")
    # What was live before the live one, as the history says (see previous_live).
    before = {previous_live(s) for s in states.values()}
    if len(before) == 1 and (b := before.pop()) in common:
        return b
    older = sorted(r for r in common if r < min(lives))
    if not older:
        raise DeployError("no release older than the live one is whole, with the vhost it was deployed"
                          " with, on every host (releases made before deployer kept the vhost cannot be"
                          " rolled back to); `deployer releases` shows what each host has")
    return older[-1]


_HOLDER = re.compile(r"by [^ @]+@([^ ]+) \(pid ([0-9]+), process ([0-9a-f]+)-([0-9]+)-([0-9]+)\)"
                     r".*\(run ([0-9a-f]+)\)")


def holder_here(owner: str) -> tuple[str, int | None] | None:
    """For a lock held by a run on this machine (this host name, this boot
    of the kernel, this pid namespace): (its run id, its pid if that process
    still runs, else None). None if the run is not from here, or if that
    cannot be told."""
    m = _HOLDER.search(owner)
    if not m or m.group(1) != socket.gethostname():
        return None
    host, pid, boot, namespace, started, run = m.groups()
    mine = context.process_id(os.getpid()).split("-")
    if mine[:2] != [boot, namespace]:
        return None
    now = context.process_id(int(pid))
    return run, (int(pid) if now == f"{boot}-{namespace}-{started}" else None)


def previous_live(state: HostState) -> str:
    """The release older than the live one that was live last, from the
    history: after R5 (bad), a rollback to R4 and a deploy of R6, it is R4;
    after a second rollback from R4, it is R3, not R5."""
    went_live = [e["release"] for e in state.history
                 if e["outcome"] == "done" and names.RELEASE.fullmatch(e["release"])]
    for release in reversed(went_live):
        if release < state.live:
            return release
    return ""
