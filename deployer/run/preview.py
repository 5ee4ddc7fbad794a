"""`deploy --dry-run --diff`: what a run would change on each host, read
from the hosts and changed nowhere.

It connects as a run does (the target's VPN, SSH with its host keys) and
runs one read per host: the instance's vhost as the host has it, the live
release, and what the upload needs to know to send only what changed. No
lock is taken, no history line written, nothing made or removed on any host.
What it shows per host: a unified diff of that vhost against the one the
run would render, the live release, how much of the artifact the upload
would send, and what a real run would refuse there.

The hosts' vhosts may hold secrets, also ones this machine does not know
(a secret not set here, or its value before it was changed): see _Masks.
"""

import base64
import binascii
import difflib
import os
import re
from dataclasses import dataclass, replace

from deployer import steps
from deployer.artifact import delta
from deployer.config import Missing
from deployer.context import Context
from deployer.output import MASK, Reporter, human_size
from deployer.plan.stages import vpn as vpn_stage
from deployer.plan.vhost import owner_mark
from deployer.plan.vhost import site as vhost_site
from deployer.quoting import Command
from deployer.remote import hostscripts
from deployer.run.executor import Executor

# As the install (remote/sh/install.sh): a larger vhost is never replaced, so never read.
VHOST_LIMIT = 1024 * 1024


def read_vhost(live: str, conf: str) -> Command:
    """Print the state of `conf` (and its content) and whether `live` is a link (see remote/sh/read-vhost.sh)."""
    return hostscripts.program("read-vhost", live, conf, str(VHOST_LIMIT))


def vhost_path(ctx: Context) -> str:
    return vhost_site(ctx).live


def read_plan(ctx: Context) -> steps.Plan:
    """The VPN, then on each host its vhost and what the upload would read
    first: the live release's state, with its file list from the first host
    only, as the upload asks (hostscripts.live_state, the same script)."""
    hosts = ctx.host_names
    vhost = read_vhost(ctx.deploy_path, vhost_path(ctx))

    def read(which: tuple[str, ...], full: bool) -> steps.Run:
        state = hostscripts.live_state(ctx.deploy_path, full, ctx.target.link_from_other_instances)
        # Whole: a vhost and a file list can be longer than a log's tail.
        return steps.Run("read the vhost and the live release" + (", with its file list" if full else ""), which,
                         command=Command(argvs=vhost.argvs + state.argvs),
                         output_limit=delta.LIST_LIMIT + 2 * VHOST_LIMIT)

    return steps.Plan((("vpn", vpn_stage(ctx)),
                       ("read", (read(hosts[:1], True), *([read(hosts[1:], False)] if hosts[1:] else [])))))


@dataclass(frozen=True)
class HostView:
    """What one host said, parsed."""

    live: delta.Live
    release: str  # the live release's name, "" if none
    live_not_link: bool
    vhost_state: str  # file, absent, link, special, large, unreadable
    vhost: bytes = b""
    vhost_size: int = 0


def parse(stdout: str) -> HostView:
    state, data, size, not_link = "unreadable", b"", 0, False
    for row in stdout.splitlines():
        kind, _, value = row.partition(" ")
        if kind == "live-not-link":
            not_link = True
        elif kind == "vhost":
            state, _, rest = value.partition(" ")
            if state == "file":
                try:
                    data = base64.b64decode(rest, validate=True)
                except binascii.Error:
                    state = "unreadable"
            elif state == "large":
                size = int(rest) if rest.isdigit() else 0
    return HostView(delta.parse(stdout), delta.live_release(stdout), not_link, state, data, size)


