"""The host programs are files (deployer/remote/sh/*.sh): every one has its
builder, every builder its file, and what is sent is what was checked."""

import ast
import re
import shutil
import subprocess

import pytest

from deployer.remote import hostscripts
from tests.conftest import REPO

SH = REPO / "deployer" / "remote" / "sh"


def _programs_built() -> dict[str, list[str]]:
    """Each name passed to hostscripts.program() in deployer's code, with where."""
    built: dict[str, list[str]] = {}
    for path in (REPO / "deployer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = getattr(node, "func", None) and getattr(node.func, "attr", getattr(node.func, "id", None))
            if name == "program" and node.args and isinstance(node.args[0], ast.Constant):
                built.setdefault(node.args[0].value, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return built


def test_every_program_has_its_builder_and_every_builder_its_program():
    files = {p.stem for p in SH.glob("*.sh")}
    built = _programs_built()
    assert set(built) == files, {"without a file": set(built) - files, "without a builder": files - set(built)}
    assert all(len(where) == 1 for where in built.values()), built


def test_every_library_is_included_and_every_include_exists():
    included = set()
    for path in SH.glob("*.sh"):
        for name in re.findall(r"^\. \./(lib/[a-z-]+\.sh)$", path.read_text(), re.M):
            assert (SH / name).is_file(), (path.name, name)
            included.add(name)
    assert included == {f"lib/{p.name}" for p in (SH / "lib").glob("*.sh")}


@pytest.mark.parametrize("name", sorted(p.stem for p in SH.glob("*.sh")))
def test_what_is_sent_is_the_file_with_its_libraries_and_parses(name):
    sent = hostscripts.script(name)
    # Comment lines stay home: the program travels in every session's argv.
    assert not [line for line in sent.splitlines() if line.lstrip().startswith("#")]
    assert ". ./lib/" not in sent
    for lib in re.findall(r"^\. \./(lib/[a-z-]+\.sh)$", (SH / f"{name}.sh").read_text(), re.M):
        lines = (SH / lib).read_text().splitlines(True)
        body = "".join(line for line in lines if not line.lstrip().startswith("#"))
        assert body in sent
    for shell in ("dash", "bash"):
        if shutil.which(shell):
            check = subprocess.run([shell, "-n"], input=sent, capture_output=True, text=True)
            assert check.returncode == 0, check.stderr


def test_a_program_runs_with_its_name_in_ps_and_its_arguments_positional(tmp_path):
    out = tmp_path / "out"
    command = hostscripts.program("shared-files", str(tmp_path), "out", "missing; touch pwned")
    run = subprocess.run(["sh", "-c", command.line()], capture_output=True, text=True)
    assert command.argvs[0][:2] == ("sh", "-c") and command.argvs[0][3] == "deployer-shared-files"
    assert run.returncode != 0 and "missing; touch pwned" in run.stderr
    assert not (tmp_path / "pwned").exists() and not out.exists()


@pytest.mark.parametrize("came", [None, -2, 20, 0])
def test_the_runs_last_commands_run_only_when_they_came_whole(tmp_path, came):
    # sh/run-end.sh, on the held session's stdin: cut short (the connection
    # closed while they came), none runs, not even the part that came.
    script = f"touch {tmp_path}/a\ntouch {tmp_path}/b\n# MARK".encode()
    r = subprocess.run(["sh", "-c", hostscripts.run_end("MARK").line()], input=script[:came], capture_output=True)
    made = sorted(p.name for p in tmp_path.iterdir())
    if came is None:  # whole: the mark echoed first
        assert (r.returncode, r.stdout, made) == (0, b"MARK\n", ["a", "b"])
    else:
        assert r.returncode == 1 and b"came cut short; none of them ran" in r.stderr and made == []
