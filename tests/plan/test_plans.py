"""Plans as data: a config in, the exact steps out, for every stage. No host needed."""

import sys
from datetime import UTC, datetime

import pytest
import yaml

from deployer import context
from deployer.artifact import packaging
from deployer.config import load
from deployer.errors import DeployError, UsageError
from deployer.plan import pipeline, vhost
from deployer.plan import stages as stage_lib
from deployer.quoting import Command
from deployer.remote import hostscripts
from deployer.run import session
from deployer.steps import Build, HealthCheck, Install, Link, Lock, OpenVpn, Relay, Run, Upload
from tests.conftest import REPO

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
H = ("web1.internal", "web2.internal:2222")


@pytest.fixture
def make(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "manage.py").write_text("x\n")
    (tmp_path / "vpn.ovpn").write_text("client\n")
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "vhost").write_text("ServerName <<HOSTNAME>>\nRoot <<DEPLOY_PATH>> <<EXTRA>>\n")

    def build(entry=None, only=(), skip=(), overrides=None, name="alpha"):
        doc = {"defaults": {
            "hosts": ["web1.internal", {"address": "web2.internal", "port": 2222}],
            "known_hosts": "known_hosts", "package": {"source": "src", "exclude": ["*.pyc"]},
            "template": "vhost", "vars": {"EXTRA": "x"},
            "vpn": {"kind": "openvpn", "config": "vpn.ovpn", "timeout": 12},
        }, "targets": {"alpha": entry or {}, "*": {}}}
        (tmp_path / "targets.yaml").write_text(yaml.safe_dump(doc))
        target = load(tmp_path / "targets.yaml").resolve(name)
        stages = pipeline.select(target.pipeline, only, skip)
        ctx = context.make(name, f"{name}.example.com", target, overrides or {}, stages,
                           now=NOW, workdir="/w")
        built = pipeline.build(ctx)
        build.plan = built
        # Each stage's own steps; where the lock goes is tested on its own.
        return ctx, {name: tuple(s for s in steps if s is not built.lock) for name, steps in built.stages}

    build.tmp = tmp_path
    return build


def test_release_id_is_time_and_source_hash(make):
    ctx, _ = make()
    digest = packaging.scan(str(make.tmp / "src"), packaging.Rules(exclude=("*.pyc",))).digest
    assert ctx.release == f"20260102T030405Z-{digest[:12]}"


def test_package_and_vpn_steps(make):
    ctx, stages = make()
    protected = ((str(make.tmp / "targets.yaml"), "the targets file"),
                 *((str(make.tmp / f), "named in targets.yaml") for f in ("known_hosts", "vhost", "vpn.ovpn")))
    assert stages["package"] == (
        Build(f"package {make.tmp}/src", source=f"{make.tmp}/src",
              rules=packaging.Rules(exclude=("*.pyc",), protected=protected),
              dest=f"/w/alpha-{ctx.release}.tar.gz", manifest=ctx.manifest),
    )
    assert ctx.manifest.files == ("manage.py",)
    assert stages["vpn"] == (
        OpenVpn(f"open VPN ({make.tmp}/vpn.ovpn)", config=f"{make.tmp}/vpn.ovpn", timeout=12.0,
                probe="web1.internal"),
    )


def test_vpn_none_has_no_steps(make):
    _, stages = make({"vpn": {"kind": "none"}})
    assert stages["vpn"] == ()


