"""The built-in stages: each turns a Context into a tuple of steps.

A stage is any callable `(Context) -> Sequence[Step]`. Others come from the
`deployer.stages` entry point group or from `stages:` in targets.yaml.
"""

import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib.metadata import entry_points

from deployer import context, steps
from deployer.artifact import wheels
from deployer.config import Hook, names
from deployer.context import Context
from deployer.errors import DeployError, TemplateError, UsageError
from deployer.plan import rollout, template, vhost
from deployer.quoting import Command, assignment
from deployer.remote import hostscripts

StageFn = Callable[[Context], Sequence[steps.Step]]


def package(ctx: Context) -> tuple[steps.Step, ...]:
    return (steps.Build(f"package {ctx.target.package.source}", source=ctx.target.package.source,
                        rules=ctx.package_rules, dest=ctx.tarball, manifest=ctx.manifest),)


def vpn(ctx: Context) -> tuple[steps.Step, ...]:
    v = ctx.target.vpn
    if v.kind == "none":
        return ()
    return (steps.OpenVpn(f"open VPN ({v.config})", config=v.config, timeout=v.timeout,
                          probe=ctx.target.hosts[0].address, linger=v.linger),)


def upload(ctx: Context) -> tuple[steps.Step, ...]:
    # Names of the run's own beside the releases: the part-made tree, and
    # the artifact's copy that the other hosts read from the first one.
    tmp = posixpath.join(ctx.releases_dir, f".{ctx.release}.deployer-{ctx.run_id}")
    relay_dir = posixpath.join(ctx.releases_dir, f".deployer-relay-{ctx.run_id}")
    tag = f"deployer-relay-{ctx.run_id}"
    t = ctx.target
    relay = store = None
    # One host is sent the artifact: through a store or a relay, it would cross the tunnel as often.
    if t.transport == "ssh" and t.artifact_store is not None and len(t.hosts) > 1:
        store = steps.Store(t.artifact_store, fetch=hostscripts.fetch_url(relay_dir, int(t.step_timeout)))
    elif t.transport == "ssh" and t.relay and len(t.hosts) > 1:
        source = t.hosts[0]
        relay = steps.Relay(source.name, close=hostscripts.close(relay_dir, tag),
                            fetch=hostscripts.fetch(relay_dir, source.address, source.port, int(t.step_timeout)),
                            limit=t.relay_limit)
    shared = t.shared
    python = t.python
    rendered = tuple(f.path for f in t.files if f.shared)
    return (
        *([steps.Run(f"check that the shared files are in {ctx.shared_dir}", ctx.host_names, waits=False,
                     command=hostscripts.shared_files(ctx.shared_dir, shared.files))] if shared.files else []),
        *([steps.Run(f"check that {python.interpreter} is Python {python.version} for {python.platform}",
                     ctx.host_names, waits=False,
                     command=hostscripts.python_check(python.interpreter, python.version, python.platform))]
          if python else []),
        steps.Upload(f"upload and unpack release {ctx.release}", ctx.host_names, build=package(ctx)[0],
                     state_first=hostscripts.live_state(ctx.deploy_path, True, t.link_from_other_instances),
                     state=hostscripts.live_state(ctx.deploy_path, False, t.link_from_other_instances),
                     # The key may read the copy as long as a step may take.
                     command=hostscripts.unpack(ctx.releases_dir, ctx.release_path, tmp, ctx.run_id,
                                                ctx.deploy_path, relay_dir, tag, int(t.step_timeout),
                                                t.link_from_other_instances),
                     undo=hostscripts.discard(ctx.release_path, tmp, ctx.run_id, relay_dir), relay=relay,
                     store=store),
        # Before migrate and hooks, which run with it; its undo removes it if no other release uses it.
        *([steps.Run(f"virtualenv {ctx.venv} for the release: reuse it, or build it from the release's wheels",
                     ctx.host_names, waits=False,
                     # Waits for another run's build of it, and says so before the step's own limit.
                     command=hostscripts.venv(ctx.release_path, ctx.venvs_dir, ctx.venv, python.interpreter,
                                              int(t.step_timeout * 0.8)),
                     undo=hostscripts.prune_venvs(ctx.venvs_dir, t.deploy_root,
                                                  posixpath.join(ctx.release_path, context.VENV_LINK)),
                     undo_safe=True)]
          if python else []),
        # In the release before migrate and hooks run in it; undone with the release.
        *([steps.Run(f"link {', '.join((*shared.paths, *rendered))} to {ctx.shared_dir}"
                     + (f" ({', '.join(shared.writable)} writable for group {shared.group})" if shared.writable
                        else ""), ctx.host_names, waits=False,
                     command=hostscripts.link_shared(ctx.release_path, ctx.shared_dir, shared, rendered))]
          if shared.paths or rendered else []),
        *_release_files(ctx),
    )


