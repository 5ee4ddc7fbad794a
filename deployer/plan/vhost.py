"""Where an instance's vhost lives on a host, and the steps that change it.

Apache reads only vhosts that passed configtest. The instance's entry in
sites-enabled is a link to a stub of deployer's, NAME.stub, which includes
the live vhost, NAME.conf; a run writes the next one beside it, NAME.next,
which Apache reads only when told to by a define on its command line (a
test: `apache2ctl -t -D deployer-next-NAME`), and makes it NAME.conf only
once that test has passed, holding the host's Apache lock through the
reload (see remote/sh/apache.sh). A reload by anyone else (another
instance's deploy, logrotate, an admin) reads the live vhosts, never one
being tried.
"""

import posixpath
from dataclasses import dataclass

from deployer import steps
from deployer.context import Context
from deployer.quoting import Command
from deployer.remote import hostscripts


def owner_mark(name: str) -> str:
    """The first line of every file deployer writes for instance `name`: a
    file at that path without it is not ours to replace."""
    return f"# Written by deployer for instance {name}; the next deploy replaces this file."


# How long apache.sh may take on a host, waits included (another run's turn
# at Apache, Apache loading its config, each daemon replaced): a little less
# than the step's own limit, so that it says itself what it waited for.
def apache_wait(ctx: Context) -> int:
    return max(1, int(ctx.target.step_timeout * 0.9))


@dataclass(frozen=True)
class Site:
    """The paths of instance `name`'s vhost under Apache's folder `dir`."""

    dir: str
    name: str

    @property
    def available(self) -> str:
        return posixpath.join(self.dir, "sites-available")

    @property
    def enabled(self) -> str:
        return posixpath.join(self.dir, "sites-enabled", f"{self.name}.conf")

    @property
    def live(self) -> str:
        return posixpath.join(self.available, f"{self.name}.conf")

    @property
    def next(self) -> str:
        return posixpath.join(self.available, f"{self.name}.next")

    @property
    def stub(self) -> str:
        return posixpath.join(self.available, f"{self.name}.stub")

    @property
    def define(self) -> str:
        return f"deployer-next-{self.name}"

    def work(self, path: str, run_id: str) -> str:
        """Beside `path`, what run `run_id` keeps for the undo of its change to it."""
        head, tail = posixpath.split(path)
        return posixpath.join(head, f".{tail}.deployer-{run_id}")

    def stub_content(self) -> str:
        # The paths are absolute and checked (config/build.py): no quote, $ or space.
        return (f"{owner_mark(self.name)}\n"
                f"# Apache reads {self.name}.conf, the vhost that passed configtest. deployer tests\n"
                f"# the next one, {self.name}.next, with -D {self.define}, before it makes it {self.name}.conf.\n"
                f"<IfDefine {self.define}>\n    Include \"{self.next}\"\n</IfDefine>\n"
                f"<IfDefine !{self.define}>\n    IncludeOptional \"{self.live}\"\n</IfDefine>\n")


def site(ctx: Context) -> Site:
    return Site(ctx.target.apache.dir, ctx.name)


def apache(ctx: Context, mode: str, run_id: str = "") -> Command:
    """remote/sh/apache.sh in `mode` for the instance, with the target's ctl."""
    s = site(ctx)
    return hostscripts.apache(mode, s.dir, apache_wait(ctx), s.define, s.next, s.live,
                              s.work(s.live, run_id or ctx.run_id), owner_mark(ctx.name), ctx.deploy_path,
                              ctx.target.apache.ctl)


