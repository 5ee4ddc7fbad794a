"""The small shell programs deployer runs on hosts to change files safely,
and the builders that give each its arguments.

Each program is a file, sh/NAME.sh (with what it shares in sh/lib/, taken
in by a `. ./lib/X.sh` line), read as package data: constant text, checked
by shellcheck and `dash -n` in CI. Everything that varies (paths, names, the
mark) is passed as a positional argument and quoted by `Command`, so no value
is ever spliced into shell code. Names that deployer creates beside a file
are random per run (`Context.run_id`) and made with `mkdir`, which fails on
an existing name and never writes through a link, so a file or link planted
at a name we use can only make the step fail.
"""

import re
from functools import cache
from importlib import resources

from deployer.config.model import Python, Shared
from deployer.quoting import Command, forced_command

# How a host program takes in a library of functions (sh/lib/): a line of
# its own, which shellcheck follows as it reads the file.
_INCLUDE = re.compile(r"\. \./(lib/[a-z-]+\.sh)")

STOP_GRACE = 5.0  # after SIGTERM, how long a command has to end before SIGKILL


@cache
def script(name: str) -> str:
    """sh/NAME.sh as it is sent: each `. ./lib/X.sh` line replaced by that
    file, comment lines dropped (they are for the reader; the program
    travels in every session's argv)."""
    def lines(path: str):
        for line in (resources.files(__package__) / "sh" / path).read_text(encoding="utf-8").splitlines(True):
            include = _INCLUDE.fullmatch(line.rstrip("\n"))
            if include:
                yield from lines(include.group(1))
            elif not line.lstrip().startswith("#"):
                yield line
    return "".join(lines(f"{name}.sh"))


def program(name: str, *args: str) -> Command:
    """Run sh/NAME.sh with `args` as $1...; `ps` on the host shows it as deployer-NAME."""
    return Command.of(("sh", "-c", script(name), f"deployer-{name}", *args))


def install(path: str, mark: str, mode: int, owner: str, work: str, size: int, source: str = "") -> Command:
    """Write stdin (`size` bytes), or the host's file `source`, to `path`
    through a file in `work` renamed over it, refusing a path deployer did
    not write (its first line is not `mark`)."""
    return program("install", path, mark, f"{mode:o}", owner, work, str(size),
                   *([source] if source else []))


def restore(path: str, work: str) -> Command:
    """Undo `install`: the previous file back, or no file if there was none."""
    return program("restore", path, work)


def forget(work: str) -> Command:
    """Once a change is kept, what its undo would have needed goes."""
    return Command.of(("rm", "-rf", "--", work))


def unpack(releases: str, release: str, tmp: str, run_id: str, live: str, relay: str, tag: str,
           seconds: int, others: bool) -> Command:
    """Make `release` from stdin (see sh/unpack.sh), the files that did not change
    linked from the live release (or, `others`, from another instance's),
    if `live` can be switched to it later. Asked to, it keeps a copy of the
    artifact in `relay` and lets a key tagged `tag` read it for `seconds`."""
    offer = forced_command(Command.of(("cat", "--", f"{relay}/copy")).line())
    return program("unpack", releases, release, tmp, run_id, live,
                   relay, offer, tag, str(seconds), "01"[others])


def fetch(relay: str, address: str, port: int, seconds: int) -> Command:
    """Read the artifact from the host at `address` into `relay`, in at most
    `seconds` (see sh/fetch.sh)."""
    return program("fetch", relay, address, str(port), str(seconds))


def fetch_url(relay: str, seconds: int) -> Command:
    """Read the artifact into `relay` from the presigned URL on stdin, after
    its sha256 and size, in at most `seconds` (see sh/fetch-url.sh)."""
    return program("fetch-url", relay, str(seconds))


def close(relay: str, tag: str) -> Command:
    """Withdraw what `unpack` offered: its copy, and the key tagged `tag`."""
    return program("close-relay", relay, tag)


def live_state(live: str, full: bool, others: bool) -> Command:
    """What the release `live` points to holds (with none, and `others`, the
    newest live release of another instance), for sending only what changed."""
    return program("live-state", live, "01"[full], "01"[others])


def discard(release: str, tmp: str, run_id: str, relay: str) -> Command:
    """Undo `unpack` (and `fetch`)."""
    return program("discard", release, tmp, run_id, relay)


def stop_group(pid: int, grace: float) -> Command:
    return program("stop", str(pid), str(int(grace)))


def relink(path: str, target: str, work: str) -> Command:
    """Point the symlink `path` at `target`, keeping what `restore_link` needs in `work`."""
    return program("relink", path, target, work)


def restore_link(path: str, work: str) -> Command:
    """Undo `relink`: the previous target back, or no link if there was none."""
    return program("restore-link", path, work)


def apache(mode: str, apache_dir: str, wait: int, define: str, next_: str, live: str, work: str, mark: str,
           code: str, ctl: tuple[str, ...]) -> Command:
    """Apache's side of a run, `mode` one of ours, test, promote, restore,
    reload: see sh/apache.sh."""
    return program("apache", mode, apache_dir, str(wait), define, next_, live, work, mark, code, *ctl)


def names_are_free(apache_dir: str, own: str, names: tuple[str, ...]) -> Command:
    """Fails if a site enabled under `apache_dir`, other than instance `own`,
    serves one of `names` (lowercase host names or patterns)."""
    return program("check-names", apache_dir, own, *names)


def session(run_id: str, entries: tuple[tuple[str, bool], ...]) -> Command:
    """Run each (command line, reads stdin) in turn in one shell, marking the
    end of each; see sh/session.sh for what stdin must hold. The run's id is its
    first argument, so that stop_run can find it."""
    return program("session", run_id,
                   *(w for line, reads in entries for w in (line, "01"[reads])))


