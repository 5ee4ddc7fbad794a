"""What an instance's hosts hold (their live release, their releases, the
lock, the history), as `hostscripts.state` prints it, and the release a
rollback goes back to."""

import os
import re
import socket
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from deployer import context
from deployer.config import names
from deployer.errors import DeployError
from deployer.run import records

HISTORY_FIELDS = ("time", "action", "outcome", "release", "hostname", "who", "ci", "revision", "run")
# The lock's line for people (context.lock_owner): "deploy of release R by ...".
_OWNER = re.compile(r"[a-z]+ of release (\S+) by ")


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
    lock_run: str = ""  # the holder's run id, "" for a lock with no owner
    lock_release: str = ""  # the release the holder was making live, by its line for people (context.lock_owner)
    history: tuple[dict[str, str], ...] = field(default=())
    # What the host said that deployer never writes (a live link to something
    # that is not a release), and a lock naming no run id: never acted on.
    odd: tuple[str, ...] = ()
    odd_lock: str = ""
    shared: bool = False  # its shared directory is there

    def usable(self) -> set[str]:
        return {r.name for r in self.releases if r.whole and r.vhost}


def parse(stdout: str) -> HostState:
    """A host's answer to hostscripts.state. Every name in it is held to the
    shape deployer gives it before anything uses it: the host may be hostile."""
    live = lock = lock_run = lock_release = odd_lock = ""
    releases, history, odd = [], [], []
    shared = False
    for row in stdout.splitlines():
        kind, _, rest = row.partition(" ")
        if kind == "live":
            if names.RELEASE.fullmatch(rest):
                live = rest
            else:
                odd.append(f"its live path points at {shown(rest)}, which is not a release")
        elif kind == "release":
            name, whole, vhost = (rest.split(" ") + ["0", "0"])[:3]
            if names.RELEASE.fullmatch(name):
                releases.append(Release(name, whole == "1", vhost == "1"))
        elif kind == "lock":
            age, run, who = (rest.split(" ", 2) + ["", ""])[:3]
            if run and not names.RUN_ID.fullmatch(run):
                odd_lock = f"its lock names run {shown(run)}, which is not a run id deployer makes"
                run = ""
            lock_run = run
            lock = f"{who.strip() or 'a run that is taking or releasing it'}, for {_age(age)}"
            making = _OWNER.match(who)
            lock_release = making[1] if making and names.RELEASE.fullmatch(making[1]) else ""
        elif kind == "history":
            history.append(_entry(rest))
        elif row == "shared":
            shared = True
    return HostState(live, tuple(releases), lock, lock_run, lock_release, tuple(history), tuple(odd), odd_lock,
                     shared)