def _release_files(ctx: Context) -> tuple[steps.Install, ...]:
    """The files: of targets.yaml rendered into the new release (or the
    shared folder, which the release links to), and the exported vars in
    context.ENV_FILE (mode 0600: for the deploy user's commands)."""
    mark = vhost.owner_mark(ctx.name)
    made = [(f"write {f.path} in {'the shared folder' if f.shared else 'the release'}, from {f.template}",
             ctx.shared_dir if f.shared else ctx.release_path, f.path,
             template.render(_read_template(f.template), ctx.vars, f.template), f.mode, f.chown)
            for f in ctx.target.files]
    exported = ctx.exported
    if exported:
        made.append((f"write {context.ENV_FILE} in the release: {', '.join(exported)} for migrate and hooks",
                     ctx.release_path, context.ENV_FILE,
                     "".join(f"{assignment(k, v)}\n" for k, v in exported.items()), 0o600, ""))
    return tuple(steps.Install(title, ctx.host_names, path=posixpath.join(root, rel),
                               content=f"{mark}\n{content}", mark=mark, mode=mode, owner=owner,
                               work=posixpath.join(root, posixpath.dirname(rel),
                                                   f".{posixpath.basename(rel)}.deployer-{ctx.run_id}"))
                 for title, root, rel, content, mode, owner in made)


def _read_template(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"{path}: cannot read template: {e.strerror}") from None


_DEFINES_OURS = re.compile(r"^\s*(?:un)?define\s+[\"']?deployer-next-", re.IGNORECASE | re.MULTILINE)
_SERVER_NAME = re.compile(r"\s*server(?:name|alias)\s+(.*)", re.IGNORECASE)


def served_names(vhost: str, hostname: str) -> tuple[str, ...]:
    """HOSTNAME and every name the rendered vhost answers to (a var can add a
    ServerAlias): each must be free of other sites on the hosts."""
    names = {hostname.lower()}
    for line in vhost.splitlines():
        m = _SERVER_NAME.fullmatch(line)
        if m:
            for word in m.group(1).split():
                name = re.sub(r"^[a-z][a-z0-9+.-]*://|:[0-9*]+$", "", word.strip('"').lower())
                if name:
                    names.add(name)
    return tuple(sorted(names))


