"""--dry-run on a machine that lacks what a real run needs (the CI's key, VPN
file, secrets), and --dry-run --diff, which reads the hosts and changes
nothing on them."""

# Fixtures are imported, so test parameters "redefine" them.
# ruff: noqa: F811

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deployer import config
from deployer.cli.deploy import EPILOG, main
from deployer.errors import EXIT_DRY_RUN_LACKS, ConfigError
from deployer.run import preview
from tests.conftest import REPO, default_template_with, tree_digest
from tests.lab.fixtures import Site as LabSite
from tests.lab.fixtures import assert_vpn_down, lab, lab_session  # noqa: F401

SECRET_ENV = "DEPLOYER_TEST_DRY_RUN_SECRET"
SECRET = "Dry-Run-S3cret-Value"
LACKS = "a real run on this machine would lack:"


def run(targets: Path, *extra: str, output: str = "plain", name: str = "alpha") -> tuple[int, str]:
    out = io.StringIO()
    code = main([name, f"{name}.example.test", "--targets", str(targets), "--output", output, *extra], stdout=out)
    return code, out.getvalue()


def events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def titles(text: str) -> list[tuple[str, str]]:
    """The planned steps of a JSON dry run, without what differs from run to
    run (the release id: its time, and the run's random names)."""
    return [(e["stage"], re.sub(r"\d{8}T\d{6}Z-\S+", "RELEASE", e["step"]))
            for e in events(text) if e["event"] == "planned"]


class Laptop:
    root: Path
    targets: Path

    def ci(self) -> None: ...


