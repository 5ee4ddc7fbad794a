"""What each kind of step does, in words and commands: one describer a kind,
found in a table; dry-run and logs show them."""

from deployer import steps
from deployer.artifact import wheels
from deployer.connectors.result import Result
from deployer.output.text import human_size, nonblank_lines, shown


def details(step: steps.Step, redact=lambda text: text) -> list[str]:
    """The lines that say exactly what a step does: dry-run and logs show them.

    Free text (a command, a file's content) is redacted whole before it is
    split into lines, so no secret can be cut in two by a line break.
    """
    describe = steps.of_kind(_DESCRIBE, step)
    return describe(step, redact) if describe else []


def _commands(command) -> list[str]:
    return [f"$ {line}" for line in command.line().splitlines()]


def _build(step: steps.Build, redact) -> list[str]:
    excl = f" (excluding {', '.join(step.rules.exclude)})" if step.rules.exclude else ""
    lines = [f"tar -czf {step.dest} -C {step.source} .{excl}"]
    m = step.manifest
    if m is not None:
        lines.append(f"{len(m.files)} files, {human_size(m.size)}")
        lines.extend(f"left out: {shown(path)}: {why}" for path, why in m.withheld)
        lines.extend(f"packaged because package/include names it: {shown(path)} ({why})"
                     for path, why in m.included)
    return lines


def _copy(step: steps.CopySource, redact) -> list[str]:
    return [f"copy {step.source} to {step.dest} (a new folder), without version control folders and the files"
            " targets.yaml names; the build runs there, and that copy is packaged"]


def _wheels(step: steps.Wheels, redact) -> list[str]:
    p = step.python
    return [f"unless {step.dest} holds a whole set (one is kept per requirements, version, platform and index),"
            " in a new folder NEW beside it, renamed to it once whole:",
            *(line for command in wheels.commands(p, "NEW") for line in _commands(command))]


def _vpn(step: steps.OpenVpn, redact) -> list[str]:
    stopped = (f"stopped {step.linger:g}s after the last one ends (vpn/linger), unless another run uses it"
               " by then" if step.linger > 0 else "stopped by the last one")
    return [f"openvpn --config {step.config} in the background, up within {step.timeout:g}s"
            f" or fail; shared with the other deploys on this machine that use this config, and {stopped};"
            f" a tunnel to {step.probe} that is already up and not deployer's is used as it is"]


def _run(step: steps.Run, redact) -> list[str]:
    lines = [f"$ {line}" for line in redact(step.command.line()).splitlines()]
    if step.undo is not None:
        lines.extend(f"on failure: $ {line}" for line in redact(step.undo.line()).splitlines())
    return lines


def _upload(step: steps.Upload, redact) -> list[str]:
    return [f"on {step.hosts[0]}, which also sends the list of files its live release holds:",
            *_commands(step.state_first),
            "on the other hosts:",
            *_commands(step.state),
            "then, in the same session, on every host:",
            *_commands(step.command),
            f"reading the files that differ from the host's live release (all of {step.local} if it has"
            " none) and the changes to the file list, on its standard input",
            *_relay_details(step.relay),
            *_store_details(step.store),
            *(f"on failure: {line}" for line in _commands(step.undo))]


def _install(step: steps.Install, redact) -> list[str]:
    if step.source:
        return [f"copy {step.source} to {step.path} (mode {step.mode:04o}; as below):", *_commands(step.command())]
    owner = f", chown {step.owner}" if step.owner else ""
    return [f"write {step.path} (mode {step.mode:04o}{owner}; only over a file whose first line is"
            " the mark below; the previous file is kept until the deploy ends and put back on failure):",
            *_commands(step.command()),
            "with this on its standard input:",
            *(f"| {line}" for line in redact(step.content).splitlines())]


def _health(step: steps.HealthCheck, redact) -> list[str]:
    headers = "".join(f", {name}: {value}" for name, value in step.headers)
    return [f"from this machine: GET http://{a}:{step.port}{step.path} with Host: {step.host_header}{headers},"
            f" until it answers {step.expects}, for at most {step.timeout:g} s (another 3xx or 4xx that lasts 5 s"
            " fails sooner); on failure, every host is put back" for a in step.addresses]


def _pause(step: steps.Pause, redact) -> list[str]:
    return [f"wait {step.seconds:g} s on this machine"]


def _link(step: steps.Link, redact) -> list[str]:
    note = " (commit point)" if step.commit else ""
    return [f"point {step.path} at {step.target}, atomically{note}:", *_commands(step.command())]


# One describer a kind of step: a new kind adds its own here.
_DESCRIBE = {steps.Build: _build, steps.CopySource: _copy, steps.Wheels: _wheels, steps.OpenVpn: _vpn,
             steps.Run: _run, steps.Upload: _upload, steps.Install: _install, steps.HealthCheck: _health,
             steps.Link: _link, steps.Pause: _pause}


def _relay_details(r: steps.Relay | None) -> list[str]:
    if r is None:
        return []
    return [f"{r.source} keeps a copy of that tarball if it is 1 MiB or more, and lets a one-time key read it;"
            f" every other host that needs the same tarball reads it from there instead, {r.limit} at a time,"
            " before it unpacks (a refused connection is tried again; else it is sent as above):",
            *(f"$ {line}" for line in r.fetch.line().splitlines()),
            f"then the key and the copy are removed from {r.source} in its next session, and on failure:",
            *(f"$ {line}" for line in r.close.line().splitlines())]


def _store_details(s: steps.Store | None) -> list[str]:
    if s is None:
        return []
    where = s.store.endpoint or f"AWS S3{f' ({s.store.region})' if s.store.region else ''}"
    return [f"this machine puts that tarball in {s.store.url} at {where} once, if it is 1 MiB or more (named by"
            " its sha256; one already there is not sent again), and every host that needs it reads it from"
            " there with a URL that expires, presigned for it, before it unpacks (if the put fails, or a host"
            " cannot read it, it is sent as above):",
            *(f"$ {line}" for line in s.fetch.line().splitlines())]


def brief(step: steps.Step, redact=lambda text: text) -> list[str]:
    """What a step changes, without the commands: the files written, in
    full (secrets masked), the package, the links. A dry run shows this
    unless --verbose asks for every command."""
    if isinstance(step, steps.Install):
        if step.source:
            return [f"copy {step.source} to {step.path}"]
        owner = f", chown {step.owner}" if step.owner else ""
        return [f"write {step.path} (mode {step.mode:04o}{owner}):",
                *(f"| {line}" for line in redact(step.content).splitlines())]
    if isinstance(step, steps.Link):
        return [f"point {step.path} at {step.target}"]
    if isinstance(step, steps.Build):
        return _build(step, redact)
    return []


def failure_lines(step: steps.Step, r: Result, printable) -> list[str]:
    """What a person needs of a step that failed on a host: the command, and
    the end of what it printed (stderr last, where the error is). `printable`
    is the reporter's: the text is redacted whole, and cut into lines only
    where a terminal would show a line break."""
    lines = []
    if isinstance(step, steps.Run):
        # A command from targets.yaml as written there; one of deployer's, its start.
        c = step.command
        command = printable(f"{c.shell}  (in {c.cwd})" if c.shell is not None and c.cwd else c.shell or c.line())
        lines.append(f"$ {command if len(command) <= 300 else command[:300] + ' ...'}")
    return lines + nonblank_lines(printable(r.stdout + r.stderr))[-40:]


def where(step: steps.Step, host: str | None = None) -> str:
    if host is not None:
        return host or "runner"
    return ", ".join(step.hosts) if step.hosts else "runner"
