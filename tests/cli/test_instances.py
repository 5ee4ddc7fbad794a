"""`deployer list | destroy`: the instances on a target's hosts, and removing
them, over a real sshd on 127.0.0.1, checked on disk."""

import io
import json
import os
import subprocess

import pytest
import yaml

from deployer.cli import manage
from deployer.cli.deploy import main as deploy_main
from tests.conftest import tree_digest

pytestmark = pytest.mark.sshd


@pytest.fixture
def demos(site):
    """alpha (protected) and a catch-all for demos, on the same host, each
    with shared media; alpha, demo-a and demo-b deployed."""
    doc = yaml.safe_load(site.targets_file.read_text())
    alpha = doc["targets"]["alpha"]
    alpha["shared"] = {"dirs": ["media"]}
    doc["targets"] = {"alpha": {**alpha, "protected": True}, "*": alpha}
    site.targets_file.write_text(yaml.safe_dump(doc))
    for name in ("alpha", "demo-a", "demo-b"):
        code, out = deploy(site, name)
        assert code == 0, out
    return site


def deploy(site, name: str) -> tuple[int, str]:
    out = io.StringIO()
    code = deploy_main([name, f"{name}.example.test", "--targets", str(site.targets_file), "--output", "plain"],
                       stdout=out)
    return code, out.getvalue()


def deployer(site, *argv: str, stdin=None) -> tuple[int, str]:
    out = io.StringIO()
    code = manage.main([*argv, "--targets", str(site.targets_file)], stdout=out,
                         stdin=stdin or io.StringIO())
    return code, out.getvalue()


def parts(site, name: str) -> list[str]:
    """What of instance `name` is on the host."""
    www, apache = site.root / "www", site.root / "apache2"
    paths = [www / name, www / f"{name}.releases", www / f"{name}.deployer", www / f"{name}.shared",
             apache / "sites-available" / f"{name}.conf", apache / "sites-enabled" / f"{name}.conf"]
    return [str(p.relative_to(site.root)) for p in paths if os.path.lexists(p)]


def digest_of(site, name: str) -> dict[str, str]:
    return {k: v for k, v in tree_digest(site.root, history=True).items()
            if k.split("/")[-1].split(".")[0] == name or f"/{name}." in k or k.startswith(f"www/{name}")}


def test_list_shows_every_instance_who_deployed_it_and_when(demos):
    code, out = deployer(demos, "list")
    assert code == 0, out
    # It says which target's hosts it read: with no name, the catch-all's.
    assert out.splitlines()[0] == ("instances on the hosts of target '*' (the catch-all entry, where demo"
                                   " instances go):")
    rows = out.splitlines()[1:]
    assert rows[0].split() == ["instance", "hostname", "live", "release", "deployed", "by", "hosts"]
    assert [r.split()[0] for r in rows[1:]] == ["alpha", "demo-a", "demo-b"]
    assert "(protected)" in rows[1]
    for row, name in zip(rows[1:], ("alpha", "demo-a", "demo-b"), strict=True):
        assert f"{name}.example.test" in row and os.readlink(demos.root / "www" / name).rsplit("/")[-1] in row
        assert "@" in row and "1/1" in row
    code, out = deployer(demos, "list", "demo-a", "--json")
    listed = {i["name"]: i for i in json.loads(out)}
    assert set(listed) == {"alpha", "demo-a", "demo-b"}
    assert listed["alpha"]["protected"] and not listed["demo-a"]["protected"]
    assert listed["demo-b"]["hostname"] == "demo-b.example.test" and listed["demo-b"]["problems"] == []
    assert 0 <= listed["demo-b"]["age_seconds"] < 600


def test_destroy_removes_the_instance_everywhere_and_leaves_the_others_alone(demos):
    others = {n: digest_of(demos, n) for n in ("alpha", "demo-b")}
    assert len(parts(demos, "demo-a")) == 6
    code, out = deployer(demos, "destroy", "demo-a", "--yes", "--output", "plain")
    assert code == 0, out
    assert "apache: configtest, reload and wait until loaded" in out
    assert parts(demos, "demo-a") == []
    assert not [p for p in os.listdir(demos.root / "apache2" / "sites-available") if "demo-a" in p]
    assert {n: digest_of(demos, n) for n in ("alpha", "demo-b")} == others
    assert [i["name"] for i in json.loads(deployer(demos, "list", "--json")[1])] == ["alpha", "demo-b"]
    # The name can be deployed again from scratch.
    assert deploy(demos, "demo-a")[0] == 0