@pytest.fixture
def laptop(tmp_path, monkeypatch) -> Laptop:
    """A checkout as a developer has it: the app, the template, known_hosts;
    not the CI's SSH key, VPN file or secret. `ci()` adds them."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "manage.py").write_text("print('hi')\n")
    (tmp_path / "vhost.tmpl").write_text("ServerName <<HOSTNAME>>\nSetEnv DB_PASSWORD <<DB_PASSWORD>>\n")
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "targets.yaml").write_text(yaml.safe_dump({
        "defaults": {"known_hosts": "known_hosts", "package": {"source": "app"}, "template": "vhost.tmpl",
                     # Would leave a trace if anything ran: a real run that lacks a file must not.
                     "hooks": {"before": {"package": [{"run": f"touch {tmp_path}/HOOKED", "on": "local"}]}}},
        "targets": {"alpha": {
            "hosts": ["web1.alpha.internal", "web2.alpha.internal"],
            "identity_file": "keys/id_ed25519",
            "vpn": {"kind": "openvpn", "config": "vpn/alpha.ovpn"},
            "vars": {"DB_PASSWORD": {"env": SECRET_ENV, "secret": True}},
        }},
    }))
    monkeypatch.delenv(SECRET_ENV, raising=False)

    class Checkout(Laptop):
        root, targets = tmp_path, tmp_path / "targets.yaml"

        def ci(self) -> None:
            (tmp_path / "keys").mkdir()
            (tmp_path / "keys" / "id_ed25519").write_text("not really a key\n")
            (tmp_path / "vpn").mkdir()
            (tmp_path / "vpn" / "alpha.ovpn").write_text("client\n")
            monkeypatch.setenv(SECRET_ENV, SECRET)

    return Checkout()


EXPECTED = [
    "targets/alpha/hosts/0/identity_file: file not found: {root}/keys/id_ed25519",
    "targets/alpha/vpn/config: file not found: {root}/vpn/alpha.ovpn",
    f"targets/alpha/vars/DB_PASSWORD/env: environment variable {SECRET_ENV} is not set",
]


# -- part 1: offline --------------------------------------------------------------


def test_dry_run_prints_the_whole_plan_then_what_this_machine_lacks_exit_4(laptop):
    code, out = run(laptop.targets, "--dry-run")
    assert code == EXIT_DRY_RUN_LACKS == 4, out
    lines = out.splitlines()
    at = lines.index(LACKS)
    # Each item once (both hosts name the same key), with its key path, after the plan.
    assert lines[at + 1:at + 4] == ["  " + e.format(root=laptop.root) for e in EXPECTED]
    assert lines[at + 4:] == ["error: dry run: a real run on this machine could not start: it lacks what is listed"
                              " above"]
    assert "  - migrate: python manage.py migrate --noinput [web1.alpha.internal]" in lines[:at]
    assert not (laptop.root / "HOOKED").exists()


def test_the_plan_is_the_one_a_machine_that_has_everything_prints(laptop):
    code, lacking = run(laptop.targets, "--dry-run", output="json")
    assert code == 4
    laptop.ci()
    code, complete = run(laptop.targets, "--dry-run", output="json")
    assert code == 0, complete
    assert titles(lacking) == titles(complete)
    assert len(titles(complete)) > 10 and not [e for e in events(complete) if e["event"] == "missing"]
    # The vhost is shown in full, the secret's place masked either way.
    vhost = [e["details"] for e in events(lacking) if e["event"] == "planned" and e["kind"] == "install"][0]
    assert "| SetEnv DB_PASSWORD ********" in vhost


def test_the_dry_run_shows_the_batches_and_the_failure_budget(laptop):
    doc = yaml.safe_load(laptop.targets.read_text())
    hosts = [f"web{i}.alpha.internal" for i in range(1, 9)]
    doc["targets"]["alpha"].update(hosts=hosts, batches=[1, "25%", "100%"], batch_pause=30, max_failed="25%")
    laptop.targets.write_text(yaml.safe_dump(doc))
    laptop.ci()
    code, out = run(laptop.targets, "--dry-run")
    assert code == 0, out
    lines = out.splitlines()
    switches = [line for line in lines if line.startswith("  - switch ")]
    assert [line.split(" (")[1] for line in switches] == [
        f"batch 1 of 3) [{hosts[0]}]", f"batch 2 of 3) [{', '.join(hosts[1:3])}]",
        f"batch 3 of 3) [{', '.join(hosts[3:])}]"]
    assert lines.count("  - pause 30 s before batch 2 of 3 [runner]") == 1
    assert ("!! max_failed: up to 2 of the 8 hosts may fail (never web1.alpha.internal, which holds the lock): the"
            " run goes on without each, undoes what it changed there, and ends with exit code 5") in lines


def test_json_names_each_missing_item_in_one_event(laptop):
    code, out = run(laptop.targets, "--dry-run", output="json")
    assert code == 4
    (missing,) = [e for e in events(out) if e["event"] == "missing"]
    got = [f"{i['key']}: {i['problem']}" for i in missing["items"]]
    assert got == [e.format(root=laptop.root) for e in EXPECTED]
    last = events(out)[-1]
    assert last["event"] == "finished" and last["exit_code"] == 4 and not last["ok"]


def test_nothing_missing_exits_0_and_the_secret_never_shows(laptop):
    laptop.ci()
    for output in ("plain", "json", "teamcity", "rich"):
        code, out = run(laptop.targets, "--dry-run", output=output)
        assert code == 0, out
        assert SECRET not in out and "********" in out
        assert "would lack" not in out


def test_an_unset_secret_stands_in_masked(laptop):
    code, out = run(laptop.targets, "--dry-run")
    assert code == 4
    assert "      | SetEnv DB_PASSWORD ********" in out.splitlines()
    assert "not set here>" not in out  # the stand-in is masked like the secret it stands for


def test_a_real_run_with_the_same_file_fails_as_before_and_runs_nothing(laptop):
    code, out = run(laptop.targets, output="json")
    assert code == 2
    assert [e["event"] for e in events(out)] == ["finished"]
    assert events(out)[-1]["error"] == f"{laptop.targets}: " + EXPECTED[0].format(root=laptop.root)
    assert not (laptop.root / "HOOKED").exists()


def test_a_missing_template_leaves_out_only_the_render_stage(laptop):
    laptop.ci()
    (laptop.root / "vhost.tmpl").unlink()
    code, out = run(laptop.targets, "--dry-run", output="json")
    assert code == 4
    stages = {stage for stage, _ in titles(out)}
    assert "render" not in stages and {"package", "vpn", "upload", "migrate", "restart"} <= stages
    notes = [e["text"] for e in events(out) if e["event"] == "note"]
    assert notes == ["render: not shown: the template is not on this machine (listed below), so the vhost"
                     " cannot be rendered"]
    missing = [i["key"] for e in events(out) if e["event"] == "missing" for i in e["items"]]
    assert missing == ["targets/alpha/template"]


def test_a_missing_source_has_no_release_id(laptop):
    laptop.ci()
    shutil.rmtree(laptop.root / "app")
    code, out = run(laptop.targets, "--dry-run", output="json")
    assert code == 4
    assert events(out)[0]["release"].endswith("-????????????")
    assert [i["key"] for e in events(out) if e["event"] == "missing" for i in e["items"]] == [
        "targets/alpha/package/source"]


def test_resolve_for_dry_run_reads_with_the_same_reader(laptop):
    targets = config.load(laptop.targets)
    target, missing = targets.resolve_for_dry_run("alpha")
    assert [str(m) for m in missing] == [e.format(root=laptop.root) for e in EXPECTED]
    assert [m.kind for m in missing] == ["connect", "connect", "value"]
    assert target.vars["DB_PASSWORD"] == config.Var(f"<{SECRET_ENV}: not set here>", secret=True,
                                                    source=SECRET_ENV)
    with pytest.raises(ConfigError) as e:
        targets.resolve("alpha")
    assert str(e.value) == f"{laptop.targets}: " + EXPECTED[0].format(root=laptop.root)


def test_diff_needs_dry_run(laptop):
    laptop.ci()
    code, out = run(laptop.targets, "--diff")
    assert code == 2
    assert out.splitlines()[-1] == "error: --diff shows what a run would change, reading the hosts: add --dry-run"
    assert not (laptop.root / "HOOKED").exists()


def test_diff_without_the_key_reads_no_host(laptop):
    # The hosts' names resolve nowhere: an attempt to connect would fail (exit 1), not exit 4.
    code, out = run(laptop.targets, "--dry-run", "--diff")
    assert code == 4, out
    assert "!! --diff: the hosts were not read: reaching them needs what is listed below" in out.splitlines()


def test_help_documents_exit_code_4():
    assert "\n  4    dry run: the plan is valid, but a real run on this machine could not" in EPILOG


# -- part 2: --diff, against a real sshd ------------------------------------------------

TEMPLATE_TAIL = "SetEnv TIER <<TIER>>\nSetEnv DB_PASSWORD <<DB_PASSWORD>>\n"


@pytest.fixture
def deployed(site, tmp_path, monkeypatch):
    """The sshd site, with a template that takes a TIER and a secret, deployed once."""
    template = default_template_with(tmp_path / "vhost.tmpl", TEMPLATE_TAIL)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    site.edit(template=str(template), vars={"TIER": "blue", "DB_PASSWORD": {"env": SECRET_ENV, "secret": True}})
    code, out = site.deploy()
    assert code == 0, out
    assert f"SetEnv DB_PASSWORD {SECRET}" in vhost_on_host(site)
    return site


def vhost_on_host(site) -> str:
    return (site.root / "apache2" / "sites-available" / "alpha.conf").read_text()


def section(out: str) -> list[str]:
    """The --diff section of one host, in plain output."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("== 127.0.0.1:"))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), len(lines))
    return lines[start:end]