def show(ctx: Context, plan: steps.Plan, reporter: Reporter, missing: tuple[Missing, ...], parallel: int) -> None:
    """Read every host, then show what the run `plan` would change on each."""
    reading = read_plan(ctx)
    executor = Executor(ctx, _Hushed(reporter), parallel)
    executor.run(reading)
    views = {h: parse(r.stdout) for step in reading.stages[-1][1] for h, r in executor.outputs(step).items()}
    first = ctx.host_names[0]
    masks = _Masks.of(ctx, missing, reporter)
    # The run writes the next vhost, which becomes the live one.
    rendered = next((s for _, s in plan.steps() if isinstance(s, steps.Install) and s.path == vhost_site(ctx).next
                     and not s.source), None)
    unrendered = ("the template is not on this machine" if any(m.kind == "template" for m in missing)
                  else "this run does not write it (no render stage)")
    for host in ctx.host_names:
        view = views[host]
        live = view.live
        # As the upload has it: a host other than the first is sent what
        # differs from the first host's list only if it holds the same one.
        if host != first and live.base and live.listed is None and views[first].live.base == live.base:
            live = replace(live, listed=views[first].live.listed)
        upload, send = _upload(ctx, live)
        vhost, diff, refusals = _vhost(ctx, host, view, rendered or unrendered, masks)
        if view.live_not_link:
            refusals.insert(0, f"{ctx.deploy_path} exists and is not a symlink: a real run would refuse to"
                            " replace it (the upload fails)")
        lines = [f"== {host}: what a run would change (read only)",
                 f"  live release: {view.release or 'none'}",
                 f"  upload: {upload}",
                 f"  vhost {vhost_path(ctx)}: {vhost}",
                 *(f"    {line}" for line in diff),
                 *(f"  a real run would fail here: {r}" for r in refusals)]
        reporter.section(lines, "preview", host=host, live=view.release or None, upload=upload,
                      send=send, vhost={"path": vhost_path(ctx), "state": view.vhost_state, "summary": vhost,
                                        "diff": diff}, refusals=refusals)


class _Hushed(Reporter):
    """The read's own events stay out of the output: a host's answer holds
    its vhost in base64, where no secret can be masked. Notes go through;
    a read that fails ends the run with its error (stderr only)."""

    def __init__(self, main: Reporter):
        super().__init__(main.stream, frozenset(main.secrets))
        self.main = main

    def note(self, text):
        self.main.note(text)


def _upload(ctx: Context, live: delta.Live) -> tuple[str, dict | None]:
    """What the upload would send to a host whose live release is `live`, in words and numbers."""
    m = ctx.manifest
    if not ctx.uploads:
        return "none in this run (no upload stage): nothing is sent", None
    if m is None:
        return "cannot say: the package source is not on this machine", None
    plan = delta.against(m, live)
    total = sum(_sizes(ctx, (p for p, _, _ in m.sums)))
    where = f"the live release of {live.seed}" if live.seed else "the live release"
    if plan.send is None:
        why = ("no live release with a file list" if live.base is None else
               f"{where} is not the first host's" if live.listed is None else
               f"{where} would give it less than a tenth of its files")
        count = {"files": len(m.sums), "of": len(m.sums), "bytes": total, "whole": True}
        return f"the whole artifact, {len(m.sums)} files ({human_size(total)}): {why}", count
    size = sum(_sizes(ctx, plan.send))
    drifted = len(plan.send & live.drift)
    changed = f", {drifted} of them changed on the host since they were unpacked" if drifted else ""
    count = {"files": len(plan.send), "of": len(m.sums), "bytes": size, "whole": False}
    return (f"would send {len(plan.send)} of {len(m.sums)} files ({human_size(size)}){changed}; the rest is"
            f" linked from {where}", count)


def _sizes(ctx: Context, paths) -> list[int]:
    out = []
    for path in paths:
        try:
            out.append(os.lstat(os.path.join(ctx.target.package.source, path)).st_size)
        except OSError:
            out.append(0)  # gone since the scan: a real run would fail its package step anyway
    return out


