"""The README's first command: `deploy local local.test` with the checkout's own
targets.yaml runs every stage for real on this machine and serves the site
with an Apache of its own on a loopback port."""

import http.client
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, SYSTEM_PYTHON, free_port, needs_local_site, process_running

LOCAL_CTL = REPO / "deployer" / "remote" / "local-apache2ctl"
README_PORT = 8480  # the local target's apache: port in targets.yaml
WHEELHOUSE = REPO / ".ci" / "wheelhouse"  # made by .ci/run


def _get(port: int, path: str, host: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def _apache_pid(checkout: Path) -> int:
    return int((checkout / ".deployer-local" / "apache2" / "run" / "apache2.pid").read_text())


def _stop(checkout: Path) -> None:
    """Stop the checkout's own Apache, which this test started (by its pid
    file), with the command docs/tutorial.md gives: its folder relative."""
    apache = checkout / ".deployer-local" / "apache2"
    if (apache / "run" / "apache2.pid").exists():
        subprocess.run(["sh", str(LOCAL_CTL), ".deployer-local/apache2", "stop"], cwd=checkout, timeout=30,
                       capture_output=True)


def _deploy(checkout: Path) -> str:
    """`deploy local local.test` in the checkout, with PATH as the machine has it:
    its first python3 may be a pyenv build without Django, which the local
    target must not depend on."""
    proc = subprocess.run([sys.executable, "-m", "deployer", "local", "local.test", "--output", "plain"],
                          cwd=checkout, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _copy_checkout(dest: Path, parts=("targets.yaml", "templates", "examples/djangoapp")) -> Path:
    for part in parts:
        src, dst = REPO / part, dest / part
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", ".deployer-local"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    return dest


@needs_local_site
def test_deploy_local_runs_every_stage_and_serves_the_site(tmp_path):
    checkout = _copy_checkout(tmp_path / "checkout")
    port = free_port()  # not the README's: a local site of the developer's may hold that
    targets = checkout / "targets.yaml"
    text = targets.read_text()
    assert f"port: {README_PORT}}}" in text
    targets.write_text(text.replace(f"port: {README_PORT}}}", f"port: {port}}}"))
    try:
        out = _deploy(checkout)
        local = checkout / ".deployer-local"
        live = local / "www" / "local"
        assert live.is_symlink() and (live / "django.wsgi").is_file()
        vhost = (local / "apache2" / "sites-available" / "local.conf").read_text()
        assert f"WSGIScriptAlias / {live}/django.wsgi" in vhost
        assert f"<VirtualHost *:{port}>" in vhost
        assert (local / "apache2" / "sites-enabled" / "local.conf").is_symlink()
        # In the instance's shared directory, linked into the release.
        assert os.readlink(live / "data") == str(local / "www" / "local.shared" / "data")
        db = sqlite3.connect(local / "www" / "local.shared" / "data" / "local.sqlite3")
        applied = db.execute("SELECT name FROM django_migrations WHERE app = 'hello' ORDER BY name").fetchall()
        db.close()
        assert applied == [("0001_initial",), ("0002_seed_greetings",)]
        assert "Syntax OK" in out  # the rendered vhost passed Apache's own check
        assert out.rstrip().endswith(f"see it: curl -H 'Host: local.test' http://127.0.0.1:{port}/"), out
        status, page = _get(port, "/", "local.test")
        assert status == 200 and "greeter: local" in page
        first = json.loads(_get(port, "/health", "local.test")[1])
        assert first["release_dir"] == os.readlink(live).rsplit("/", 1)[-1]
        pid = _apache_pid(checkout)

        # A second deploy, of code only, restarts the site's mod_wsgi daemons
        # one at a time, not Apache; the site serves the new release.
        (checkout / "examples" / "djangoapp" / "hello" / "new.txt").write_text("new\n")
        out = _deploy(checkout)
        assert "mod_wsgi daemons of local restarted one at a time (2)" in out
        assert "reloaded gracefully" not in out and _apache_pid(checkout) == pid
        second = json.loads(_get(port, "/health", "local.test")[1])
        assert second["release_dir"] != first["release_dir"]
        assert second["release_dir"] == os.readlink(live).rsplit("/", 1)[-1]
    finally:
        _stop(checkout)
    assert not process_running(pid)


# What the local Apache loads (docs/tutorial.md: Your first deploy), besides its MPM.
LOCAL_MODULES = {"mod_authz_core", "mod_authz_host", "mod_alias", "mod_mime", "mod_dir", "mod_env",
                 "mod_headers", "mod_setenvif", "mod_wsgi"}


@needs_local_site
def test_the_local_apache_serves_only_what_the_site_grants(tmp_path):
    checkout = _copy_checkout(tmp_path / "checkout")
    port = free_port()
    targets = checkout / "targets.yaml"
    targets.write_text(targets.read_text().replace(f"port: {README_PORT}}}", f"port: {port}}}"))
    # A folder the site aliases but grants nothing in.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "page.txt").write_text("not granted\n")
    template = checkout / "templates" / "default_template"
    template.write_text(template.read_text().replace("</VirtualHost>",
                                                     f"    Alias /outside/ {outside}/\n</VirtualHost>"))
    # A file of another owner than the one who deploys, outside the deploy root.
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign.txt"
        foreign.write_text("someone else's\n")
        os.chown(foreign, 65534, 65534)
    else:
        foreign = Path("/etc/passwd")
    try:
        _deploy(checkout)
        media = checkout / ".deployer-local" / "www" / "local" / "media"
        assert media.is_symlink()
        # The site itself, through its links (the live path, media/ to the shared folder).
        (media / "upload.txt").write_text("uploaded\n")
        assert _get(port, "/media/upload.txt", "local.test") == (200, "uploaded\n")
        assert _get(port, "/static/greeter.css", "local.test")[0] == 200
        # Nothing of the system's modules' configs: no status page, no icons.
        assert _get(port, "/server-status", "local.test")[0] != 200
        assert _get(port, "/icons/apache_pb.svg", "local.test")[0] != 200
        maps = Path(f"/proc/{_apache_pid(checkout)}/maps").read_text()
        loaded = set(re.findall(r"/(mod_\w+)\.so[-.0-9]*$", maps, re.M))  # mod_wsgi.so-3.11
        assert {m for m in loaded if not m.startswith("mod_mpm_")} == LOCAL_MODULES
        assert len(loaded - LOCAL_MODULES) == 1, loaded
        # A link to a file of another owner is refused, as is anything not granted.
        (media / "planted.txt").symlink_to(foreign)
        assert _get(port, "/media/planted.txt", "local.test")[0] == 403
        (media / ".htpasswd").write_text("user:hash\n")
        assert _get(port, "/media/.htpasswd", "local.test")[0] == 403
        assert _get(port, "/outside/page.txt", "local.test")[0] == 403
    finally:
        _stop(checkout)


def test_a_builtin_apache_is_only_for_the_local_transport(tmp_path):
    from deployer.config import load
    from deployer.errors import ConfigError

    (tmp_path / "targets.yaml").write_text("targets:\n  alpha:\n    hosts: [web1]\n"
                                           "    apache: {ctl: builtin}\n")
    with pytest.raises(ConfigError, match="targets/alpha/apache/ctl: builtin is deployer's own Apache"):
        load(tmp_path / "targets.yaml")


def _readme_first_command() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README.md has no sh block"
    return block.group(1).strip()


@needs_local_site
@pytest.mark.skipif(os.geteuid() != 0, reason="runs the command as root, as a fresh machine's admin would")
@pytest.mark.skipif(not WHEELHOUSE.is_dir(), reason="needs .ci/wheelhouse (made by .ci/run)")
def test_readme_first_command_as_written(tmp_path):
    """Word for word, in a fresh copy of the checkout, with PATH as the machine
    has it (its python3 may be pyenv's). Only the network is kept out: apt-get
    checks that its packages are installed, and pip reads .ci/wheelhouse."""
    command = _readme_first_command()
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", README_PORT)) == 0:
            pytest.fail(f"something already listens on 127.0.0.1:{README_PORT}, the README's local site port")
    checkout = tmp_path / "checkout"
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True,
                           text=True).stdout.split("\0")
    for f in filter(None, files):
        dst = checkout / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / f).exists():
            shutil.copy2(REPO / f, dst)
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "apt-get").write_text(
        "#!/bin/sh\n# The README's apt-get, offline: what it installs must be installed already.\n"
        'case "$1" in update) exit 0 ;; install) shift ;; *) exit 1 ;; esac\n'
        'for p; do case "$p" in -*) continue ;; esac\n'
        '  dpkg-query -W -f=\'${Status}\' "$p" 2>/dev/null | grep -q "install ok installed"'
        ' || { echo "apt-get: $p is not installed" >&2; exit 1; }\ndone\n')
    (shims / "apt-get").chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}",
           "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    try:
        started = time.monotonic()
        proc = subprocess.run(["sh", "-c", command], cwd=checkout, env=env, capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)
        took = time.monotonic() - started
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        last = proc.stdout.rstrip().splitlines()[-1]
        assert last.startswith("done: release ") and f"http://127.0.0.1:{README_PORT}/" in last, last
        status, page = _get(README_PORT, "/", "local.test")
        assert status == 200 and "greeter: local" in page
        print(f"README's first command: exit 0 in {took:.0f} s")
    finally:
        _stop(checkout)