@pytest.mark.sshd
def test_diff_shows_the_vhost_change_the_live_release_and_the_upload_and_changes_nothing(deployed):
    site = deployed
    live = os.readlink(site.live()).rsplit("/", 1)[1]
    before = tree_digest(site.root, history=True)
    site.edit(vars={"TIER": "green", "DB_PASSWORD": {"env": SECRET_ENV, "secret": True}})
    (site.source / "static" / "site.css").write_text("body { color: green }\n")
    code, out = site.deploy("--dry-run", "--diff")
    assert code == 0, out
    assert tree_digest(site.root, history=True) == before
    assert SECRET not in out
    shown = section(out)
    assert shown[1:3] == [f"  live release: {live}",
                          "  upload: would send 1 of 3 files (22 bytes); the rest is linked from the live release"]
    conf = site.root / "apache2" / "sites-available" / "alpha.conf"
    assert shown[3] == f"  vhost {conf}: differs: 1 line out, 1 in"
    assert shown[4].startswith("    --- 127.0.0.1:") and shown[4].endswith(f":{conf}")
    assert shown[5] == f"    +++ rendered from {site.root.parent / 'vhost.tmpl'}"
    assert shown[6].startswith("    @@ ")
    # The secret's line is context here: masked on the host's side too.
    # The host's side shows its directive only: the target has a secret, and the
    # template line that held it might have changed with it.
    assert shown[-3:] == ["    -SetEnv ********", "    +SetEnv TIER green", "     SetEnv DB_PASSWORD ********"]
    # The whole plan is there as well, every command in order.
    assert "  - upload and unpack release " in out
    assert "  - apache: test the next vhost, make it live, reload and wait until loaded [" in out


@pytest.mark.sshd
def test_diff_masks_a_secret_changed_since_on_both_sides(deployed, monkeypatch):
    site = deployed
    monkeypatch.setenv(SECRET_ENV, "Another-S3cret-Value")
    before = tree_digest(site.root, history=True)
    for output in ("plain", "json", "teamcity", "rich"):
        code, out = site.deploy("--dry-run", "--diff", "--output", output)
        assert code == 0, out
        assert SECRET not in out and "Another-S3cret-Value" not in out, output
    code, out = site.deploy("--dry-run", "--diff")
    assert section(out)[-2:] == ["    -SetEnv DB_PASSWORD ********", "    +SetEnv DB_PASSWORD ********"]
    assert tree_digest(site.root, history=True) == before