def _vhost(ctx: Context, host: str, view: HostView, rendered: steps.Install | str,
           masks: "_Masks") -> tuple[str, list[str], list[str]]:
    """In words, the diff's lines, and why a real run would fail here.
    `rendered`: the step that writes the vhost, or why there is none."""
    conf = vhost_path(ctx)
    user = next((h.user for h in ctx.target.hosts if h.name == host), None) or "the login user"
    refusals = []
    state = view.vhost_state
    if state == "unreadable":
        return f"not readable by {user}: not compared", [], refusals
    # What the install refuses (remote/sh/install.sh), in its words.
    refused = {"link": ("a symbolic link", "is a symbolic link; deployer will not write through it"),
               "special": ("not a regular file", "is not a regular file; deployer will not replace it"),
               "large": (human_size(view.vhost_size), "is larger than 1 MiB; deployer will not replace it")}
    if state in refused:
        what, why = refused[state]
        return f"{what}: not compared", [], [f"{conf} {why}"]
    if isinstance(rendered, str):
        return f"{'not ' if state == 'absent' else ''}on the host; not compared: {rendered}", [], refusals
    if state == "absent":
        return "not on the host yet: the run writes it whole (as in the plan above)", [], refusals
    old = view.vhost.decode("utf-8", "backslashreplace")
    new = rendered.content
    if old.split("\n", 1)[0] != owner_mark(ctx.name):
        refusals.append(f"{conf} was not written by deployer (its first line is not deployer's mark);"
                        " deployer will not replace it")
    if old == new:
        return "unchanged", [], refusals
    before, after = _lines(old), _lines(new)
    if before == after:
        return "differs only in the newline at its end", [], refusals
    lines = []
    for line in difflib.unified_diff(before, after, f"{host}:{conf}", f"rendered from {ctx.target.template}",
                                     lineterm=""):
        if line.startswith(("---", "+++", "@@")):
            lines.append(_printable(line))
        elif line.startswith("+"):
            lines.append(_printable("+" + masks.rendered(line[1:])))
        else:
            lines.append(_printable(line[0] + masks.host(line[1:], removed=line[0] == "-")))
    body = [line[:1] for line in lines[2:] if not line.startswith("@@")]
    out, new_lines = body.count("-"), body.count("+")
    return f"differs: {out} line{'s' * (out != 1)} out, {new_lines} in", lines, refusals


def _lines(text: str) -> list[str]:
    """Lines as Apache reads them: split at line feeds only."""
    return text.removesuffix("\n").split("\n") if text else []


def _printable(line: str) -> str:
    """A host's line as it can be printed: a control character (an escape
    sequence, a carriage return) is shown escaped, so it cannot forge a line
    of the output or drive the terminal."""
    return "".join(c if c.isprintable() or c == "\t" else c.encode("unicode_escape").decode() for c in line)


_TAG = re.compile(r"<<(.*?)>>")


class _Masks:
    """Secrets out of both sides of the diff. The rendered side: the
    reporter's secrets (a stand-in for a secret not set here among them).
    The host's side may hold a value this machine does not know: the
    secret before it was changed, or one not set here. So a host's line
    that matches a template line holding a secret token (the literal text
    around the token as written) has the token's place masked, whatever is
    there. Any other line only the host has, while the target has a secret,
    shows its directive only: the template line that put the secret there
    may have changed too."""

    def __init__(self, patterns: list[tuple[list[str], list[bool]]], secrets: bool, redact):
        self.patterns, self.secrets, self.redact = patterns, secrets, redact

    @classmethod
    def of(cls, ctx: Context, missing: tuple[Missing, ...], reporter: Reporter) -> "_Masks":
        secret = {k for k, v in ctx.target.vars.items() if v.secret}
        patterns = []
        try:
            with open(ctx.target.template, encoding="utf-8", errors="replace") as f:
                template = f.read()
        except OSError:
            template = ""  # not on this machine: no rendered vhost, no diff
        for line in template.split("\n"):
            parts = _TAG.split(line)
            keys = [p.strip().lstrip("&").strip() for p in parts[1::2]]
            if secret & set(keys):
                patterns.append((parts[0::2], [k in secret for k in keys]))
        return cls(patterns, bool(secret), reporter.redact)

    def rendered(self, line: str) -> str:
        return self.redact(line)

    def host(self, line: str, removed: bool) -> str:
        for literals, secret in self.patterns:
            spans = _token_spans(literals, line)
            if spans is not None:
                out, done = [], 0
                for (start, end), masked in zip(spans, secret, strict=True):
                    if masked:
                        out += [line[done:start], MASK]
                        done = end
                return self.redact("".join(out) + line[done:])
        if removed and self.secrets:
            directive, _, rest = line.strip().partition(" ")
            return f"{line[:len(line) - len(line.lstrip())]}{directive} {MASK}" if rest.strip() else line
        return self.redact(line)


def _token_spans(literals: list[str], line: str) -> list[tuple[int, int]] | None:
    """Where each token of a template line is in `line`, if `line` has that
    line's literal text around them: each literal found after the one
    before it, so the time is linear in the line's length (a regex of
    `.*` per token backtracks without bound on a hostile line)."""
    first, last = literals[0], literals[-1]
    end = len(line) - len(last)
    if not line.startswith(first) or not line.endswith(last) or end < len(first):
        return None
    spans, at = [], len(first)
    for literal in literals[1:-1]:
        found = line.find(literal, at, end)
        if found < 0:
            return None
        spans.append((at, found))
        at = found + len(literal)
    spans.append((at, end))
    return spans
