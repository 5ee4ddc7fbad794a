"""Shell completion, asked of bash as the shell asks it: the code `deployer
completion bash` prints, then the completion function it registers, with
COMP_LINE and COMP_WORDS set as bash sets them on TAB."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def complete(line: str, cwd: Path) -> list[str]:
    """What bash offers for `line` (the cursor at its end)."""
    script = r'''
eval "$("$BIN/deployer" completion bash)"
read -ra COMP_WORDS <<< "$LINE"
case "$LINE" in *" ") COMP_WORDS+=("") ;; esac
COMP_LINE=$LINE COMP_POINT=${#LINE} COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_python_argcomplete "${COMP_WORDS[0]}"
printf '%s\n' "${COMPREPLY[@]}"
'''
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "BIN": str(BIN), "LINE": line}
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [w.strip() for w in proc.stdout.splitlines() if w.strip()]


pytestmark = pytest.mark.skipif(not (BIN / "deployer").exists() or not shutil.which("bash"),
                                reason="needs the installed deployer script and bash")


@pytest.fixture
def project(tmp_path):
    (tmp_path / "targets.yaml").write_text(
        "targets:\n  alpha: {transport: local}\n  apollo: {transport: local}\n  local: {transport: local}\n"
        "  '*': {transport: local}\n")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "default_template").write_text("ServerName <<HOSTNAME>>\n")
    return tmp_path


def test_config_names_come_from_targets_yaml(project):
    assert complete("deploy a", project) == ["alpha", "apollo"]
    assert complete("deployer destroy ap", project) == ["apollo"]
    assert complete("deployer releases l", project) == ["local"]


def test_the_targets_file_on_the_command_line_is_the_one_read(project, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    assert complete(f"deploy --targets {project / 'targets.yaml'} a", other) == ["alpha", "apollo"]
    assert complete("deploy a", other) == []  # no ./targets.yaml there: nothing, and no error


def test_subcommands_and_options(project):
    assert complete("deployer de", project) == ["destroy"]
    assert complete("deploy alpha alpha.example.com --dr", project) == ["--dry-run"]
    assert set(complete("deployer destroy --", project)) >= {"--older-than", "--keep-shared", "--yes"}


def test_zsh_code_parses():
    if not shutil.which("zsh"):
        pytest.skip("zsh is not installed")
    code = subprocess.run([str(BIN / "deployer"), "completion", "zsh"], capture_output=True, text=True,
                          check=True).stdout
    assert subprocess.run(["zsh", "-n", "-c", code], capture_output=True).returncode == 0