@pytest.mark.sshd
@pytest.mark.parametrize("set_here", [False, True])
def test_diff_shows_no_value_of_a_hosts_line_that_might_hold_a_secret(deployed, monkeypatch, set_here):
    site = deployed
    if set_here:  # rotated: this machine knows only the new value
        monkeypatch.setenv(SECRET_ENV, "n3w-rotated-value")
    else:
        monkeypatch.delenv(SECRET_ENV)
    # The template's secret line changed too: the host's old line no longer
    # looks like it, and could hold the secret anywhere.
    template = site.root.parent / "vhost.tmpl"
    template.write_text(template.read_text().replace("SetEnv DB_PASSWORD", "SetEnv APP_DB_PASSWORD"))
    code, out = site.deploy("--dry-run", "--diff")
    assert code == (0 if set_here else 4), out
    assert SECRET not in out
    assert "    -SetEnv ********" in section(out)
    if not set_here:
        assert f"  targets/alpha/vars/DB_PASSWORD/env: environment variable {SECRET_ENV} is not set" in out


@pytest.mark.sshd
def test_diff_without_the_template_still_reads_the_hosts(deployed):
    site = deployed
    (site.root.parent / "vhost.tmpl").unlink()
    before = tree_digest(site.root, history=True)
    code, out = site.deploy("--dry-run", "--diff")
    assert code == 4, out
    conf = site.root / "apache2" / "sites-available" / "alpha.conf"
    assert section(out)[1:] == [
        f"  live release: {os.readlink(site.live()).rsplit('/', 1)[1]}",
        "  upload: would send 0 of 3 files (0 bytes); the rest is linked from the live release",
        f"  vhost {conf}: on the host; not compared: the template is not on this machine"]
    assert tree_digest(site.root, history=True) == before


@pytest.mark.sshd
def test_diff_of_a_new_instance_beside_another_says_it_links_from_that_ones_release(deployed):
    site = deployed
    doc = yaml.safe_load(site.targets_file.read_text())
    doc["targets"]["beta"] = {**doc["targets"]["alpha"], "link_from_other_instances": True}
    site.targets_file.write_text(yaml.safe_dump(doc))
    before = tree_digest(site.root, history=True)
    out = io.StringIO()
    code = main(["beta", "beta.example.test", "--targets", str(site.targets_file), "--dry-run", "--diff"],
                stdout=out)
    assert code == 0, out.getvalue()
    assert section(out.getvalue())[1:3] == [
        "  live release: none",
        "  upload: would send 0 of 3 files (0 bytes); the rest is linked from the live release of alpha"]
    assert tree_digest(site.root, history=True) == before


@pytest.mark.sshd
def test_diff_of_a_host_with_nothing_deployed(site):
    code, out = site.deploy("--dry-run", "--diff")
    assert code == 0, out
    shown = section(out)
    assert shown[1:4] == [
        "  live release: none",
        "  upload: the whole artifact, 3 files (55 bytes): no live release with a file list",
        f"  vhost {site.root / 'apache2' / 'sites-available' / 'alpha.conf'}: not on the host yet: the run writes"
        " it whole (as in the plan above)"]
    assert tree_digest(site.root, history=True) == {}


@pytest.mark.sshd
def test_diff_json_has_an_event_per_host(deployed):
    site = deployed
    site.edit(vars={"TIER": "green", "DB_PASSWORD": {"env": SECRET_ENV, "secret": True}})
    code, out = site.deploy("--dry-run", "--diff", "--output", "json")
    assert code == 0, out
    shown = [e for e in events(out) if e["event"] == "preview"]
    assert len(shown) == 1
    e = shown[0]
    assert e["live"] == os.readlink(site.live()).rsplit("/", 1)[1]
    assert e["send"] == {"files": 0, "of": 3, "bytes": 0, "whole": False}
    assert e["vhost"]["state"] == "file" and "-SetEnv ********" in e["vhost"]["diff"]
    assert e["refusals"] == []
    assert not [e for e in events(out) if e["event"].startswith("step_")]  # the read's own output stays out


