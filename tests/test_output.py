"""--output teamcity, json and plain, line by line, on real local deploys."""

import io
import json
import re
import shlex

import pytest
import yaml

from deployer import packaging, steps
from deployer.cli import main
from deployer.output import details
from tests.conftest import REPO

# A quote, a backslash and a non-ASCII letter: JSON and TeamCity escape each.
SECRET = 's3cr3t-Pä55"w\\ord|[x]'

MIGRATE = f"echo migrating with {shlex.quote(SECRET)}"
TC = re.compile(r"^##teamcity\[(\w+)((?: \w+='(?:[^'|]|\|.)*')*)\]$")


@pytest.fixture
def local(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "manage.py").write_text("x\n")
    (tmp_path / "vhost").write_text("ServerName <<HOSTNAME>>\n# password <<DB_PASSWORD>>\n")
    monkeypatch.setenv("DEPLOYER_TEST_DB_PASSWORD", SECRET)

    def run(*extra, migrate=MIGRATE, env=None):
        doc = {"targets": {"local": {
            "transport": "local", "deploy_root": "www",
            "apache": {"dir": "apache2", "ctl": "true"},
            "migrate": migrate, "package": {"source": "src"}, "template": "vhost",
            "vars": {"DB_PASSWORD": {"env": "DEPLOYER_TEST_DB_PASSWORD", "secret": True}},
        }}}
        (tmp_path / "targets.yaml").write_text(yaml.safe_dump(doc))
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        out = io.StringIO()
        code = main(["local", "local.test", "--targets", str(tmp_path / "targets.yaml"), *extra],
                     stdout=out)
        return code, out.getvalue().splitlines()

    run.tmp = tmp_path
    return run


def _messages(lines):
    """Parse every service message; fail on a line that is one but malformed."""
    parsed = []
    for line in lines:
        if line.startswith("##teamcity"):
            m = TC.match(line)
            assert m, f"malformed service message: {line}"
            attrs = dict(re.findall(r"(\w+)='((?:[^'|]|\|.)*)'", m.group(2)))
            parsed.append((m.group(1), attrs))
    return parsed


def test_teamcity_blocks_open_and_close_per_stage(local):
    code, lines = local(env={"TEAMCITY_VERSION": "2025.1"})  # --output auto picks teamcity
    assert code == 0
    msgs = _messages(lines)
    blocks = [(kind, a["name"]) for kind, a in msgs if kind.startswith("block")]
    # No block for vpn: the local target has none, and an empty block says nothing.
    stages = ["package", "upload", "render", "migrate", "restart"]
    assert blocks == [(k, s) for s in stages for k in ("blockOpened", "blockClosed")]
    assert not [m for m in msgs if m[0] == "buildProblem"]


def test_teamcity_failure_closes_block_and_reports_escaped_problem(local):
    code, lines = local("--output", "teamcity", migrate="echo \"it's [bad] | now\" >&2; exit 4")
    assert code == 1
    msgs = _messages(lines)
    blocks = [(kind, a["name"]) for kind, a in msgs if kind.startswith("block")]
    assert blocks[-2:] == [("blockOpened", "migrate"), ("blockClosed", "migrate")]
    assert "restart" not in {name for _, name in blocks}
    problems = [a for kind, a in msgs if kind == "buildProblem"]
    assert len(problems) == 1
    assert problems[0]["description"].startswith("migrate: ")
    assert problems[0]["identity"] == "deployer-exit-1"
    # The stage's stderr is in the log, escaped where it sits inside a message.
    assert any("it's [bad] | now" in line for line in lines if not line.startswith("##"))


def test_json_is_one_object_per_line_in_order(local):
    code, lines = local("--output", "json")
    assert code == 0
    events = [json.loads(line) for line in lines]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "finished"
    assert events[-1]["exit_code"] == 0 and events[-1]["error"] is None
    stage_events = [(e["event"], e["stage"]) for e in events if e["event"].startswith("stage")]
    assert stage_events[:2] == [("stage_started", "package"), ("stage_finished", "package")]
    steps = [e for e in events if e["event"] == "step_finished"]
    assert all(e["ok"] for e in steps)
    assert {e["host"] for e in steps if e["stage"] != "package"} == {"local"}