def test_upload_steps(make):
    ctx, stages = make()
    rel = f"/var/www/alpha.releases/{ctx.release}"
    tmp = f"/var/www/alpha.releases/.{ctx.release}.deployer-{ctx.run_id}"
    relay, tag = f"/var/www/alpha.releases/.deployer-relay-{ctx.run_id}", f"deployer-relay-{ctx.run_id}"
    assert stages["upload"] == (
        Upload(f"upload and unpack release {ctx.release}", H, build=stages["package"][0],
               state_first=hostscripts.live_state("/var/www/alpha", True, False),
               state=hostscripts.live_state("/var/www/alpha", False, False),
               command=hostscripts.unpack("/var/www/alpha.releases", rel, tmp, ctx.run_id, "/var/www/alpha",
                                          relay, tag, 600, False),
               undo=hostscripts.discard(rel, tmp, ctx.run_id, relay),
               relay=Relay("web1.internal", fetch=hostscripts.fetch(relay, "web1.internal", 22, 600),
                           close=hostscripts.close(relay, tag))),
    )
    assert stages["upload"][0].local == f"/w/alpha-{ctx.release}.tar.gz"


def test_no_relay_for_one_host_or_when_turned_off(make):
    _, stages = make({"hosts": ["web1.internal"]})
    assert stages["upload"][0].relay is None
    _, stages = make({"relay": False})
    assert stages["upload"][0].relay is None


def test_render_steps(make):
    ctx, stages = make({"apache": {"dir": "/srv/apache2", "vhost_mode": "0600", "vhost_group": "www-data"}},
                       overrides={"EXTRA": "over"})
    mark = "# Written by deployer for instance alpha; the next deploy replaces this file."
    available, enabled = "/srv/apache2/sites-available", "/srv/apache2/sites-enabled"
    assert stages["render"] == (
        Run("check that no other site serves alpha.example.com", H,
            command=hostscripts.names_are_free("/srv/apache2", "alpha", ("alpha.example.com",)), waits=False),
        Run("check that sites-available/alpha.conf is deployer's to replace", H, waits=False,
            command=vhost.apache(ctx, "ours")),
        # Where no reload reads it until it has passed its test, under the host's Apache lock.
        Install("write the next vhost sites-available/alpha.next", H,
                path=f"{available}/alpha.next", mark=mark,
                content=f"{mark}\nServerName alpha.example.com\nRoot /var/www/alpha over\n",
                mode=0o600, owner=":www-data", work=f"{available}/.alpha.next.deployer-{ctx.run_id}"),
        Install("write the site's stub sites-available/alpha.stub", H,
                path=f"{available}/alpha.stub", mark=mark, content=vhost.site(ctx).stub_content(),
                mode=0o600, owner=":www-data", work=f"{available}/.alpha.stub.deployer-{ctx.run_id}"),
        Link("enable site alpha.conf", H, path=f"{enabled}/alpha.conf",
             target="../sites-available/alpha.stub", work=f"{enabled}/.alpha.conf.deployer-{ctx.run_id}"),
        # What a rollback to this release installs again, readable by the deploy user only.
        Install("keep the vhost in the release, for a rollback to it: .deployer-vhost", H,
                path=f"{ctx.release_path}/.deployer-vhost", mark=mark,
                content=f"{mark}\nServerName alpha.example.com\nRoot /var/www/alpha over\n",
                mode=0o600, work=f"{ctx.release_path}/.deployer-vhost.deployer-{ctx.run_id}"),
        Run("apache configtest with the next vhost", H, waits=False, command=hostscripts.apache(
            "test", "/srv/apache2", 540, "deployer-next-alpha", f"{available}/alpha.next",
            f"{available}/alpha.conf", f"{available}/.alpha.conf.deployer-{ctx.run_id}", mark, "/var/www/alpha",
            ("apache2ctl",))),
    )


def test_the_stub_reads_the_live_vhost_and_the_next_one_only_in_a_test(make):
    ctx, _ = make({"apache": {"dir": "/srv/apache2"}})
    assert vhost.site(ctx).stub_content().splitlines()[3:] == [
        "<IfDefine deployer-next-alpha>", '    Include "/srv/apache2/sites-available/alpha.next"', "</IfDefine>",
        "<IfDefine !deployer-next-alpha>", '    IncludeOptional "/srv/apache2/sites-available/alpha.conf"',
        "</IfDefine>"]