def write(ctx: Context, content: str = "", source: str = "") -> tuple[steps.Step, ...]:
    """The instance's next vhost written (`content`, or a copy of the host's
    file `source`), and the site enabled through its stub. Neither changes
    what a reload reads: the stub includes the live vhost, as the link it
    replaces did."""
    apache, s = ctx.target.apache, site(ctx)
    mark = owner_mark(ctx.name)
    return (
        steps.Install(f"write the next vhost sites-available/{ctx.name}.next", ctx.host_names,
                      path=s.next, content=content, mark=mark, mode=apache.vhost_mode, owner=apache.vhost_chown,
                      work=s.work(s.next, ctx.run_id), source=source),
        steps.Install(f"write the site's stub sites-available/{ctx.name}.stub", ctx.host_names,
                      path=s.stub, content=s.stub_content(), mark=mark, mode=apache.vhost_mode,
                      owner=apache.vhost_chown, work=s.work(s.stub, ctx.run_id)),
        # What a2ensite does, without needing a2ensite or Debian's layout helpers.
        steps.Link(f"enable site {ctx.name}.conf", ctx.host_names,
                   path=s.enabled, target=posixpath.join("..", "sites-available", f"{ctx.name}.stub"),
                   work=s.work(s.enabled, ctx.run_id)),
    )


def ours(ctx: Context) -> steps.Run:
    """Before anything is written: the live vhost is deployer's to replace."""
    return steps.Run(f"check that sites-available/{ctx.name}.conf is deployer's to replace", ctx.host_names,
                     waits=False, command=apache(ctx, "ours"))


def test(ctx: Context, waits: bool = True) -> steps.Run:
    return steps.Run("apache configtest with the next vhost", ctx.host_names, waits=waits,
                     command=apache(ctx, "test"))


def promote(ctx: Context, hosts: tuple[str, ...]) -> steps.Run:
    """Locked on each host: the next vhost tested, made live, and Apache
    reloaded and seen to have loaded it. Undone, the live vhost is put back
    and Apache reloaded again once the host's other changes are undone."""
    s = site(ctx)
    return steps.Run("apache: test the next vhost, make it live, reload and wait until loaded", hosts,
                     command=apache(ctx, "promote"), undo=apache(ctx, "restore"),
                     keep=hostscripts.forget(s.work(s.live, ctx.run_id)), undo_safe=True,
                     after_undo=reload(ctx, again=False))


def reload(ctx: Context, waits: bool = True, again: bool = True,
           hosts: tuple[str, ...] | None = None) -> steps.Run:
    """Locked on each host (`hosts`, or all of the target's): configtest,
    graceful (or start), and wait until loaded; with `again`, once more
    after an undo."""
    title, command = "apache: configtest, reload and wait until loaded", apache(ctx, "reload")
    return steps.Run(title, ctx.host_names if hosts is None else hosts, waits=waits, command=command,
                     after_undo=reload(ctx, again=False) if again else None)


# mod_wsgi shows a daemon group's name in its processes' argv[0], cut to the
# length of Apache's own (/usr/sbin/apache2: "(wsgi:" + 10 + ")").
SHOWN_NAME = 10


def reload_notes(content: str) -> tuple[str, ...]:
    """How a deploy reloads the app this vhost serves (see
    remote/sh/lib/wsgi-reload.sh), then what in the vhost makes it drop requests."""
    groups: dict[str, list[str]] = {}
    rotation_off = False
    for line in content.splitlines():
        words = line.split()
        key = words[0].lower() if words else ""
        if key == "wsgidaemonprocess" and len(words) > 1:
            groups[words[1]] = words[2:]
        elif key == "wsgisocketrotation" and words[1:2] and words[1].lower() == "off":
            rotation_off = True
    why_not = [] if groups else ["no WSGIDaemonProcess (not mod_wsgi daemon mode)"]
    for name, options in groups.items():
        if "display-name=%{GROUP}" not in options:
            why_not.append(f"group {name} has no display-name=%{{GROUP}}, by which deployer finds its processes")
        if len(name) > SHOWN_NAME:
            why_not.append(f"mod_wsgi shows {SHOWN_NAME} characters of a group's name (under Debian's apache2;"
                           f" 8 under httpd), and {name} has {len(name)}")
    notes = [f"reload: a deploy that leaves the vhost as it was reloads Apache gracefully, which may fail a"
             f" request: {'; '.join(why_not)}" if why_not else
             f"reload: a deploy that leaves the vhost as it was restarts the mod_wsgi processes of"
             f" {', '.join(groups)} one at a time, and no request fails; one that changes it reloads Apache"]
    if groups and not rotation_off:
        notes.append("reload: WSGISocketRotation is not Off: when Apache reloads, requests its old workers"
                     " still hold fail with 503")
    return tuple(notes)