def test_json_dry_run_lists_planned_steps(local):
    code, lines = local("--output", "json", "--dry-run")
    assert code == 0
    events = [json.loads(line) for line in lines]
    planned = [e for e in events if e["event"] == "planned"]
    assert [e["stage"] for e in planned] == [
        "package", "upload", "upload", "render", "render", "render", "render", "render", "migrate",
        "restart", "restart", "restart", "after a successful run"]
    assert not (local.tmp / "www").exists()


@pytest.mark.parametrize("output", ["plain", "json", "teamcity", "rich"])
@pytest.mark.parametrize("dry", [True, False])
def test_secrets_never_appear(local, output, dry):
    code, lines = local("--output", output, *(["--dry-run"] if dry else []))
    assert code == 0
    text = decoded(lines)
    assert SECRET not in text
    assert "********" in text
    if not dry:  # but the host got the real value
        conf = (local.tmp / "apache2" / "sites-available" / "local.conf").read_text()
        assert SECRET in conf


@pytest.mark.parametrize("output", ["plain", "json", "teamcity"])
def test_secret_given_with_var_is_masked_too(local, output):
    other = "0ther-s3cret"
    code, lines = local("--output", output, "--dry-run", "--var", f"DB_PASSWORD={other}")
    assert code == 0
    assert other not in decoded(lines)


def decoded(lines: list[str]) -> str:
    """The output as a reader sees it: JSON and service-message escapes undone,
    so a secret that only survived in escaped form is found too."""
    out = []
    for line in lines:
        if line.startswith("{"):
            line = json.dumps(json.loads(line), ensure_ascii=False)
            line = line.replace('\\"', '"').replace("\\\\", "\\")
        elif line.startswith("##teamcity"):
            line = re.sub(r"\|(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), line)
        out.append(line)
    return "\n".join(out)


def test_usage_error_exit_2_with_reason(local):
    code, lines = local("--only", "nosuchstage", "--output", "plain")
    assert code == 2
    assert lines[-1].startswith("error: no stage 'nosuchstage'")


def test_help_mentions_every_exit_code(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "130"):
        assert f"\n  {code}" in text
    assert "--dry-run" in text and "targets.yaml" in text


def test_readme_documents_every_exit_code():
    readme = (REPO / "README.md").read_text()
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
        assert code in readme


def test_teamcity_service_messages_from_a_host_are_escaped(local):
    # A compromised host printing a service message must not get TeamCity to
    # publish the agent's key or set a parameter.
    forged = "##teamcity[publishArtifacts '/root/.ssh/id_ed25519']"
    code, lines = local("--output", "teamcity", migrate=f"echo \"{forged}\"; echo \"  {forged}\" >&2; exit 1")
    assert code == 1
    assert not [line for line in lines if "##teamcity[publishArtifacts" in line]
    assert not [kind for kind, _ in _messages(lines) if kind == "publishArtifacts"]
    texts = [a["text"] for kind, a in _messages(lines) if kind == "message"]
    assert any("publishArtifacts" in t for t in texts)


def test_rich_output_takes_brackets_in_titles_as_text(local, monkeypatch):
    code, lines = local("--output", "rich", migrate="echo '[/]' done; echo '[bold]x'")
    assert code == 0, lines
    assert any("[/]" in line for line in lines)


def test_a_file_name_with_a_line_break_cannot_forge_a_line_of_the_plan():
    name = ".env\n##teamcity[setParameter name='x' value='y']"
    manifest = packaging.Manifest("0" * 64, ("app.py",), 3, ((name, "environment file"),), ())
    lines = details(steps.Build("package", source="/src", dest="/w/a.tgz", manifest=manifest))
    assert f"left out: {name!r}: environment file" in lines
    assert not [line for line in lines if line.startswith("##teamcity")]