def shown(text: str, limit: int = 80) -> str:
    """Host text in a message: quoted, cut short, one line."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _number(text: str) -> int | None:
    """A count a host printed, if it is one (isdigit() takes '²', and
    int() of 5,000 digits raises)."""
    return int(text) if re.fullmatch(r"[0-9]{1,12}", text) else None


def _age(seconds: str) -> str:
    s = _number(seconds) or 0
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
    odd = [f"{h}: {o}" for h, s in states.items() for o in (*s.odd, s.odd_lock) if o]
    if odd:
        raise DeployError("a host holds what deployer never writes; look at it before rolling back: "
                          + "; ".join(odd))
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
    # Which release is "the previous one" depends on which host is asked:
    # one host (a hand-made link, a half-finished run) must not choose.
    if len({s.live for s in states.values()}) > 1:
        raise DeployError("the hosts do not serve the same release (" + ", ".join(
            f"{h} serves {s.live or 'none'}" for h, s in states.items())
            + "): name the release to go back to with --to (`deployer releases` shows what each host has)")
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


# Each is searched once, and neither can backtrack far: host text, bounded.
_HOLDER = re.compile(r"by [^ @]+@([^ ]+) \(pid [0-9]+, process ([0-9a-f]+)-([0-9]+)-[0-9]+\)")
_HOLDER_RUN = re.compile(r"\(run ([0-9a-f]{16})\)")


def holder_here(owner: str) -> tuple[str, int | None] | None:
    """For a lock held by a run of this machine (this host name, this boot of
    the kernel, this pid namespace, as the host says): (its run id, its pid
    if it is alive, else None), as this machine's own record of its runs
    says (records.py), never the host. None if the run is not from here, or if
    this machine has no record of it."""
    m = _HOLDER.search(owner[:1024])
    r = _HOLDER_RUN.search(owner[:1024], m.end()) if m else None
    if not m or not r or m.group(1) != socket.gethostname():
        return None
    host, boot, namespace = m.groups()
    run = r.group(1)
    if context.process_id(os.getpid()).split("-")[:2] != [boot, namespace]:
        return None
    pid = records.alive(run)
    if pid is None:
        return None
    return run, (pid or None)


# A host's history: the run went on without this host (within max_failed)
# and undid what it had changed there.
LEFT_OUT = "left out, undone"


def past_commit(states: dict[str, HostState], run_id: str) -> list[str]:
    """The hosts whose history says run `run_id` was done there. Done is
    written once every host has switched (but those the run left out within
    max_failed, which say so): so done on one host, the run had switched
    them all, and its changes are kept, never undone on some. But a host can
    write anything in its history: each other host must bear it out by its
    own state (it still holds that run's lock, and serves the release the
    run was making live; or it says the run left it out and holds no lock of
    that run), or this raises, naming the hosts: one host's word never
    decides what happens on another."""
    done_on = [h for h, s in states.items()
               if any(e["run"] == run_id and e["outcome"] == "done" for e in s.history)]
    if not done_on:
        return []

    def borne_out(s: HostState) -> bool:
        if s.lock_run == run_id:
            return bool(s.lock_release) and s.live == s.lock_release
        return any(e["run"] == run_id and e["outcome"] == LEFT_OUT for e in s.history)

    unborne = [f"{h} serves {s.live or 'no release'}, its lock "
               + (f"says run {run_id} was making {s.lock_release} live" if s.lock_run == run_id and s.lock_release
                  else "is not that run's")
               for h, s in states.items() if h not in done_on and not borne_out(s)]
    if unborne:
        raise DeployError(f"the hosts disagree about run {run_id}: the history of {', '.join(done_on)} says it was"
                          f" done there, but {'; '.join(unborne)}. deployer neither keeps nor undoes what it left:"
                          " look at the hosts, remove the lock by hand (rm -r <deploy_root>/NAME.deployer/lock),"
                          " then `deployer rollback NAME --to RELEASE` puts one release on every host")
    return done_on


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


@dataclass(frozen=True)
class Found:
    """One instance as one host holds it (see hostscripts.instances)."""

    live: str  # "" when none is
    releases: int
    vhost: str  # "enabled", "available" or ""
    lock_age: int | None  # seconds, None when not locked
    live_age: int | None  # seconds since the live path was switched, by the host's clock
    last: dict[str, str] | None  # the last history line that made a release live


def parse_instances(stdout: str) -> dict[str, Found]:
    found: dict[str, Found] = {}
    last: dict[str, dict[str, str]] = {}
    for row in stdout.splitlines():
        kind, _, rest = row.partition("\t")
        if kind == "instance":
            name, live, count, vhost, lock, since = (rest.split("\t") + [""] * 6)[:6]
            # A host's answer is not trusted to name things: a link whose
            # target holds a newline could forge a row.
            if not names.CONFIG_NAME.fullmatch(name) or not (live == "-" or names.RELEASE.fullmatch(live)):
                continue
            found[name] = Found("" if live == "-" else live, _number(count) or 0,
                                "" if vhost == "-" else vhost, _number(lock), _number(since), None)
        elif kind == "last":
            name, _, line = rest.partition("\t")
            last[name] = _entry(line)
    return {n: replace(f, last=last.get(n)) for n, f in found.items()}


def _entry(line: str) -> dict[str, str]:
    """A history line (context.history_line) by field name."""
    # A line from a later version may have more fields; one cut short, fewer.
    values = line.split("\t")[:len(HISTORY_FIELDS)]
    return dict(zip(HISTORY_FIELDS, values + [""] * (len(HISTORY_FIELDS) - len(values)), strict=True))


@dataclass(frozen=True)
class Instance:
    """One instance across a target's hosts."""

    name: str
    hosts: dict[str, Found]  # the hosts that have it
    every_host: tuple[str, ...]

    @property
    def last(self) -> dict[str, str] | None:
        """The newest deploy or rollback that made a release live, on any host."""
        lines = [f.last for f in self.hosts.values() if f.last]
        return max(lines, key=lambda e: e["time"]) if lines else None

    @property
    def lives(self) -> set[str]:
        return {f.live for f in self.hosts.values()}

    def age(self, now: datetime) -> float | None:
        """Seconds since a release of it last went live: by the history (the
        runner's clock, as this one), else by the live link's time on the host."""
        last = self.last
        if last:
            try:
                when = datetime.strptime(last["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            except ValueError:
                pass
            else:
                return (now - when).total_seconds()
        ages = [f.live_age for f in self.hosts.values() if f.live_age is not None]
        return float(min(ages)) if ages else None

    def problems(self) -> list[str]:
        """What differs between its hosts, or is only half there."""
        out = []
        missing = [h for h in self.every_host if h not in self.hosts]
        if missing:
            out.append(f"missing on {', '.join(missing)}")
        if len(self.lives) > 1:
            out.append("hosts disagree: " + ", ".join(f"{h} serves {f.live or 'nothing'}"
                                                      for h, f in self.hosts.items()))
        disabled = [h for h, f in self.hosts.items() if f.vhost != "enabled"]
        if disabled:
            out.append(f"site not enabled on {', '.join(disabled)}")
        if any(f.lock_age is not None for f in self.hosts.values()):
            out.append("locked")
        return out


def merge(found: dict[str, dict[str, Found]]) -> list[Instance]:
    """Per host {name: Found} into one Instance per name, by name."""
    every = tuple(found)
    names = sorted({n for per_host in found.values() for n in per_host})
    return [Instance(n, {h: per_host[n] for h, per_host in found.items() if n in per_host}, every) for n in names]


def parse_age(text: str) -> float:
    """`14d`, `12h`, `30m`, `2w`, `90s`: seconds."""
    m = re.fullmatch(r"([0-9]{1,6})([smhdw])", text.strip())
    if not m:
        raise ValueError(f"expected an age such as 14d, 12h, 2w or 30m, got {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