@needs_local_site
def test_the_builtin_configtest_writes_nothing_and_never_replaces_a_foreign_config(tmp_path):
    apache = tmp_path / "apache2"
    (apache / "sites-enabled").mkdir(parents=True)
    (apache / "sites-enabled" / "x.conf").write_text("<VirtualHost *:18080>\nServerName x.test\n</VirtualHost>\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = subprocess.run(["sh", str(LOCAL_CTL), str(apache), "configtest"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "Syntax OK" in proc.stderr + proc.stdout, proc.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    (apache / "apache2.conf").write_text("# the system's, say\n")
    proc = subprocess.run(["sh", str(LOCAL_CTL), str(apache), "graceful"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "was not written by deployer's local-apache2ctl" in proc.stderr
    assert (apache / "apache2.conf").read_text() == "# the system's, say\n"


@pytest.mark.parametrize("folder", ["/etc/apache2", "with space"])
def test_a_builtin_apache_needs_a_plain_folder_of_its_own(tmp_path, folder):
    from deployer.config import load
    from deployer.errors import ConfigError

    (tmp_path / "t").write_text("x\n")
    (tmp_path / "targets.yaml").write_text(
        "targets:\n  local:\n    transport: local\n    template: t\n"
        f"    apache: {{ctl: builtin, dir: {folder}}}\n")
    with pytest.raises(ConfigError, match="targets/local/apache/dir: builtin needs a folder of its own"):
        load(tmp_path / "targets.yaml")


def _tracked(prefix: str = ".") -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--", prefix], capture_output=True,
                         check=True, text=True).stdout
    return [f for f in out.split("\0") if f and (REPO / f).exists()]


@needs_local_site
@pytest.mark.skipif(not WHEELHOUSE.is_dir(), reason="needs .ci/wheelhouse (made by .ci/run)")
def test_the_built_wheel_holds_every_package_file_and_deploys(tmp_path):
    """A package that pyproject.toml's discovery misses, or a data file it does
    not ship, is gone from the wheel while an editable install still works: so
    build the wheel from the tracked files, install it into a fresh venv and
    deploy the example from there."""
    source = tmp_path / "source"
    for f in _tracked():
        (source / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, source / f)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(dist), str(source)], env=env, check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("deployer-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert {f for f in _tracked("deployer") if "__pycache__" not in f} <= shipped

    venv = tmp_path / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], env=env, check=True,
                   capture_output=True, timeout=300)
    checkout = _copy_checkout(tmp_path / "checkout")
    port = free_port()
    targets = checkout / "targets.yaml"
    targets.write_text(targets.read_text().replace(f"port: {README_PORT}}}", f"port: {port}}}"))
    try:
        proc = subprocess.run([str(venv / "bin" / "deploy"), "local", "local.test", "--output", "plain"],
                              cwd=checkout, env=env, capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        # The code that ran is the wheel's, not the checkout's.
        assert "site-packages" in subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import deployer; print(deployer.__file__)"],
            cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        status, page = _get(port, "/", "local.test")
        assert status == 200 and "greeter: local" in page
        schema = subprocess.run([str(venv / "bin" / "deployer"), "schema"], capture_output=True, check=True)
        assert schema.stdout == (REPO / "deployer" / "config" / "targets.schema.json").read_bytes()
    finally:
        _stop(checkout)


@needs_local_site
def test_a_missing_shared_file_fails_the_local_run_at_once(tmp_path):
    """The check fails before the upload in the same session: the rest of the
    session's input (the upload, waiting for the check's answer) has no
    reader, and the run must not wait for it until step_timeout."""
    checkout = _copy_checkout(tmp_path / "checkout")
    targets = checkout / "targets.yaml"
    text = targets.read_text().replace(f"port: {README_PORT}}}", f"port: {free_port()}}}")
    targets.write_text(text.replace("shared: {dirs: [data, media]}",
                                    "shared: {dirs: [data, media], files: [local_settings.py]}"))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "deployer", "local", "local.test", "--output", "plain"],
                          cwd=checkout, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "missing shared file(s):" in proc.stdout and "local_settings.py" in proc.stdout
    # Not a timing assertion of speed: step_timeout is 600 s, and the run waited it out before.
    assert time.monotonic() - started < 100