@pytest.mark.parametrize(("vhost", "names"), [
    ("ServerName alpha.example.com\n", ("alpha.example.com",)),
    ("ServerName x\n  serveralias \"WWW.Alpha.example.com\" http://b.test:8080 *.c.test\n",
     ("*.c.test", "alpha.example.com", "b.test", "www.alpha.example.com", "x")),
])
def test_every_name_the_vhost_serves_is_checked(vhost, names):
    assert stage_lib.served_names(vhost, "alpha.example.com") == names


def test_names_made_beside_live_files_differ_every_run(make):
    # Random per run, so nobody can plant a file or link at them beforehand.
    first, second = make()[0], make()[0]
    assert len(first.run_id) == 16 and first.run_id != second.run_id


def test_migrate_runs_once_on_first_host_in_the_new_release(make):
    ctx, stages = make()
    rel = f"/var/www/alpha.releases/{ctx.release}"
    env = {"CONFIG_NAME": "alpha", "DEPLOY_PATH": "/var/www/alpha", "HOSTNAME": "alpha.example.com",
           "RELEASE": ctx.release, "RELEASE_PATH": rel, "SHARED_PATH": "/var/www/alpha.shared"}
    assert stages["migrate"] == (
        Run("migrate: python manage.py migrate --noinput", H[:1],
            command=Command.script("python manage.py migrate --noinput", cwd=rel, env=env), timeout=3600.0,
            lasting=True),
    )


def test_restart_switches_then_makes_the_next_vhost_live_and_reloads(make):
    ctx, stages = make({"apache": {"ctl": "sudo apache2ctl"}, "step_timeout": 90})
    available = "/etc/apache2/sites-available"

    def apache(mode):
        return hostscripts.apache(mode, "/etc/apache2", 81, "deployer-next-alpha", f"{available}/alpha.next",
                                  f"{available}/alpha.conf", f"{available}/.alpha.conf.deployer-{ctx.run_id}",
                                  vhost.owner_mark("alpha"), "/var/www/alpha", ("sudo", "apache2ctl"))
    assert stages["restart"] == (
        # Once migrate and every hook before it have ended on every host.
        Link(f"switch /var/www/alpha to release {ctx.release}", H, waits=True, path="/var/www/alpha",
             target=f"/var/www/alpha.releases/{ctx.release}", work=f"/var/www/alpha.deployer-{ctx.run_id}",
             commit=True),
        # Its undo is recorded before it starts: a promote that fails half way is put back too.
        # In the switch's session: each host reloads as soon as it has switched.
        Run("apache: test the next vhost, make it live, reload and wait until loaded", H, waits=False,
            command=apache("promote"), undo=apache("restore"),
            keep=hostscripts.forget(f"{available}/.alpha.conf.deployer-{ctx.run_id}"), undo_safe=True,
            after_undo=vhost.reload(ctx, again=False)),
    )


def test_a_restart_without_render_reloads_what_apache_has(make):
    ctx, _ = make()
    only = context.Context(**{**ctx.__dict__, "stages": ("restart",)})
    (step,) = stage_lib.restart(only)
    assert step.command == vhost.apache(only, "reload") and step.after_undo.command == step.command


def _sessions(ctx):
    return [[f"{stage}: {step.title}" for stage, step in g.steps] for g in session.groups(pipeline.build(ctx))]


def test_steps_share_a_session_per_host_until_one_must_wait_for_every_host(make):
    ctx, _ = make()
    sessions = _sessions(ctx)
    assert [len(g) for g in sessions] == [1, 1, 9, 1, 2]
    package, vpn, prepare, migrate, switch = sessions
    # The lock, the release and the vhost, checked, in one session; migrate
    # only once every host has passed; the switch once migrate has ended,
    # and in its session, the vhost made live and Apache reloaded.
    assert prepare[0] == "upload: lock instance alpha on every host"
    assert prepare[1].startswith("upload: ") and prepare[-1] == "render: apache configtest with the next vhost"
    assert migrate[0].startswith("migrate: ")
    assert switch[0].startswith("restart: switch ")
    assert switch[1] == "restart: apache: test the next vhost, make it live, reload and wait until loaded"


