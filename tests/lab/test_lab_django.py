"""A real Django project (examples/djangoproject: Django 5.2 and 23 more
packages from PyPI, one of them only below Python 3.11.3) on two lab hosts
through the VPN, the hosts with no index, Postgres in the first host's
namespace, deployed with nothing but its targets.yaml and templates:
cold, warm (nothing made again), a requirements change (one new
virtualenv a host), a rollback (its virtualenv still there), a demo
instance with a database of its own, and its destroy. Every step is
checked over HTTP and in the database.

The wheels come from .ci/app-wheels (.ci/run downloads them from PyPI):
the runner resolves offline too, so the test does not depend on PyPI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from deployer.config import loader as config_loader
from tests.conftest import REPO, SYSTEM_PYTHON

from .fixtures import lab, lab_session  # noqa: F401
from .lab import SHARED_DIR_ON_HOSTS

pytestmark = pytest.mark.lab

PROJECT = REPO / "examples" / "djangoproject"
APP_WHEELS = REPO / ".ci" / "app-wheels"
DB_PASSWORD = "pw4shop9"  # the lab's own, and masked in the output like any secret
SUPER_PASSWORD = "pw4postgres7"


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        pytest.skip("needs Debian's postgresql (run .ci/run)")
    return found[-1].parent


@pytest.fixture
def postgres(lab):  # noqa: F811
    """Postgres in host 0's namespaces, on its private address, a role
    `shop` that may create databases; stopped after the test by pg_ctl."""
    pg = _postgres_bin()
    data = "/srv/pg/data"
    lab.run(0, "rm -rf /srv/pg && mkdir -p /srv/pg /run/pg && chown postgres: /srv/pg /run/pg && (umask 077"
               f" && printf '%s\\n' {SUPER_PASSWORD} > /srv/pg/pw) && chown postgres: /srv/pg/pw")
    lab.run(0, f"runuser -u postgres -- {pg}/initdb -D {data} -U postgres -A scram-sha-256 --pwfile=/srv/pg/pw",
            timeout=120)
    lab.run(0, f"echo 'host all all 198.18.1.0/24 scram-sha-256' >> {data}/pg_hba.conf")
    lab.run(0, f"runuser -u postgres -- {pg}/pg_ctl -D {data} -l /srv/pg/log -w -t 60 start -o"
               f" '-c listen_addresses={lab.addresses[0]} -c unix_socket_directories=/run/pg -c fsync=off'",
            timeout=90)
    try:
        sql(lab, f"CREATE ROLE shop LOGIN CREATEDB PASSWORD '{DB_PASSWORD}'")
        yield lab.addresses[0]
    finally:
        lab.run(0, f"runuser -u postgres -- {pg}/pg_ctl -D {data} -m fast -w stop", check=False, timeout=60)


def sql(lab, query: str, db: str = "postgres") -> str:  # noqa: F811
    return lab.run(0, f"PGPASSWORD={SUPER_PASSWORD} psql -h /run/pg -U postgres -d '{db}' -tAc \"{query}\"").stdout


class Shop:
    """The project, copied, with a targets.yaml for the lab made from its own."""

    def __init__(self, lab, tmp: Path, db_host: str):  # noqa: F811
        self.lab, self.tmp = lab, tmp
        self.app = tmp / "shop"
        shutil.copytree(PROJECT, self.app, ignore=shutil.ignore_patterns("__pycache__", "staticfiles"))
        # As deployer reads it: YAML 1.2 booleans, so `on: first` stays a key named on.
        own = yaml.load((PROJECT / "targets.yaml").read_text(), Loader=config_loader._Loader)["defaults"]
        hosts_python = subprocess.run([SYSTEM_PYTHON, "-c", "import platform; print(platform.python_version())"],
                                      capture_output=True, text=True, check=True).stdout.strip()
        doc = lab.targets(
            self.app,
            package={**own["package"], "source": str(self.app)},
            template=str(self.app / own["template"]),
            python={**own["python"], "requirements": str(self.app / "requirements.txt"), "version": hosts_python,
                    "no_index": True, "find_links": [str(APP_WHEELS)]},
            files=[{**own["files"][0], "template": str(self.app / own["files"][0]["template"])}],
            shared={**own["shared"], "root": SHARED_DIR_ON_HOSTS},
            vars={**own["vars"], "DB_HOST": {"value": db_host, "export": True},
                  "SECRET_KEY": {"value": "lab-secret-key-0123456789", "secret": True},
                  "DB_PASSWORD": {"value": DB_PASSWORD, "secret": True, "export": True}},
            hooks=own["hooks"],
            health={"path": "/health", "timeout": 60},
        )
        self.targets = tmp / "targets.yaml"
        self.targets.write_text(yaml.safe_dump(doc))

    def run(self, *argv: str) -> str:
        # A cache of wheel sets of its own: the cold deploy makes the set.
        proc = subprocess.run([sys.executable, "-m", *argv, "--targets", str(self.targets), "--output", "plain"],
                              capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                              env={**os.environ, "XDG_CACHE_HOME": str(self.tmp / "cache")})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert DB_PASSWORD not in proc.stdout
        return proc.stdout

    def deploy(self, name: str, what: str = "") -> str:
        started = time.monotonic()
        out = self.run("deployer", name, f"{name}.example.test")
        if what:  # the CI log keeps how long each took (not asserted: see bench/)
            print(f"{what}: {time.monotonic() - started:.1f} s")
        return out

    def version(self, name: str) -> list[dict]:
        """/version of every host, through a VPN client of the test's own."""
        out = []
        with self.lab.vpn_client(log=self.tmp / "check.log"):
            for i in range(len(self.lab.hosts)):
                status, _, body = self.lab.http_get(i, "/version", host=f"{name}.example.test")
                assert status == 200, body
                out.append(json.loads(body))
                status, _, css = self.lab.http_get(i, "/static/catalog/site.css", host=f"{name}.example.test")
                assert status == 200 and "font-family" in css
        return out

    def venvs(self) -> list[list[str]]:
        return [sorted(p.name for p in h.path("/var/www/.deployer-venvs").iterdir()) for h in self.lab.hosts]