def run_end(mark: str) -> Command:
    """Run the commands stdin holds, once all of it is read, up to its last
    line "# MARK"; MARK is echoed first (see sh/run-end.sh)."""
    return program("run-end", mark)


def stop_run(run_id: str, grace: float) -> Command:
    """Stop every session of run `run_id` still running on the host (see sh/stop-run.sh)."""
    return program("stop-run", run_id, str(int(grace)))


def lock(state: str, run_id: str, owner: str, wait: int, gated: bool, hint: str, takes_over: str = "") -> Command:
    """Take the instance's lock in `state` for `run_id`, waiting up to `wait`
    seconds, or take it over from run `takes_over`; `gated`: first read
    "go" on stdin (see sh/lock.sh). `hint` ends the message that says who holds it."""
    return program("lock", state, run_id, owner, str(wait), "01"[gated], hint,
                   *([takes_over] if takes_over else []))


def discard_run(releases: str, live: str, run_id: str, keep: bool = False) -> Command:
    """Remove what run `run_id` left beside the releases (see sh/discard-run.sh);
    with `keep`, its whole releases stay."""
    return program("discard-run", releases, live, run_id, "01"[keep])


def finish(state: str, run_id: str, line: str, forget: tuple[str, ...] = ()) -> Command:
    """Append `line` to the history and release the lock, if `run_id` holds
    it; if every path of `forget` is gone, remove the instance's whole state
    instead."""
    return program("finish", state, run_id, line, *forget)


def prune(releases: str, live: str, keep: int, history: str) -> Command:
    """Remove all but the newest `keep` releases, never the live one or the one before it."""
    return program("prune", releases, live, str(keep), history)


def state(live: str, releases: str, state_dir: str, lines: int, record: str, shared: str) -> Command:
    """Print what the instance's host holds (see sh/state.sh)."""
    return program("state", live, releases, state_dir, str(lines), record, shared)


def instances(root: str, apache_dir: str, mark: str) -> Command:
    """Every instance under `root` (see sh/instances.sh); `mark` is the vhost's
    first line with %s for the name."""
    return program("instances", root, apache_dir, mark)


def unlink(path: str, work: str) -> Command:
    """Remove the symlink `path`, if there is one, kept in `work` for restore_link."""
    return program("unlink", path, work)


def remove_file(path: str, mark: str, work: str) -> Command:
    """Remove the file deployer wrote at `path`, if there is one, kept in `work` for restore."""
    return program("remove-file", path, mark, work)


def purge(live: str, releases: str, shared: str, keep: tuple[str, ...] = ()) -> Command:
    """Remove an instance's code, and `shared` unless it is "", but for the
    paths `keep` in it (the files a person placed there)."""
    return program("purge", live, releases, shared, *keep)


def can_activate(live: str, release: str, record: str, seen: tuple[str, ...]) -> Command:
    """Fail unless `release` is whole with its vhost and `live` points at one of `seen` ("" for none)."""
    return program("can-activate", live, release, record, *seen)


def shared_files(shared: str, files: tuple[str, ...]) -> Command:
    """Fail, naming them, if any of `files` is missing from `shared`."""
    return program("shared-files", shared, *files)


def link_shared(release: str, shared: str, paths: Shared, rendered: tuple[str, ...] = ()) -> Command:
    """Make each shared path of `release` (and the `rendered` files: files:
    with shared: true) a link into `shared`, the writable folders kept
    writable for the group (see sh/link-shared.sh)."""
    return program("link-shared", release, shared, paths.group, *(f"d:{d}" for d in paths.dirs),
                   *(f"w:{w}" for w in paths.writable), *(f"f:{f}" for f in (*paths.files, *rendered)),
                   *(f"c:{c}" for c in paths.create))


def check_app(live: str, shared: str, paths: Shared, python: str, exports: bool,
              packages: Python | None) -> Command:
    """`deployer check`'s rows of the app (see sh/check-app.sh): the hosts'
    Python for `packages`, the shared files and writable folders, and in the
    `live` release `python manage.py check --deploy --database default`
    ("" for no Django check), with its exported vars if it `exports`."""
    interpreter = ((packages.interpreter, packages.version, *reversed(manylinux(packages.platform)))
                   if packages else ("",) * 4)
    return program("check-app", live, shared, paths.group, python, "01"[exports], *interpreter,
                   *(f"f:{f}" for f in paths.files), *(f"w:{w}" for w in paths.writable))


def python_check(interpreter: str, version: str, platform: str) -> Command:
    """Fail unless the host's `interpreter` is Python `version` exactly, on the
    machine and glibc (or newer) that the wheel tag `platform` names."""
    glibc, machine = manylinux(platform)
    return program("python-check", interpreter, version, machine, glibc)


def manylinux(platform: str) -> tuple[str, str]:
    """manylinux_2_28_x86_64: ("2.28", "x86_64")."""
    _, major, minor, machine = platform.split("_", 3)
    return f"{major}.{minor}", machine


def venv(release: str, venvs: str, name: str, interpreter: str, wait: int) -> Command:
    """Link `release`/.venv to the virtualenv `venvs`/`name`, built from the
    release's wheels unless it is there whole (see sh/venv.sh)."""
    return program("venv", release, venvs, name, interpreter, str(wait))


def prune_venvs(venvs: str, root: str, drop: str = "") -> Command:
    """Remove the virtualenvs no release under `root` links to, after
    removing the link `drop` if given (see sh/prune-venvs.sh)."""
    return program("prune-venvs", venvs, root, *([drop] if drop else []))