@pytest.mark.sshd
def test_diff_says_what_a_real_run_would_refuse_and_escapes_what_the_host_wrote(deployed):
    site = deployed
    conf = site.root / "apache2" / "sites-available" / "alpha.conf"
    # Not deployer's file (no mark), with a line that would forge output.
    conf.write_text("ServerName someone.else\n\x1b[2J##teamcity[buildStatus text='forged']\r\n")
    live = site.live()
    target = os.readlink(live)
    live.unlink()
    live.mkdir()  # the old script's layout: a directory, not a link
    try:
        before = tree_digest(site.root, history=True)
        code, teamcity = site.deploy("--dry-run", "--diff", "--output", "teamcity")
        assert code == 0, teamcity
        code, out = site.deploy("--dry-run", "--diff")
        assert code == 0, out
        assert tree_digest(site.root, history=True) == before
    finally:
        live.rmdir()
        live.symlink_to(target)
    assert "##teamcity[buildStatus" not in teamcity
    assert "\x1b" not in out + teamcity and "\r" not in out + teamcity
    assert "    -\\x1b[2J##teamcity[buildStatus ********" in out.splitlines()
    assert f"a real run would fail here: {live} exists and is not a symlink" in out
    assert (f"a real run would fail here: {conf} was not written by deployer (its first line is not deployer's"
            " mark); deployer will not replace it") in out


def test_the_read_says_a_vhost_it_cannot_read_instead_of_failing(tmp_path):
    # As a user who may not read the file (the sshd tests log in as root, who may).
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")
    base = Path("/tmp") / f"deployer-test-read-{os.getpid()}"
    base.mkdir(mode=0o755)
    try:
        sites = base / "sites-available"
        sites.mkdir(mode=0o755)
        (sites / "alpha.conf").write_text("SetEnv DB_PASSWORD x\n")
        (sites / "alpha.conf").chmod(0o600)
        (sites / "beta.conf").write_text("# beta\n")
        (sites / "beta.conf").chmod(0o644)
        (base / "closed").mkdir(mode=0o700)
        (base / "closed" / "gamma.conf").write_text("# gamma\n")

        def read(conf: Path) -> preview.HostView:
            argv = preview.read_vhost(str(base / "www" / "alpha"), str(conf)).argvs[0]
            r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0 and r.stderr == "", r
            return preview.parse(r.stdout)

        assert read(sites / "alpha.conf").vhost_state == "unreadable"
        assert read(base / "closed" / "gamma.conf").vhost_state == "unreadable"
        assert read(sites / "nope.conf").vhost_state == "absent"
        beta = read(sites / "beta.conf")
        assert (beta.vhost_state, beta.vhost, beta.release, beta.live_not_link) == ("file", b"# beta\n", "", False)
    finally:
        shutil.rmtree(base)


# -- the lab: through the VPN ----------------------------------------------------------


@pytest.mark.lab
def test_lab_diff_through_the_vpn_changes_no_host_and_closes_the_vpn(lab, tmp_path):
    site = LabSite(lab, tmp_path)
    template = tmp_path / "vhost.tmpl"
    template.write_text((REPO / "templates" / "default_template").read_text()
                        .replace("</VirtualHost>", "    SetEnv TIER <<TIER>>\n</VirtualHost>"))
    site.write(template=str(template), vars={"TIER": "blue"})
    code, evs = site.deploy("alpha")
    assert code == 0, evs[-1]["error"]

    def hosts() -> list[dict]:
        return [{d: tree_digest(h.path(d), history=True) for d in ("/var/www", "/etc/apache2", "/root/.ssh")}
                for h in lab.hosts]

    before = hosts()
    (site.app / "RELEASE.txt").write_text("previewed, never deployed\n")
    site.write(template=str(template), vars={"TIER": "green"})
    code, evs = site.deploy("alpha", "--dry-run", "--diff")
    assert code == 0, evs[-1]["error"]
    shown = {e["host"]: e for e in evs if e["event"] == "preview"}
    assert sorted(shown) == sorted(lab.addresses)
    release = os.readlink(lab.hosts[0].path("/var/www/alpha")).rsplit("/", 1)[1]
    for e in shown.values():
        # One new file; the other hosts hold the first one's release, so they too get only that.
        assert e["live"] == release and e["send"]["files"] == 1 and not e["send"]["whole"], e
        assert e["vhost"]["state"] == "file" and e["refusals"] == []
        assert "-    SetEnv TIER blue" in e["vhost"]["diff"] and "+    SetEnv TIER green" in e["vhost"]["diff"]
    assert hosts() == before
    assert_vpn_down(lab)


def test_a_hostile_host_line_is_matched_in_linear_time():
    from deployer.run.preview import _token_spans

    literals = ["    SetEnv DB postgres://", ":", "@", ""]
    assert _token_spans(literals, "    SetEnv DB postgres://u:p@h") == [(25, 26), (27, 28), (29, 30)]
    # A regex of `.*` per token backtracks for minutes on this; the search ends at once.
    assert _token_spans(literals, "    SetEnv DB postgres://" + ":@" * 500_000 + "x") is not None
    assert _token_spans(literals, "other") is None