def render(ctx: Context) -> tuple[steps.Step, ...]:
    path = ctx.target.template
    mark = vhost.owner_mark(ctx.name)
    content = f"{mark}\n{template.render(_read_template(path), ctx.vars, path)}"
    # Apache's Define sets what <IfDefine> asks: such a line would make every
    # reload read an instance's untested next vhost.
    if _DEFINES_OURS.search(content):
        raise TemplateError(f"{path}: it defines a deployer-next-* name, which deployer keeps for testing a"
                            " next vhost (apache2ctl -t -D deployer-next-NAME); remove that Define")
    names = served_names(content, ctx.hostname)
    site = vhost.site(ctx)
    record = posixpath.join(ctx.code_path, VHOST_RECORD)
    return (
        steps.Run(f"check that no other site serves {' or '.join(names)}", ctx.host_names,
                  command=hostscripts.names_are_free(site.dir, ctx.name, names), waits=False),
        vhost.ours(ctx),
        *vhost.write(ctx, content=content),
        # What a rollback to this release installs again; only the deploy user reads it (secrets).
        # Only in a release this run makes: without upload, DEPLOY_PATH may not be one yet.
        *([steps.Install(f"keep the vhost in the release, for a rollback to it: {VHOST_RECORD}", ctx.host_names,
                         path=record, content=content, mark=mark, mode=0o600,
                         work=posixpath.join(ctx.code_path, f"{VHOST_RECORD}.deployer-{ctx.run_id}"))]
          if ctx.uploads else []),
        # Checked here as well as in restart: a broken vhost must fail the
        # deploy before migrate changes the database, which no undo reverts.
        vhost.test(ctx, waits=False),
    )


# In every release: the vhost it was deployed with.
VHOST_RECORD = ".deployer-vhost"


def activate(ctx: Context, live: tuple[str, ...]) -> tuple[steps.Step, ...]:
    """A rollback: every host back to `ctx.release`, with the vhost it was
    deployed with, if each host's live release is still one of `live`."""
    return (
        steps.Run(f"check that release {ctx.release} is whole and the live release unchanged", ctx.host_names,
                  command=hostscripts.can_activate(ctx.deploy_path, ctx.release_path, VHOST_RECORD, live),
                  waits=False),
        *vhost.write(ctx, source=posixpath.join(ctx.release_path, VHOST_RECORD)),
        *_go_live(ctx, promotes=True),
    )


def migrate(ctx: Context) -> tuple[steps.Step, ...]:
    if ctx.target.migrate is None:
        return ()
    # Once per deploy, on the first host, in the new release: the
    # database is shared and the old code keeps serving until the switch.
    return (steps.Run(f"migrate: {ctx.target.migrate}", ctx.host_names[:1],
                      command=_script(ctx, ctx.target.migrate, ctx.code_path),
                      timeout=ctx.target.migrate_timeout, lasting=True),)


# With `python:`, what runs in a release finds the virtualenv's programs
# first, as its bin/activate would have it (VIRTUAL_ENV is in the environment).
_ACTIVATE = 'PATH="$VIRTUAL_ENV/bin:$PATH"; export PATH\n'
# The exported vars, from the release's ENV_FILE: a secret on a command line
# would be in every user's `ps`.
_ENV = f'"$RELEASE_PATH/{context.ENV_FILE}"'
_EXPORTS = f"[ ! -f {_ENV} ] || {{ set -a; . {_ENV}; set +a; }}\n"


# With writable shared folders, what migrate and hooks make there stays
# writable for the web server's group (the folders are setgid: theirs).
_GROUP_WRITES = "umask 002\n"


def _script(ctx: Context, text: str, cwd: str | None) -> Command:
    """A command from targets.yaml, run in `cwd` on the hosts (None: here, where deploy runs)."""
    exports = any(v.export for v in ctx.target.vars.values())  # a destroy reads the live release's
    parts = ((_ACTIVATE, ctx.target.python), (_EXPORTS, exports), (_GROUP_WRITES, ctx.target.shared.writable))
    prefix = "".join(part for part, applies in parts if applies and cwd is not None)
    return Command.script(prefix + text, cwd=cwd, env=ctx.environment())


def restart(ctx: Context) -> tuple[steps.Step, ...]:
    # Without render in the run (`--only restart`), no next vhost was
    # written: Apache reloads what it has.
    return _go_live(ctx, promotes="render" in ctx.stages)