def test_a_hook_waits_for_every_host_and_the_changes_after_it_join_its_session(make):
    ctx, _ = make({"hooks": {"before": {"render": ["echo hi"]}}, "migrate": None})
    hosts_sessions = [g for g in _sessions(ctx) if not g[0].startswith(("package", "vpn"))]
    assert [len(g) for g in hosts_sessions] == [2, 8, 2]
    assert hosts_sessions[1][0] == "render: before render: echo hi"


def test_restart_without_upload_does_not_switch(make):
    _, stages = make(only=("render", "restart"))
    assert list(stages) == ["render", "restart"]
    assert [type(s) for s in stages["restart"]] == [Run]


def test_migrate_without_upload_runs_in_the_live_release(make):
    _, stages = make(only=("migrate",))
    assert stages["migrate"][0].command.cwd == "/var/www/alpha"


def test_hooks_and_shell_stages_in_order(make):
    _, stages = make({
        "pipeline": ["package", "upload", "collectstatic", "restart"],
        "stages": {"collectstatic": {"run": "python manage.py collectstatic --noinput"}},
        "hooks": {"before": {"restart": ["echo before"]},
                  "after": {"restart": [{"run": "notify-send done", "on": "local"}]}},
    })
    assert list(stages) == ["package", "upload", "collectstatic", "restart"]
    assert stages["collectstatic"][0].hosts == H
    titles = [s.title for s in stages["restart"]]
    assert titles[0] == "before restart: echo before"
    assert titles[-1] == "after restart: notify-send done"
    assert stages["restart"][-1].hosts == ()  # runs on the runner
    assert stages["restart"][-1].command.cwd is None


def test_catch_all_target_for_unknown_names(make):
    ctx, stages = make(name="demo-acme")
    assert ctx.target.entry == "*"
    assert stages["render"][2].path == "/etc/apache2/sites-available/demo-acme.next"
    assert ctx.deploy_path == "/var/www/demo-acme"


@pytest.mark.parametrize("only, skip, message", [
    (("nope",), (), "no stage 'nope'"),
    (("upload",), (), "needs the tarball"),
    ((), ("package",), "needs the tarball"),
])
def test_bad_stage_selection_is_a_usage_error(make, only, skip, message):
    with pytest.raises(UsageError, match=message):
        make(only=only, skip=skip)


def test_unknown_stage_in_pipeline(make):
    with pytest.raises(UsageError, match="unknown stage 'deploy-docs'"):
        make({"pipeline": ["package", "deploy-docs"]})


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Installs fake plugin distributions: {dist name: (entry point value, module source)}."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(dists: dict[str, tuple[str, str]]):
        for dist, (value, source) in dists.items():
            info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
            (info / "entry_points.txt").write_text(f"[deployer.stages]\nnotify = {value}\n")
            module = value.split(":")[0]
            (site / f"{module}.py").write_text(source)
            monkeypatch.delitem(sys.modules, module, raising=False)  # another test's, of that name
    return install


@pytest.mark.parametrize("source, message", [
    ("import no_such_module\n", "its plugin plug_a:plan cannot be loaded: ModuleNotFoundError"),
    ("plan = 42\n", "is not a function of the context"),
    ("def plan(ctx):\n    return 'echo hi'\n", "returned 'echo hi': expected a list of steps"),
    ("def plan(ctx):\n    return [None]\n", "expected a list of steps"),
])
def test_a_broken_plugin_is_a_usage_error_before_anything_runs(make, plugins, source, message):
    plugins({"plug-a": ("plug_a:plan", source)})
    with pytest.raises(UsageError, match=message):
        make({"pipeline": ["package", "notify"]})


