"""The example app (examples/djangoapp) works: offline with Debian's Django,
and deployed by hand, the old bash script's way, on the lab's hosts."""

# Fixtures are imported, so test parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import io
import json
import shlex
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from .fixtures import lab, lab_session, vpn  # noqa: F401
from .lab import Lab

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "examples" / "djangoapp"
TEMPLATE = REPO / "templates" / "default_template"
SYSTEM_PYTHON = "/usr/bin/python3"  # what the hosts run: Debian's python3-django


def system_django() -> bool:
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import django"], capture_output=True)
    return r.returncode == 0


needs_system_django = pytest.mark.skipif(not system_django(), reason="needs python3-django")


def app_tarball(release: str) -> bytes:
    """The app as the build step would pack it, with RELEASE.txt = release."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(APP.rglob("*")):
            if "__pycache__" in p.parts or p.name == "RELEASE.txt":
                continue
            tar.add(p, arcname=str(p.relative_to(APP)), recursive=False)
        data = f"{release}\n".encode()
        info = tarfile.TarInfo("RELEASE.txt")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@needs_system_django
def test_app_offline(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "CONFIG_NAME": "offline", "DEPLOYER_SHARED_DIR": str(tmp_path),
           "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip

    def manage(*args: str) -> str:
        r = subprocess.run([SYSTEM_PYTHON, "manage.py", *args], cwd=APP, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    manage("check")
    manage("makemigrations", "--check", "--dry-run", "hello")
    probe = (
        "import json, django; django.setup()\n"
        "from django.test import Client\n"
        "c = Client()\n"
        "r = c.get('/health', HTTP_HOST='offline.example.test')\n"
        "print(json.dumps([r.status_code, r.content.decode()]))\n"
    )

    def health() -> tuple[int, dict]:
        r = subprocess.run([SYSTEM_PYTHON, "-c", probe], cwd=APP, env={**env, "DJANGO_SETTINGS_MODULE":
                           "greeter.settings"}, capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
        status, body = json.loads(r.stdout.strip().splitlines()[-1])
        return status, json.loads(body)

    assert health()[0] == 503  # not migrated yet
    manage("migrate", "--noinput")
    assert (tmp_path / "offline.sqlite3").exists()
    status, body = health()
    assert status == 200
    assert body["instance"] == "offline"
    assert body["greetings"] == 3
    assert body["migrations"] == ["0001_initial", "0002_seed_greetings"]


def ssh(c, cmd: str, timeout: float = 60) -> str:
    _, out, err = c.exec_command(cmd, timeout=timeout)
    text = out.read().decode()
    status = out.channel.recv_exit_status()
    assert status == 0, f"{cmd!r} exited {status}: {err.read().decode()}"
    return text


def eventually_get(lab: Lab, i: int, path: str, host: str, pred, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        got = lab.http_get(i, path, host=host)
        if pred(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.mark.lab
@needs_system_django
def test_app_deployed_by_hand_in_the_lab(lab: Lab, vpn) -> None:
    name, hostname = "alpha", "alpha.example.test"
    deploy_path = f"/var/www/{name}"
    releases = f"{deploy_path}.releases"
    vhost = (
        TEMPLATE.read_text()
        .replace("<<CONFIG_NAME>>", name)
        .replace("<<HOSTNAME>>", hostname)
        .replace("<<DEPLOY_PATH>>", deploy_path)
        .replace("<<HTTP_PORT>>", "80")
    )
    db = lab.shared_dir / f"{name}.sqlite3"

    def deploy(c, release: str, migrate: bool) -> None:
        sftp = c.open_sftp()
        try:
            sftp.putfo(io.BytesIO(app_tarball(release)), f"/tmp/{name}-{release}.tgz")
            with sftp.open(f"/etc/apache2/sites-available/{name}.conf", "w") as f:
                f.write(vhost)
        finally:
            sftp.close()
        rp = f"{releases}/{release}"
        ssh(c, f"mkdir -p {rp} && tar -xzf /tmp/{name}-{release}.tgz -C {rp} && rm /tmp/{name}-{release}.tgz")
        if migrate:
            env = f"CONFIG_NAME={name} DEPLOY_PATH={deploy_path} RELEASE_PATH={rp} HOSTNAME={hostname}"
            ssh(c, f"cd {rp} && env {env} python manage.py migrate --noinput")
        ssh(c, f"ln -sfn {shlex.quote(rp)} {deploy_path}.tmp && mv -T {deploy_path}.tmp {deploy_path}")
        ssh(c, f"a2ensite -q {name} && apache2ctl configtest && apache2ctl graceful")

    # The old script's hosts: no trace of a deploy by deployer of the same name
    # (its link to a stub would make a2ensite refuse).
    for h in lab.hosts:
        lab.run(h.index, f"rm -f /etc/apache2/sites-enabled/{name}.conf /etc/apache2/sites-available/{name}.*")
    clients = [lab.ssh_client(h.index) for h in lab.hosts]
    try:
        for n, c in enumerate(clients):
            deploy(c, "r1", migrate=(n == 0))  # one database: migrate once
        assert db.exists()
        for h in lab.hosts:
            status, _, body = eventually_get(lab, h.index, "/", hostname, lambda g: g[0] == 200)
            assert status == 200, body
            assert '<span id="instance">alpha</span>' in body
            assert '<span id="release">r1</span> (<span id="release-dir">r1</span>)' in body
            assert '<span id="greetings">3</span>' in body
            status, headers, css = lab.http_get(h.index, "/static/greeter.css", host=hostname)
            assert status == 200 and "greeter-static-marker" in css
            assert headers["Content-Type"].startswith("text/css")
            assert lab.run(h.index, f"readlink {deploy_path}").stdout.strip() == f"{releases}/r1"

        # A second release: the symlink switch plus a graceful restart is enough.
        for c in clients:
            deploy(c, "r2", migrate=False)
        for h in lab.hosts:
            status, _, body = eventually_get(
                lab, h.index, "/health", hostname, lambda g: g[0] == 200 and json.loads(g[2])["release"] == "r2"
            )
            info = json.loads(body)
            assert (status, info["release"], info["release_dir"], info["instance"]) == (200, "r2", "r2", "alpha")
            assert info["migrations"] == ["0001_initial", "0002_seed_greetings"]
            # Host headers outside ALLOWED_HOSTS are refused by Django.
            assert lab.http_get(h.index, "/health", host="alpha.elsewhere.test")[0] in (400, 404)
    finally:
        for c in clients:
            c.close()
        for h in lab.hosts:
            lab.run(
                h.index,
                f"a2dissite -q {name}; rm -rf {deploy_path} {releases} /etc/apache2/sites-available/{name}.conf;"
                f" rm -f /var/log/apache2/{name}-*.log; apache2ctl graceful",
                check=False,
            )
        db.unlink(missing_ok=True)