def _go_live(ctx: Context, promotes: bool) -> tuple[steps.Step, ...]:
    """After migrate has ended: the hosts in batches (see rollout.py), each
    host of a batch switched to the release, then its next vhost tested and
    made live and Apache reloaded, in one session; then the batch's health
    check, and a pause before the next batch. A host that fails puts every
    host back (with `max_failed`, only itself, within the budget)."""
    t = ctx.target
    batches = rollout.batches(ctx.host_names, t.batches)
    out: list[steps.Step] = []
    for i, hosts in enumerate(batches):
        which = f" (batch {i + 1} of {len(batches)})" if len(batches) > 1 else ""
        out += [
            # Only to a release this run uploaded, or rolls back to: `--only restart`
            # must not point the live path at a directory that does not exist.
            *([steps.Link(f"switch {ctx.deploy_path} to release {ctx.release}{which}", hosts, waits=True,
                          path=ctx.deploy_path, target=ctx.release_path,
                          work=f"{ctx.deploy_path}.deployer-{ctx.run_id}", commit=True)]
              if ctx.switches else []),
            # In the switch's session: each host reloads as soon as it has switched.
            replace(vhost.promote(ctx, hosts) if promotes else vhost.reload(ctx, hosts=hosts),
                    waits=not ctx.switches),
            *_health(ctx, hosts),
        ]
        if t.batch_pause and i + 1 < len(batches):
            out.append(steps.Pause(f"pause {t.batch_pause:g} s before batch {i + 2} of {len(batches)}",
                                   seconds=t.batch_pause))
    return tuple(out)


def lock(ctx: Context, takes_over: str = "") -> steps.Lock:
    what = f"take over the lock of run {takes_over}" if takes_over else "lock instance"
    return steps.Lock(f"{what} {ctx.name} on every host", ctx.host_names, state=ctx.state_dir,
                      run_id=ctx.run_id, owner=context.lock_owner(ctx), wait=ctx.lock_wait, takes_over=takes_over,
                      hint=(f"wait for it with --lock-wait SECONDS; if that run is gone (killed), `deployer unlock"
                            f" {ctx.name}` removes its lock and undoes what it left"))


def undo_run(ctx: Context, run_id: str, keep: bool = False) -> tuple[steps.Step, ...]:
    """What run `run_id`, now gone, changed and never finished, undone
    newest first from what it kept for its own undo (every one of these is
    safe where that run never got to), then Apache reloaded. With `keep`
    (the run was past its commit point: a host's history says it was done),
    its changes stand on every host instead: only what their undo needed,
    and what it left half-made, go."""
    if run_id != "-" and not names.RUN_ID.fullmatch(run_id):
        raise DeployError(f"{run_id!r} is not a run id deployer makes; not undoing anything for it")
    gone = replace(ctx, run_id=run_id, release="")
    switch = steps.Link("", path=ctx.deploy_path, work=f"{ctx.deploy_path}.deployer-{run_id}")
    record = steps.Install("", path=posixpath.join(ctx.deploy_path, VHOST_RECORD),
                           work=posixpath.join(ctx.deploy_path, f"{VHOST_RECORD}.deployer-{run_id}"))
    site = vhost.site(ctx)
    # What the run changed, newest first: (path, its undo, what keeping it tidies).
    changes = ((site.live, vhost.apache(ctx, "restore", run_id), hostscripts.forget(site.work(site.live, run_id))),
               *((s.path, s.undo(), s.keep()) for s in (switch, record, *reversed(vhost.write(gone)))))
    relay = posixpath.join(ctx.releases_dir, f".deployer-relay-{run_id}")
    hosts = ctx.host_names
    return (
        steps.Run(f"stop what run {run_id} still runs on the host", hosts, waits=False,
                  command=hostscripts.stop_run(run_id, hostscripts.STOP_GRACE)),
        *(steps.Run(f"keep {path} as run {run_id} left it", hosts, command=kept, waits=False) if keep
          else steps.Run(f"put back {path} as it was before run {run_id}", hosts, command=undo, waits=False)
          for path, undo, kept in changes),
        steps.Run(f"remove what run {run_id} left half-made beside the releases", hosts, waits=False,
                  command=hostscripts.discard_run(ctx.releases_dir, ctx.deploy_path, run_id, keep)),
        steps.Run(f"withdraw the relay key of run {run_id}", hosts, waits=False,
                  command=hostscripts.close(relay, f"deployer-relay-{run_id}")),
        vhost.reload(ctx, waits=False),
    )