def test_two_plugins_for_one_stage_name_are_refused(make, plugins):
    plugins({"plug-a": ("plug_a:plan", "def plan(ctx):\n    return ()\n"),
             "plug-b": ("plug_b:plan", "def plan(ctx):\n    return ()\n")})
    with pytest.raises(UsageError, match="registered by more than one installed plugin: plug_a:plan, plug_b:plan"):
        make({"pipeline": ["package", "notify"]})


def test_a_skipped_stage_needs_no_plugin_on_this_runner(make):
    _, stages = make({"pipeline": ["package", "notify"]}, skip=("notify",))
    assert list(stages) == ["package"]


def test_example_targets_file_is_valid():
    targets = load(REPO / "targets.yaml")
    assert {"local", "alpha", "*"} <= set(targets.names())


def test_plugin_stage_from_entry_point(make, tmp_path, monkeypatch):
    # A real installed-distribution layout on sys.path, found by importlib.metadata.
    site = tmp_path / "site"
    dist = site / "notify_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: notify-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[deployer.stages]\nnotify = notify_plugin:plan\n")
    (site / "notify_plugin.py").write_text(
        "from deployer.steps import Run\nfrom deployer.quoting import Command\n"
        "def plan(ctx):\n"
        "    return (Run('notify', (), command=Command.of(('echo', ctx.name))),)\n"
    )
    monkeypatch.syspath_prepend(str(site))
    _, stages = make({"pipeline": ["package", "notify"]})
    assert stages["notify"][0].command.line() == "echo alpha"


def test_the_lock_comes_before_the_first_step_on_a_host_and_pruning_after_success(make):
    ctx, _ = make()
    p = make.plan
    assert p.lock == Lock("lock instance alpha on every host", H, state="/var/www/alpha.deployer",
                          run_id=ctx.run_id, owner=context.lock_owner(ctx), wait=0, hint=p.lock.hint)
    assert "deployer unlock alpha" in p.lock.hint
    assert [type(s) for s in dict(p.stages)["upload"]] == [Lock, Upload]
    assert p.after == (Run("keep the newest 5 releases, the live one and the one before it", H,
                           command=hostscripts.prune("/var/www/alpha.releases", "/var/www/alpha", 5,
                                                     "/var/www/alpha.deployer/history")),)


def test_a_run_without_upload_is_locked_too_but_prunes_nothing(make):
    make(only=("render", "restart"))
    p = make.plan
    assert p.lock is not None and dict(p.stages)["render"][0] is p.lock
    assert p.after == ()


def test_who_holds_the_lock_says_the_ci_build():
    env = {"TEAMCITY_VERSION": "2024.1", "TEAMCITY_BUILDCONF_NAME": "Deploy alpha", "BUILD_NUMBER": "57"}
    assert context.ci_build(env) == "TeamCity build Deploy alpha #57"
    assert context.ci_build({"BUILD_URL": "https://ci/job/1/"}) == "https://ci/job/1/"
    assert context.ci_build({}) == ""


def test_a_history_line_is_one_line_of_tab_separated_fields(make):
    ctx, _ = make()
    hostile = context.Context(**{**ctx.__dict__, "ci": "build\n#1\tx", "revision": ""})
    line = context.history_line(hostile, "done", now=NOW)
    assert "\n" not in line
    assert line.split("\t") == ["2026-01-02T03:04:05Z", "deploy", "done", ctx.release, "alpha.example.com",
                                 ctx.who, "build #1 x", "-", ctx.run_id]


