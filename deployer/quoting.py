"""Every word that reaches a shell passes through here, and only here.

A `Command` is data: argv lists (quoted with shlex, joined with &&) or a shell
snippet taken verbatim from targets.yaml (trusted config, never user input),
plus the directory and environment to run it in.
"""

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    argvs: tuple[tuple[str, ...], ...] = ()
    shell: str | None = None
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, *argvs: tuple[str, ...] | list[str], cwd: str | None = None) -> "Command":
        return cls(argvs=tuple(tuple(a) for a in argvs), cwd=cwd)

    @classmethod
    def script(
        cls, text: str, cwd: str | None = None, env: dict[str, str] | None = None
    ) -> "Command":
        return cls(shell=text, cwd=cwd, env=tuple(sorted((env or {}).items())))

    def line(self) -> str:
        """The one string a POSIX shell will run."""
        parts = []
        if self.cwd:
            parts.append(shlex.join(["cd", "--", self.cwd]))
        prefix = ""
        if self.env:
            prefix = shlex.join(["env", *(f"{k}={v}" for k, v in self.env)]) + " "
        if self.shell is not None:
            parts.append(prefix + shlex.join(["sh", "-c", self.shell]))
        parts.extend(prefix + shlex.join(argv) for argv in self.argvs)
        return " && ".join(parts)

    def __str__(self) -> str:
        return self.line()


def assignment(name: str, value: str) -> str:
    """NAME='value', as a shell reads it back (`set -a; . FILE`); `name` is a token name (checked)."""
    return f"{name}={quoted(value)}"


def quoted(value: str) -> str:
    """`value` as one word of the shell."""
    return shlex.quote(value)


def words(text: str) -> tuple[str, ...]:
    """Split a configured command prefix (e.g. `sudo apache2ctl`) into argv."""
    return tuple(shlex.split(text))


PID_MARKER = b"deployer-pid:"


def reporting_pid(line: str) -> str:
    """`line`, run by a shell that first writes `deployer-pid:PID` to stderr.

    sshd starts each command as a session leader, so that pid is also the
    process group of everything the command starts: one `kill -- -PID`
    stops it all when the deploy is interrupted.
    """
    return f"echo {PID_MARKER.decode()}$$ >&2; exec /bin/sh -c {shlex.quote(line)}"


def forced_command(line: str) -> str:
    """The authorized_keys options that let a key run `line` and nothing
    else: no pty, no forwarding of any kind, no ~/.ssh/rc. sshd reads the
    option's value up to the next unescaped double quote, and `\\"` is its
    only escape."""
    return 'restrict,command="{}"'.format(line.replace('"', '\\"'))