def retire(ctx: Context) -> tuple[steps.Step, ...]:
    """Destroy, while it can still be undone: the site disabled and its
    vhosts removed on every host, then Apache checked and reloaded. A
    failure puts them back, and the reload runs again: every other site
    keeps serving."""
    site, hosts, mark = vhost.site(ctx), ctx.host_names, vhost.owner_mark(ctx.name)
    work = site.work(site.enabled, ctx.run_id)
    return (
        steps.Run(f"disable site {ctx.name}.conf", hosts, waits=False,
                  command=hostscripts.unlink(site.enabled, work),
                  undo=hostscripts.restore_link(site.enabled, work), keep=hostscripts.forget(work)),
        *(steps.Run(f"remove sites-available/{posixpath.basename(path)}", hosts, waits=False,
                    command=hostscripts.remove_file(path, mark, site.work(path, ctx.run_id)),
                    undo=hostscripts.restore(path, site.work(path, ctx.run_id)),
                    keep=hostscripts.forget(site.work(path, ctx.run_id)))
          for path in (site.live, site.stub, site.next)),
        vhost.reload(ctx, waits=False),
    )


def purge(ctx: Context, keep_shared: bool) -> steps.Run:
    """Destroy, once every host has stopped serving the instance: its code,
    and its shared files unless they are kept."""
    kept = ctx.target.shared.files
    what = "releases and live path" + ("" if keep_shared else f", and its shared files in {ctx.shared_dir}"
                                       + (f" but {', '.join(kept)} (placed by hand)" if kept else ""))
    return steps.Run(f"remove {ctx.name}'s {what}", ctx.host_names,
                     command=hostscripts.purge(ctx.deploy_path, ctx.releases_dir,
                                               "" if keep_shared else ctx.shared_dir, kept))


def prune(ctx: Context) -> steps.Run:
    keep = ctx.target.keep_releases
    return steps.Run(f"keep the newest {keep} releases, the live one and the one before it", ctx.host_names,
                     command=hostscripts.prune(ctx.releases_dir, ctx.deploy_path, keep,
                                               posixpath.join(ctx.state_dir, "history")))


def prune_venvs(ctx: Context) -> steps.Run:
    return steps.Run("remove the virtualenvs that no release uses any more", ctx.host_names,
                     command=hostscripts.prune_venvs(ctx.venvs_dir, ctx.target.deploy_root))


def prepare(ctx: Context, copy_to: str) -> tuple[steps.Step, ...]:
    """What runs on this machine before the source is hashed: the copy of
    the source that the build runs in (if `copy_to`), the wheels of
    `python:`, and the commands of `build:`."""
    t = ctx.target
    source = copy_to or t.package.source
    env = {"CONFIG_NAME": ctx.name, "HOSTNAME": ctx.hostname, "DEPLOY_PATH": ctx.deploy_path}
    timeout = t.build.timeout if t.build else None
    return (
        *([steps.CopySource(f"copy {t.package.source} to {copy_to}, to build in", source=t.package.source,
                            dest=copy_to, rules=ctx.package_rules)] if copy_to else []),
        *([steps.Wheels(f"wheels of {t.python.requirements} for Python {t.python.version} on"
                        f" {t.python.platform}", python=t.python, dest=wheels.set_path(t.python),
                        timeout=max(t.step_timeout, timeout or 0))] if t.python else []),
        *(steps.Run(f"build: {command}", command=Command.script(command, cwd=source, env=env), timeout=timeout)
          for command in (t.build.run if t.build else ())),
    )


