"""The undo log: how to put back each change a run made on a host, recorded
before the change starts, replayed backwards on every host if the run fails
or is interrupted before its commit point; and, once the changes stand,
what their undo needed, which goes in the host's next session."""

import threading
from dataclasses import dataclass

from deployer.quoting import Command
from deployer.run.failures import detail


@dataclass(frozen=True)
class Undo:
    """How to put back one change on one host, and what to tidy if it is kept."""

    host: str
    title: str
    command: Command
    keep: Command | None = None


class UndoLog:
    def __init__(self):
        self.lock = threading.Lock()
        self.entries: list[Undo] = []
        # Per host, what to run once its changes are undone (a reload): (title, command).
        self.again: dict[str, list[tuple[str, Command]]] = {}
        # Per host, the commands that remove what the undo of kept changes needed.
        self.pending: dict[str, list[str]] = {}

    def record(self, undo: Undo) -> None:
        with self.lock:
            self.entries.append(undo)

    def again_after(self, host: str, title: str, command: Command) -> None:
        """A step began on `host`: run `command` there once the host's changes are undone."""
        with self.lock:
            self.again.setdefault(host, []).append((title, command))

    def tidy(self, host: str, line: str) -> None:
        """`line` runs on `host` once its changes stand (in its next session, or at the end)."""
        with self.lock:
            self.pending.setdefault(host, []).append(line)

    def take_tidying(self, host: str) -> list[str]:
        with self.lock:
            return self.pending.pop(host, [])

    def keep(self) -> None:
        """The changes stand: what their undo needed is to be removed."""
        with self.lock:
            for u in self.entries:
                if u.keep is not None:
                    self.pending.setdefault(u.host, []).append(u.keep.line())
            self.entries.clear()

    def replay(self, run_quietly, on_each, note, hosts: list[str] | None = None) -> list[str]:
        """Every host's changes undone (only those of `hosts`, if given),
        newest first, hosts at once (`on_each`), then what must run again
        there (Apache reloads the previous config); each command with
        `run_quietly`'s time limit, so a host that stopped answering cannot
        hold the rollback of the others. Their entries leave the log.
        Returns what could not be undone."""
        with self.lock:
            mine = [u for u in self.entries if hosts is None or u.host in hosts]
            self.entries = [u for u in self.entries if hosts is not None and u.host not in hosts]
            # Hosts in the order of their first change, each one's changes newest first.
            todo: dict[str, list[tuple[str, Command]]] = {u.host: [] for u in mine}
            for u in reversed(mine):
                todo[u.host].append((u.title, u.command))
            for host, undo in todo.items():
                undo += [(f"then: {title}", c) for title, c in self.again.pop(host, ())]
        if not todo:
            return []
        note(f"rolling back {len(mine)} change(s)" + (f" on {', '.join(todo)}" if hosts is not None else ""))

        def undo_host(host: str) -> list[str]:
            return [f"{host}: {title}: {detail(result)}" for title, command in todo[host]
                    if not (result := run_quietly(host, command.line())).ok]

        return [p for found in on_each(list(todo), undo_host) for p in found]