def test_destroy_can_keep_the_shared_files(demos):
    (demos.root / "www" / "demo-a.shared" / "media" / "upload.png").write_text("x")
    assert deployer(demos, "destroy", "demo-a", "--yes", "--keep-shared")[0] == 0
    assert parts(demos, "demo-a") == ["www/demo-a.shared"]
    assert (demos.root / "www" / "demo-a.shared" / "media" / "upload.png").read_text() == "x"


@pytest.mark.parametrize("argv, message", [
    (("destroy", "alpha", "--yes"), "protected: true in targets.yaml; deployer never destroys it"),
    (("destroy", "demo-a"), "Not on a terminal: add --yes"),
    (("destroy", "--yes"), "name the instance to destroy, or give --older-than AGE"),
    (("destroy", "demo-a", "--older-than", "14 days"), "expected an age such as 14d"),
])
def test_destroy_refuses_and_changes_nothing(demos, capsys, argv, message):
    before = tree_digest(demos.root, history=True)
    code, out = deployer(demos, *argv, "--output", "plain")
    assert code == 2
    assert message in out + capsys.readouterr().err
    assert tree_digest(demos.root, history=True) == before


def test_destroy_that_fails_midway_puts_the_site_back(demos, tmp_path):
    # configtest fails once the vhost is gone (an Include of it elsewhere, say).
    ctl = tmp_path / "ctl"
    doc = yaml.safe_load(demos.targets_file.read_text())
    real_ctl = doc["targets"]["*"]["apache"]["ctl"]
    ctl.write_text(f"""#!/bin/sh
if [ "$2" = configtest ] && [ ! -e {demos.root}/apache2/sites-available/demo-a.conf ]; then
    echo "Could not open configuration file demo-a.conf" >&2
    exit 1
fi
exec {real_ctl.rsplit(" ", 1)[0]} "$@"
""")
    ctl.chmod(0o755)
    doc["targets"]["*"]["apache"]["ctl"] = f"{ctl} {real_ctl.split()[-1]}"
    demos.targets_file.write_text(yaml.safe_dump(doc))

    def files():  # but Apache's log, which says it reloaded
        return {k: v for k, v in tree_digest(demos.root, history=False).items()
                if not k.startswith("apache2/log/")}

    before = files()
    code, out = deployer(demos, "destroy", "demo-a", "--yes", "--output", "plain")
    assert code == 1, out
    assert "Could not open configuration file demo-a.conf" in out
    assert files() == before
    assert len(parts(demos, "demo-a")) == 6
    assert not (demos.root / "www" / "demo-a.deployer" / "lock").exists()


def _age(site, name: str, days: int) -> None:
    """Make the instance's deploys look `days` old (its history's times)."""
    history = site.root / "www" / f"{name}.deployer" / "history"
    lines = [line.split("\t") for line in history.read_text().splitlines()]
    for line in lines:
        line[0] = f"2020-01-{days:02d}T00:00:00Z"
    history.write_text("".join("\t".join(line) + "\n" for line in lines))


def test_destroy_older_than_removes_only_old_unprotected_instances(demos):
    _age(demos, "demo-a", 1)
    _age(demos, "alpha", 1)
    code, out = deployer(demos, "destroy", "--older-than", "14d", "--output", "plain", "--yes")
    assert code == 0, out
    assert "alpha is older, but protected: true" in out
    assert out.rstrip().endswith("destroyed 1 instance(s): demo-a")
    assert parts(demos, "demo-a") == []
    assert len(parts(demos, "alpha")) == 6 and len(parts(demos, "demo-b")) == 6
    # Nothing older left: says so, changes nothing.
    code, out = deployer(demos, "destroy", "--older-than", "14d", "--yes", "--output", "plain")
    assert code == 0 and "no unprotected instance" in out, out