def _health(ctx: Context, hosts: tuple[str, ...]) -> tuple[steps.Step, ...]:
    h = ctx.target.health
    if h is None or not ctx.hostname:
        return ()
    local = ctx.target.transport == "local"
    addresses = tuple("127.0.0.1" if local else host.address for host in ctx.target.hosts if host.name in hosts)
    check = steps.HealthCheck("", hosts, addresses=addresses, port=h.port, path=h.path,
                              host_header=ctx.hostname, statuses=h.statuses, timeout=h.timeout, headers=h.headers)
    return (replace(check, title=f"health check: GET {h.path} answers {check.expects}"),)


BUILTIN: dict[str, StageFn] = {
    "package": package, "vpn": vpn, "upload": upload,
    "render": render, "migrate": migrate, "restart": restart,
}


def hook_step(ctx: Context, hook: Hook, title: str) -> steps.Run:
    hosts = {"all": ctx.host_names, "first": ctx.host_names[:1], "local": ()}[hook.on]
    # Remote hooks start in the new release; local ones where deploy was started.
    return steps.Run(title, hosts, command=_script(ctx, hook.run, ctx.code_path if hosts else None), lasting=True)


# A first-deploy hook runs where the live path is not there yet: the switch
# to the new release comes later, in restart.
_FIRST_DEPLOY = ('if [ -e "$DEPLOY_PATH" ] || [ -L "$DEPLOY_PATH" ]; then'
                 ' echo "not the first deploy of $CONFIG_NAME on this host: not run"; exit 0; fi\n')


def first_deploy(ctx: Context) -> tuple[steps.Run, ...]:
    """The hooks for an instance's first deploy to a host (a database of its own)."""
    if not ctx.uploads:
        return ()
    return tuple(replace(hook_step(ctx, h, f"on the first deploy: {h.run}"),
                         command=_script(ctx, _FIRST_DEPLOY + h.run, ctx.code_path))
                 for h in ctx.target.first_deploy)


def on_destroy(ctx: Context) -> tuple[steps.Run, ...]:
    """The hooks of `deployer destroy`, run in the live release."""
    return tuple(hook_step(ctx, h, f"on destroy: {h.run}") for h in ctx.target.on_destroy)


def shell_stage(hook: Hook) -> StageFn:
    def plan(ctx: Context) -> tuple[steps.Step, ...]:
        return (hook_step(ctx, hook, hook.run),)
    return plan


def find(name: str, ctx: Context) -> StageFn:
    """A stage by name: built-in, then targets.yaml `stages:`, then a plugin."""
    if name in BUILTIN:
        return BUILTIN[name]
    if name in ctx.target.stages:
        return shell_stage(ctx.target.stages[name])
    plugins = entry_points(group="deployer.stages", name=name)
    if not plugins:
        raise UsageError(
            f"unknown stage {name!r} in the pipeline of target {ctx.target.entry!r}: not built"
            " in, not under stages: in targets.yaml, and no plugin in the deployer.stages group"
        )
    # The same plugin can be found twice (a checkout on PYTHONPATH and its
    # install); two different ones for one name would be a coin toss.
    values = sorted({ep.value for ep in plugins})
    if len(values) > 1:
        raise UsageError(f"stage {name!r} is registered by more than one installed plugin: {', '.join(values)};"
                         " uninstall one")
    ep = next(ep for ep in plugins if ep.value == values[0])
    try:
        fn = ep.load()
    except Exception as e:  # noqa: BLE001 - a plugin's import can raise anything; nothing has run yet
        raise UsageError(f"stage {name!r}: its plugin {ep.value} cannot be loaded: {type(e).__name__}: {e}") from e
    if not callable(fn):
        raise UsageError(f"stage {name!r}: its plugin {ep.value} is not a function of the context")
    return fn