def test_a_rollback_checks_then_installs_the_releases_own_vhost_and_switches(make):
    ctx, _ = make()
    back = context.for_instance("alpha", ctx.target, "rollback", release="20260101T000000Z-abc")
    p = pipeline.rollback(back, ("20260102T030405Z-def",))
    steps = [s for _, s in p.steps()]
    assert [type(s) for s in steps] == [OpenVpn, Lock, Run, Install, Install, Link, Link, Run]
    record = "/var/www/alpha.releases/20260101T000000Z-abc/.deployer-vhost"
    assert steps[2].command == hostscripts.can_activate(
        "/var/www/alpha", "/var/www/alpha.releases/20260101T000000Z-abc", ".deployer-vhost",
        ("20260102T030405Z-def",))
    assert steps[3].source == record and steps[3].path == "/etc/apache2/sites-available/alpha.next"
    assert steps[6].commit and steps[6].target == "/var/www/alpha.releases/20260101T000000Z-abc"
    assert steps[7].command == vhost.apache(back, "promote")
    assert steps[7].after_undo == vhost.reload(back, again=False)
    assert p.lock is steps[1] and p.after == ()
    # Nothing migrates.
    assert not any("migrate" in s.title for s in steps)


def test_the_health_check_follows_the_reload_and_asks_each_host_from_the_runner(make):
    ctx, stages = make({"health": {"path": "/health", "status": 204, "timeout": 9, "port": 8080}})
    check = stages["restart"][-1]
    assert check == HealthCheck("health check: GET /health answers 204", H,
                                addresses=("web1.internal", "web2.internal"), port=8080, path="/health",
                                host_header="alpha.example.com", statuses=(204,), timeout=9.0)
    # In no session of its own: after the reload's session, on the runner.
    assert [g.steps[0][1] for g in session.groups(make.plan)][-1] is check


# -- the release a rollback goes back to: no one host chooses it ----------------

def _host(live: str, *made: str):
    from deployer.remote.instance import HostState, Release
    return HostState(live=live, releases=tuple(Release(r, True, True) for r in made))


def test_rollback_without_to_refuses_when_the_hosts_serve_different_releases():
    from deployer.errors import DeployError
    from deployer.remote.instance import rollback_target

    r = [f"2026010{i}T000000Z-abc" for i in range(1, 5)]
    states = {"web1": _host(r[3], *r), "web2": _host(r[1], *r)}
    with pytest.raises(DeployError, match=f"web1 serves {r[3]}, web2 serves {r[1]}.*--to"):
        rollback_target(states, None)
    assert rollback_target(states, r[2]) == r[2]  # --to still goes where it is told


def test_a_hosts_answer_is_held_to_deployers_shapes():
    from deployer.remote.instance import parse

    s = parse("live ../../etc\nrelease 20260101T000000Z-abc 1 1\nrelease ;rm -rf 1 1\n"
              "lock 5 x|.* deploy by a@b\n")
    assert s.live == "" and [r.name for r in s.releases] == ["20260101T000000Z-abc"]
    assert s.lock_run == "" and len(s.odd) == 1 and "not a run id" in s.odd_lock
    assert parse("lock \u00b2 0123456789abcdef who\n").lock.endswith("for 0 s")  # isdigit() takes it, int() not
    assert parse(f"lock {'9' * 5000} 0123456789abcdef who\n").lock_run == "0123456789abcdef"
    ok = parse("live 20260101T000000Z-abc\nlock 5 0123456789abcdef deploy by a@b\n")
    assert ok.live == "20260101T000000Z-abc" and ok.lock_run == "0123456789abcdef" and not ok.odd


def _answer(live: str, lock: tuple[str, str] | None = None, done: tuple[str, str] | None = None,
            outcome: str = "done") -> str:
    """A host's answer to the state program: its live release, the lock (run,
    release it was making live) and a line (run, release) in its history."""
    rows = [f"live {live}"]
    if lock:
        rows.append(f"lock 5 {lock[0]} deploy of release {lock[1]} by ci@agent (run {lock[0]})")
    if done:
        rows.append("history " + "\t".join(("2026-12-06T10:00:00Z", "deploy", outcome, done[1], "alpha.test",
                                             "ci@agent", "-", "-", done[0])))
    return "\n".join(rows) + "\n"


