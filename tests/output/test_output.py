"""--output teamcity, json and plain, line by line, on real local deploys."""

import io
import json
import re
import shlex

import pytest
import yaml

from deployer import steps
from deployer.artifact import packaging
from deployer.cli.deploy import main
from deployer.output import details
from tests.conftest import REPO, free_port

# A quote, a backslash and a non-ASCII letter: JSON and TeamCity escape each.
SECRET = 's3cr3t-Pä55"w\\ord|[x]'

MIGRATE = f"echo migrating with {shlex.quote(SECRET)}"
TC = re.compile(r"^##teamcity\[(\w+)((?: \w+='(?:[^'|]|\|.)*')*)\]$")
# The single-value form: ##teamcity[progressMessage 'text'].
TC_VALUE = re.compile(r"^##teamcity\[(\w+) '((?:[^'|]|\|.)*)'\]$")


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
            "apache": {"dir": "apache2", "ctl": "builtin", "port": free_port()},
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
            if m := TC_VALUE.match(line):
                parsed.append((m.group(1), {"value": m.group(2)}))
                continue
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
    assert [a["value"] for kind, a in msgs if kind == "progressMessage"] == [f"deployer: {s}" for s in stages]
    # A duration per stage, and the whole run's, for TeamCity's charts.
    stats = {a["key"]: float(a["value"]) for kind, a in msgs if kind == "buildStatisticValue"}
    assert set(stats) == {f"deployer.{s}.seconds" for s in stages} | {"deployer.total.seconds"}
    assert sum(v for k, v in stats.items() if k != "deployer.total.seconds") <= stats["deployer.total.seconds"]


def test_teamcity_failure_closes_block_and_reports_escaped_problem(local):
    code, lines = local("--output", "teamcity", migrate="echo \"it's [bad] | now\" >&2; exit 4")
    assert code == 1
    msgs = _messages(lines)
    blocks = [(kind, a["name"]) for kind, a in msgs if kind.startswith("block")]
    assert blocks[-2:] == [("blockOpened", "migrate"), ("blockClosed", "migrate")]
    assert "restart" not in {name for _, name in blocks}
    problems = [a for kind, a in msgs if kind == "buildProblem"]
    assert len(problems) == 1
    # Named for the stage and host, the same from build to build: TeamCity tells a new problem from a known one.
    assert problems[0]["description"] == "migrate failed on local: it|'s |[bad|] || now"
    assert problems[0]["identity"] == "deployer:migrate:local"
    # No chart point for a stage that failed.
    assert "deployer.migrate.seconds" not in {a["key"] for kind, a in msgs if kind == "buildStatisticValue"}
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
        "package", "upload", "upload", "render", "render", "render", "render", "render", "render", "render",
        "migrate",
        "restart", "restart", "after a successful run"]
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


def test_plain_ends_with_a_table_of_hosts_then_the_last_line(local):
    code, lines = local("--output", "plain", migrate="echo migrating; echo 'no such table' >&2; exit 4")
    assert code == 1
    # The failing command and the end of its output, under the step.
    at = next(i for i, line in enumerate(lines) if line.startswith("  migrate: ") and "FAILED" in line)
    assert lines[at + 1].startswith("      $ echo migrating; echo 'no such table' >&2; exit 4  (in ")
    assert lines[at + 2:at + 4] == ["      migrating", "      no such table"]
    table = lines[lines.index(next(line for line in lines if line.startswith("host "))):]
    assert table[0].split() == ["host", "stages", "time", "result"]
    assert table[1].split()[0] == "runner" and table[1].endswith("ok")
    assert table[2].startswith("local ") and table[2].endswith("FAILED in migrate")
    assert "upload, render, migrate" in table[2]
    # Migrate began: what it did is not undone, and the last line says so.
    assert table[-1].startswith("every host's files are as they were before the run;")
    assert "; NOT undone: migrate: echo migrating;" in table[-1] and table[-1].endswith("what it changed stays")


def test_json_finished_says_per_host_what_ran_and_how_long(local):
    code, lines = local("--output", "json")
    assert code == 0
    hosts = json.loads(lines[-1])["hosts"]
    assert set(hosts) == {"runner", "local"}
    assert hosts["local"]["stages"] == ["upload", "render", "migrate", "restart"]
    assert hosts["local"]["failed_in"] is None and hosts["local"]["seconds"] > 0


def test_a_build_problem_identity_fits_teamcity():
    from deployer.output import problem_identity

    assert problem_identity("upload", "web1.internal") == "deployer:upload:web1.internal"
    long = problem_identity("upload", "web1." + "x" * 80 + ".internal")
    assert len(long) <= 60 and long == problem_identity("upload", "web1." + "x" * 80 + ".internal")
    assert long != problem_identity("render", "web1." + "x" * 80 + ".internal")


def test_teamcity_reports_an_incomplete_undo_as_a_problem_of_its_own():
    from deployer import steps
    from deployer.connectors.result import Result
    from deployer.output import StepResult, TeamCityReporter

    out = io.StringIO()
    r = TeamCityReporter(out)
    r.start("alpha", "alpha.test", "R", False)
    r.step_finished("restart", steps.Run("apache graceful", ("web1",)), "web1", StepResult(Result(1, "", "no"), 1))
    r.finished(3, "apache graceful failed\nTHE UNDO DID NOT COMPLETE; these hosts need a person")
    problems = [a for kind, a in _messages(out.getvalue().splitlines()) if kind == "buildProblem"]
    assert [p["identity"] for p in problems] == ["deployer:restart:web1", "deployer-exit-3"]


# A host's stderr: a title change, a clipboard write, cursor up and erase with a
# forged last line, a lone CR, a C1 CSI and a bidi override (printf's octal
# escapes: \302\233 is U+009B, \342\200\256 U+202E).
HOSTILE_STDERR = (r"printf 'AH00526\033]0;pwned\007\033]52;c;eA==\007\033[1A\033[2Kdone: all live\rx"
                  r"\302\233y\342\200\256z\n' >&2; exit 1")


@pytest.mark.parametrize("output", ["plain", "teamcity", "rich"])
def test_a_failed_step_and_the_error_show_host_text_printable(local, output):
    code, lines = local("--output", output, migrate=HOSTILE_STDERR)
    assert code == 1
    text = "\n".join(lines)
    assert [c for c in text if not c.isprintable() and c != "\n"] == []
    # The step's output, and the error that quotes it (the error cuts its lines at the CR as well).
    shown = "AH00526?]0;pwned??]52;c;eA==??[1A?[2Kdone: all live"
    assert [line for line in lines if line.endswith(f"      {shown}?x?y?z")]
    assert [line for line in lines if line.endswith(f"  local: {shown}")]


def test_json_keeps_what_the_host_wrote_exactly(local):
    code, lines = local("--output", "json", migrate=HOSTILE_STDERR)
    assert code == 1
    events = [json.loads(line) for line in lines]
    exact = "AH00526\x1b]0;pwned\x07\x1b]52;c;eA==\x07\x1b[1A\x1b[2Kdone: all live\rx\x9by\u202ez\n"
    assert [e["stderr"] for e in events if e["event"] == "step_finished" and not e["ok"]] == [exact]
    assert "local: AH00526\x1b]0;pwned\x07\x1b]52;c;eA==\x07\x1b[1A\x1b[2Kdone: all live" in events[-1]["error"]