def test_destroy_of_an_instance_that_is_not_there_does_nothing(demos):
    before = tree_digest(demos.root, history=True)
    code, out = deployer(demos, "destroy", "demo-zzz", "--yes", "--output", "plain")
    assert code == 0 and "no such instance" in out, out
    assert tree_digest(demos.root, history=True) == before


def test_list_needs_no_file_of_another_target(demos):
    # A developer's machine without alpha's VPN file still lists the demo hosts, alpha marked protected.
    doc = yaml.safe_load(demos.targets_file.read_text())
    doc["targets"]["alpha"]["vpn"] = {"kind": "openvpn", "config": "/nonexistent/alpha.ovpn"}
    demos.targets_file.write_text(yaml.safe_dump(doc))
    code, out = deployer(demos, "list", "--json")
    assert code == 0, out
    assert {i["name"]: i["protected"] for i in json.loads(out)} == {"alpha": True, "demo-a": False,
                                                                   "demo-b": False}


def test_a_hosts_answer_cannot_forge_an_instance_or_break_the_listing():
    from deployer.remote import instance

    out = ("instance\tdemo-a\t20260101T000000Z-abc\t2\tenabled\t-\t50\n"
           "instance\tNOT A*NAME\t-\t0\t-\t-\t-\n"              # a link target with a newline in it, say
           "instance\tdemo-b\t../../etc\t0\t-\t-\t-\n"
           "last\tdemo-a\t2026-01-01T00:00:00Z\tdeploy\tdone\t20260101T000000Z-abc\td.test\tci@x\t-\t-\tr1\textra\n")
    found = instance.parse_instances(out)
    assert list(found) == ["demo-a"]
    assert found["demo-a"].last["hostname"] == "d.test" and found["demo-a"].last["run"] == "r1"


def test_destroy_older_than_keeps_an_instance_whose_own_entry_is_another(demos):
    # demo-b was deployed through the catch-all; now it has an entry of its own,
    # which may name other hosts: what was judged old here is not what that would remove.
    doc = yaml.safe_load(demos.targets_file.read_text())
    doc["targets"]["demo-b"] = dict(doc["targets"]["*"])
    demos.targets_file.write_text(yaml.safe_dump(doc))
    _age(demos, "demo-b", 1)
    code, out = deployer(demos, "destroy", "--older-than", "14d", "--yes", "--output", "plain")
    assert code == 0, out
    assert "demo-b is older here, but its entry in" in out and "is 'demo-b', not '*': kept" in out
    assert len(parts(demos, "demo-b")) == 6


def test_destroy_that_cannot_remove_a_shared_file_keeps_the_state_and_exits_1(demos):
    # The next deploy of that name would link the old customer's file back in.
    upload = demos.root / "www" / "demo-a.shared" / "media" / "upload.jpg"
    upload.write_bytes(b"a customer's file")
    if subprocess.run(["chattr", "+i", str(upload)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        code, out = deployer(demos, "destroy", "demo-a", "--yes", "--output", "plain")
        assert code == 1 and "files of it are left" in out, out
        assert "www/demo-a.deployer" in parts(demos, "demo-a")  # list and destroy still find it
        code, out = deployer(demos, "list", "--json")
        assert "demo-a" in [i["name"] for i in json.loads(out)], out
    finally:
        subprocess.run(["chattr", "-i", str(upload)], check=True)
    code, out = deployer(demos, "destroy", "demo-a", "--yes", "--output", "plain")
    assert code == 0, out
    assert parts(demos, "demo-a") == []


@pytest.mark.parametrize("command", [("list",), ("releases", "demo-a"), ("history", "demo-a")])
def test_every_command_takes_output_json_and_json_is_its_alias(demos, command):
    code, long = deployer(demos, *command, "--output", "json")
    assert code == 0, long
    code, short = deployer(demos, *command, "--json")

    def same(doc):  # but for the age, which grows between the two
        return [{k: v for k, v in i.items() if k != "age_seconds"} for i in doc] if isinstance(doc, list) else doc
    assert code == 0 and same(json.loads(short)) == same(json.loads(long))