def test_a_gone_run_done_on_one_host_is_kept_only_if_every_other_host_bears_it_out():
    from deployer.remote.instance import parse, past_commit

    run, old, new = "0123456789abcdef", "20260101T000000Z-aaa", "20260102T000000Z-bbb"
    # Killed after web2 finished (its lock released, done written) and before
    # web1 did: web1 still holds the lock, and serves the run's release.
    states = {"web1": parse(_answer(new, lock=(run, new))), "web2": parse(_answer(new, done=(run, new)))}
    assert past_commit(states, run) == ["web2"]
    # Done nowhere: undone, as before.
    assert past_commit({"web1": parse(_answer(old, lock=(run, new)))}, run) == []
    # web1 forged a done line; honest web2, killed during migrate, still
    # serves the old release under the run's lock: nothing is decided for it.
    forged = {"web1": parse(_answer(old, lock=(run, new), done=(run, old))),
              "web2": parse(_answer(old, lock=(run, new)))}
    disagree = ("the hosts disagree about run 0123456789abcdef: the history of web1 says it was done there,"
                " but web2 serves 20260101T000000Z-aaa, its lock says")
    with pytest.raises(DeployError, match=disagree):
        past_commit(forged, run)
    # A host with no lock of that run and no done line does not bear it out either.
    with pytest.raises(DeployError, match="web2 serves 20260102T000000Z-bbb, its lock is not that run's"):
        past_commit({"web1": parse(_answer(new, done=(run, new))), "web2": parse(_answer(new))}, run)
    # A host the run left out within max_failed, its lock released, bears it out; with the lock still held, not.
    from deployer.remote.instance import LEFT_OUT
    left = parse(_answer(old, done=(run, new), outcome=LEFT_OUT))
    assert past_commit({**states, "web3": left}, run) == ["web2"]
    with pytest.raises(DeployError, match="web3 serves 20260101T000000Z-aaa, its lock says"):
        past_commit({**states, "web3": parse(_answer(old, lock=(run, new), done=(run, new), outcome=LEFT_OUT))},
                    run)
    # The lock's line for people names the release only in deployer's shape.
    assert parse(_answer(old, lock=(run, "../../x"))).lock_release == ""


@pytest.mark.parametrize(("vhost_text", "says"), [
    ("WSGISocketRotation Off\nWSGIDaemonProcess alpha processes=2 display-name=%{GROUP}\n",
     ["restarts the mod_wsgi processes of alpha one at a time, and no request fails"]),
    ("ServerName x\n", ["reloads Apache gracefully, which may fail a request: no WSGIDaemonProcess"]),
    ("WSGISocketRotation Off\nWSGIDaemonProcess alpha processes=2\n",
     ["group alpha has no display-name=%{GROUP}"]),
    ("WSGISocketRotation Off\nwsgidaemonprocess demo-acme-corp display-name=%{GROUP}\n",
     ["mod_wsgi shows 10 characters of a group's name (under Debian's apache2; 8 under httpd), and"
      " demo-acme-corp has 14"]),
    ("WSGIDaemonProcess alpha display-name=%{GROUP}\n",
     ["one at a time", "WSGISocketRotation is not Off"]),
])
def test_dry_run_and_check_say_how_a_deploy_reloads_the_app_and_what_drops_requests(vhost_text, says):
    notes = vhost.reload_notes(vhost_text)
    assert len(notes) == len(says) and all(s in n for s, n in zip(says, notes, strict=True)), notes


def test_the_default_template_lets_a_deploy_of_code_restart_the_daemons(make):
    ctx, stages = make({"template": str(REPO / "templates" / "default_template")})
    rendered = next(s for s in stages["render"] if isinstance(s, Install)).content
    assert vhost.reload_notes(rendered) == (
        "reload: a deploy that leaves the vhost as it was restarts the mod_wsgi processes of alpha one at a time,"
        " and no request fails; one that changes it reloads Apache",)