def test_a_real_django_project_with_postgres_through_every_step(lab, postgres, tmp_path):  # noqa: F811
    if not APP_WHEELS.is_dir():
        pytest.skip("needs .ci/app-wheels (made by .ci/run)")
    shop = Shop(lab, tmp_path, postgres)
    hosts = len(lab.hosts)

    # Cold: the database made by the first-deploy hook, a virtualenv built on every host.
    out = shop.deploy("shop", "cold")
    assert "24 packages, 24 wheels" in out
    assert out.count("built the virtualenv") == hosts
    assert "Applying catalog.0002_seed... OK" in out
    first = shop.version("shop")
    release1 = first[0]["release"]
    assert {v["release"] for v in first} == {release1}
    assert first[0]["django"].startswith("5.2.") and first[0]["markdown"] == "3.7"
    assert {v["prefix"] for v in first} == {"/var/www/shop/.venv"}  # the release's virtualenv, not the system's
    assert {v["database"] for v in first} == {"shop_shop"} and first[0]["products"] == 2
    assert sql(lab, "SELECT count(*) FROM catalog_product", "shop_shop").strip() == "2"
    (venv,) = {tuple(v) for v in shop.venvs()}

    # Warm: one file changed; nothing made again, on the runner or the hosts.
    (shop.app / "catalog" / "static" / "catalog" / "site.css").write_text("body { font-family: serif }\n")
    out = shop.deploy("shop", "warm")
    assert "made by an earlier run" in out and out.count("reused the virtualenv") == hosts
    assert "built the virtualenv" not in out
    second = shop.version("shop")
    release2 = second[0]["release"]
    assert release2 != release1 and {tuple(v) for v in shop.venvs()} == {venv}

    # A requirements change: one new virtualenv a host; the old one stays for the releases that use it.
    pinned = (shop.app / "requirements.txt").read_text()
    assert "markdown==3.7 " in pinned
    (shop.app / "requirements.txt").write_text(_bump_markdown(pinned))
    out = shop.deploy("shop", "requirements change")
    assert out.count("built the virtualenv") == hosts
    third = shop.version("shop")
    assert {v["markdown"] for v in third} == {"3.8"}
    assert all(len(v) == 2 for v in shop.venvs())

    # Back: the previous release, its virtualenv still there and used again.
    out = shop.run("deployer.cli.manage", "rollback", "shop")
    back = shop.version("shop")
    assert {v["release"] for v in back} == {release2} and {v["markdown"] for v in back} == {"3.7"}
    assert sql(lab, "SELECT count(*) FROM catalog_product", "shop_shop").strip() == "2"

    # A demo instance: a database of its own, made by the hook, migrated.
    out = shop.deploy("shop-demo", "demo instance")
    demo = shop.version("shop-demo")
    assert {v["database"] for v in demo} == {"shop_shop-demo"} and demo[0]["products"] == 2
    assert sql(lab, "SELECT count(*) FROM catalog_product", "shop_shop-demo").strip() == "2"
    # ... with the virtualenv of the third release of shop: the same requirements, the same packages.
    assert out.count("reused the virtualenv") == hosts
    assert all(len(v) == 2 for v in shop.venvs())

    # Its destroy: the database dropped, the site gone; shop untouched.
    shop.run("deployer.cli.manage", "destroy", "shop-demo", "--yes")
    assert sql(lab, "SELECT count(*) FROM pg_database WHERE datname = 'shop_shop-demo'").strip() == "0"
    assert {v["release"] for v in shop.version("shop")} == {release2}
    # And shop's: no release is left to use a virtualenv, and none is left.
    shop.run("deployer.cli.manage", "destroy", "shop", "--yes")
    assert shop.venvs() == [[]] * hosts


def _bump_markdown(pinned: str) -> str:
    """requirements.txt with Markdown 3.8 instead of 3.7 (its hashes go: uv finds them again)."""
    lines, skip = [], False
    for line in pinned.splitlines():
        if line.startswith("markdown==3.7"):
            lines.append("markdown==3.8")
            skip = True
        elif skip and line.startswith("    "):
            continue
        else:
            skip = False
            lines.append(line)
    return "\n".join(lines) + "\n"