@pytest.mark.parametrize("line", ["Define deployer-next-beta", "  undefine \"deployer-next-alpha\""])
def test_a_vhost_that_defines_a_name_deployer_tests_with_is_refused(make, tmp_path, line):
    template = tmp_path / "defines"
    template.write_text(f"ServerName <<HOSTNAME>>\n{line}\n")
    with pytest.raises(UsageError, match="defines a deployer-next-\\* name"):
        make({"template": str(template)})


# -- batches and the failure budget ---------------------------------------------

@pytest.mark.parametrize(("sizes", "hosts", "expected"), [
    (("100%",), 8, [8]),
    ((1, "25%", "100%"), 8, [1, 2, 5]),
    ((2,), 5, [2, 2, 1]),  # the last size repeats
    (("10%",), 8, [1] * 8),  # rounded down, at least 1
    ((1, "50%"), 2, [1, 1]),
    ((20, 1), 3, [3]),
])
def test_batches_are_counted_as_ansibles_serial(sizes, hosts, expected):
    from deployer.plan import rollout
    names = tuple(f"h{i}" for i in range(hosts))
    batches = rollout.batches(names, sizes)
    assert [len(b) for b in batches] == expected
    assert sum(batches, ()) == names  # every host once, in order: the first host first


@pytest.mark.parametrize(("max_failed", "hosts", "expected"), [(0, 8, 0), (1, 8, 1), ("25%", 8, 2),
                                                                ("10%", 8, 0), (9, 8, 7), ("100%", 3, 2),
                                                                (1, 1, 0)])
def test_the_budget_is_counted_over_the_whole_fleet(max_failed, hosts, expected):
    from deployer.plan import rollout
    assert rollout.budget(max_failed, hosts) == expected


def test_each_batch_switches_reloads_and_passes_its_health_check_before_the_next(make):
    ctx, stages = make({"hosts": [f"web{i}.internal" for i in range(1, 9)], "batches": [1, "25%", "100%"],
                        "batch_pause": 2.5, "max_failed": "25%", "health": {"path": "/health"}})
    batches = [("web1.internal",), ("web2.internal", "web3.internal"),
               tuple(f"web{i}.internal" for i in range(4, 9))]
    restart = stages["restart"]
    assert [(type(s).__name__, s.hosts) for s in restart] == [
        *[(kind, b) for b in batches[:1] for kind in ("Link", "Run", "HealthCheck")], ("Pause", ()),
        *[(kind, b) for b in batches[1:2] for kind in ("Link", "Run", "HealthCheck")], ("Pause", ()),
        *[(kind, b) for b in batches[2:] for kind in ("Link", "Run", "HealthCheck")],
    ]
    assert restart[0].title == f"switch /var/www/alpha to release {ctx.release} (batch 1 of 3)"
    assert restart[3].seconds == 2.5 and restart[3].title == "pause 2.5 s before batch 2 of 3"
    # Each health check asks its own batch's addresses.
    assert restart[6].addresses == ("web2.internal", "web3.internal")
    assert make.plan.max_failed == 2
    # Per batch, the switch and the reload share one session on each host.
    groups = session.groups(make.plan)
    switches = [g for g in groups if isinstance(g.steps[0][1], Link) and g.steps[0][1].commit]
    assert [(g.hosts, len(g.steps)) for g in switches] == [(b, 2) for b in batches]


def test_a_bad_batch_or_budget_is_refused(make):
    for entry, said in (({"batches": []}, "batches"), ({"batches": ["0%"]}, "batches/0"),
                        ({"batches": [0]}, "batches/0"), ({"max_failed": -1}, "max_failed"),
                        ({"max_failed": "101%"}, "max_failed"), ({"batches": "25%"}, "batches"),
                        ({"batch_pause": -1}, "batch_pause")):
        with pytest.raises(UsageError, match=f"targets/alpha/{said}: expected"):
            make(entry)
