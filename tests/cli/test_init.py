"""deployer.cli.init.init: a starting point that loads, and never a file of the user's replaced."""

import http.client
import io
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployer import config, context
from deployer.cli import init, manage, survey
from deployer.errors import UsageError
from deployer.plan import template
from tests.cli.test_build_and_python import APP_WHEELS, DJANGO, needs_app_wheels
from tests.conftest import SYSTEM_PYTHON, needs_local_site

REPO = Path(__file__).resolve().parents[2]
SKELETON = REPO / "deployer" / "skeleton"


def test_writes_the_files_and_they_load(tmp_path):
    written, _ = init.init(tmp_path)
    assert written == [tmp_path / "targets.yaml", tmp_path / "templates" / "default_template",
                       tmp_path / ".deployer" / "targets.schema.json"]
    assert written[0].read_bytes() == (SKELETON / "targets.yaml").read_bytes()
    assert written[1].read_bytes() == (SKELETON / "default_template").read_bytes()
    # Where the skeleton's first line points editors.
    assert written[0].read_text().startswith("# yaml-language-server: $schema=./.deployer/targets.schema.json\n")
    assert written[2].read_bytes() == (REPO / "deployer" / "config" / "targets.schema.json").read_bytes()
    local = config.load(written[0]).resolve("local")
    assert local.transport == "local"
    assert local.deploy_root == str(tmp_path / ".deployer-local" / "www")
    assert local.package.source == str(tmp_path)
    assert local.template == str(written[1])
    assert local.apache.port == 8480
    assert local.health is not None and local.health.port == 8480


def test_the_directory_defaults_to_the_current_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert init.init()[0] == [Path("targets.yaml"), Path("templates/default_template"),
                               Path(".deployer/targets.schema.json")]
    assert (tmp_path / "templates" / "default_template").is_file()


def test_the_written_template_renders_for_the_local_target(tmp_path):
    init.init(tmp_path)
    target = config.load(tmp_path / "targets.yaml").resolve("local")
    ctx = context.make("local", "localhost", target, {}, config.DEFAULT_PIPELINE, workdir=str(tmp_path / "work"))
    out = template.render(Path(target.template).read_text(), ctx.vars, target.template)
    assert "<<" not in out and ">>" not in out
    lines = [line.strip() for line in out.splitlines()]
    assert "<VirtualHost *:8480>" in lines
    assert "ServerName localhost" in lines


def test_the_commented_examples_load_once_uncommented(tmp_path):
    # The examples are what a user will uncomment: they must stay valid.
    init.init(tmp_path)
    path = tmp_path / "targets.yaml"
    head, entries = path.read_text().split("\ntargets:\n")
    entries = re.sub(r"(?m)^  # (\"\*\"|[a-z][a-z0-9-]*):$", r"  \1:", entries)
    entries = re.sub(r"(?m)^  #   ", "    ", entries)
    path.write_text(f"{head}\ntargets:\n{entries}")
    targets = config.load(path)
    assert targets.names() == ["*", "alpha", "local"]
    assert targets.entries["alpha"]["hosts"] == ["web1.alpha.internal", "web2.alpha.internal"]


def test_refuses_when_targets_yaml_exists_and_writes_nothing(tmp_path):
    (tmp_path / "targets.yaml").write_text("mine\n")
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path / 'targets.yaml'} exists")):
        init.init(tmp_path)
    assert (tmp_path / "targets.yaml").read_text() == "mine\n"
    assert sorted(tmp_path.iterdir()) == [tmp_path / "targets.yaml"]


def test_refuses_when_the_template_exists_and_names_both(tmp_path):
    (tmp_path / "targets.yaml").write_text("mine\n")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "default_template").write_text("mine too\n")
    with pytest.raises(UsageError) as e:
        init.init(tmp_path)
    assert "targets.yaml exists" in str(e.value)
    assert f"{tmp_path / 'templates' / 'default_template'} exists" in str(e.value)
    assert (tmp_path / "templates" / "default_template").read_text() == "mine too\n"


def test_refuses_a_dangling_symlink_at_targets_yaml(tmp_path):
    (tmp_path / "targets.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    with pytest.raises(UsageError, match="targets.yaml exists"):
        init.init(tmp_path)
    assert not (tmp_path / "elsewhere.yaml").exists()
    assert not (tmp_path / "templates").exists()


@pytest.mark.parametrize("dangling", [False, True])
def test_refuses_templates_being_a_symlink(tmp_path, dangling):
    other = tmp_path / "other"
    if not dangling:
        other.mkdir()
    project = tmp_path / "project"
    project.mkdir()
    (project / "templates").symlink_to(other)
    with pytest.raises(UsageError, match="templates is a symbolic link"):
        init.init(project)
    assert os.listdir(project) == ["templates"]
    assert dangling or os.listdir(other) == []


def test_refuses_templates_being_a_file(tmp_path):
    (tmp_path / "templates").write_text("")
    with pytest.raises(UsageError, match="templates exists and is not a directory"):
        init.init(tmp_path)
    assert not (tmp_path / "targets.yaml").exists()


def test_uses_an_existing_templates_directory(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "other_template").write_text("kept\n")
    init.init(tmp_path)
    assert sorted(p.name for p in (tmp_path / "templates").iterdir()) == ["default_template", "other_template"]


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.write_text("")], ids=["missing", "a file"])
def test_refuses_a_directory_that_is_not_one(tmp_path, make):
    where = tmp_path / "project"
    make(where)
    with pytest.raises(UsageError, match=re.escape(f"{where}: cannot initialise")):
        init.init(where)


def test_a_failed_second_file_removes_the_first(tmp_path, monkeypatch):
    real = init._create

    def full_disk(name, dir_fd, content):
        if name == "default_template":
            raise OSError(28, "No space left on device")
        real(name, dir_fd, content)

    monkeypatch.setattr(init, "_create", full_disk)
    with pytest.raises(UsageError, match="default_template: cannot write: No space left on device"):
        init.init(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_skeleton_template_is_the_repos():
    # One vhost for a checkout and for `deployer init`: edit both, or neither.
    assert (SKELETON / "default_template").read_bytes() == (REPO / "templates" / "default_template").read_bytes()


def test_deployer_init_writes_then_refuses_with_exit_2(tmp_path, capsys):
    from deployer.cli.manage import main

    out = io.StringIO()
    assert main(["init", str(tmp_path)], stdout=out) == 0
    assert f"wrote {tmp_path / 'targets.yaml'}" in out.getvalue()
    before = (tmp_path / "targets.yaml").read_bytes()
    assert main(["init", str(tmp_path)], stdout=io.StringIO()) == 2
    assert "targets.yaml exists" in capsys.readouterr().err
    assert (tmp_path / "targets.yaml").read_bytes() == before


def test_the_template_serves_a_startproject_layouts_wsgi_file(tmp_path):
    (tmp_path / "manage.py").write_text("")
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "settings.py").write_text("")
    (tmp_path / "shop" / "wsgi.py").write_text("")
    init.init(tmp_path)
    text = (tmp_path / "templates" / "default_template").read_text()
    assert "WSGIScriptAlias / <<DEPLOY_PATH>>/shop/wsgi.py" in text
    assert "<Directory <<DEPLOY_PATH>>/shop>\n        <Files wsgi.py>" in text
    assert "django.wsgi" not in text


def _startproject(where: Path, settings_package: bool = False) -> Path:
    """`django-admin startproject shop`, with STATIC_ROOT set as Django's deployment checklist asks."""
    where.mkdir()
    subprocess.run([SYSTEM_PYTHON, "-m", "django", "startproject", "shop", str(where)], check=True, timeout=60)
    settings = where / "shop" / "settings.py"
    settings.write_text(settings.read_text() + '\nSTATIC_ROOT = BASE_DIR / "collected"\n')
    if settings_package:
        # As cookiecutter-django and most grown projects have it: shop/settings/{__init__,production}.py.
        (where / "shop" / "settings").mkdir()
        (where / "shop" / "settings" / "__init__.py").write_text("")
        text = settings.read_text().replace("Path(__file__).resolve().parent.parent",
                                            "Path(__file__).resolve().parent.parent.parent")
        (where / "shop" / "settings" / "production.py").write_text(text)
        settings.unlink()
        (where / "shop" / "wsgi.py").rename(where / "shop" / "serving.py")
        for name in ("manage.py", "shop/serving.py"):
            f = where / name
            f.write_text(f.read_text().replace("'shop.settings'", "'shop.settings.production'"))
        (where / "shop" / "settings" / "production.py").write_text(
            text.replace("'shop.wsgi.application'", "'shop.serving.application'"))
    return where


def _deploy(project: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "deployer", "local", "localhost", "--output", "plain"],
                          cwd=project, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()[-1]


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        page = conn.getresponse()
        return page.status, page.read()
    finally:
        conn.close()


def _destroy(project: Path) -> None:
    subprocess.run([sys.executable, "-m", "deployer.cli.manage", "destroy", "local", "--yes"], cwd=project,
                   capture_output=True, timeout=120, stdin=subprocess.DEVNULL)


@needs_local_site
def test_init_in_a_new_django_project_then_deploy_local_serves_it_with_its_static_files_and_database(tmp_path):
    """A new user's first hour: startproject, deployer init, deploy local; nothing edited."""
    project = _startproject(tmp_path / "shop")
    out = io.StringIO()
    assert manage.main(["init", str(project)], stdout=out) == 0
    assert "found a Django project: WSGI file shop/wsgi.py; Django in " in out.getvalue()
    port = config.load(project / "targets.yaml").resolve("local").apache.port
    try:
        assert f"http://127.0.0.1:{port}/" in _deploy(project)
        status, page = _get(port, "/")
        assert status == 200 and b"The install worked successfully" in page
        # collectstatic ran in the release, and the vhost serves where it put them.
        status, css = _get(port, "/static/admin/css/base.css")
        release = project / ".deployer-local" / "www" / "local"
        assert status == 200 and css == (release / "collected" / "admin" / "css" / "base.css").read_bytes()
        # The SQLite database is the shared one, migrated, and outlives the next release.
        db = project / ".deployer-local" / "www" / "local.shared" / "db.sqlite3"
        assert (project / ".deployer-local/www/local/db.sqlite3").resolve() == db
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM django_migrations").fetchone()[0] > 10
            conn.execute("CREATE TABLE kept (x)")
        _deploy(project)
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
        assert not (project / "db.sqlite3").exists()
        # check runs Django's own checks in the live release: its database answers, and
        # --deploy warns of DEBUG (startproject's), which check passes on as a note.
        out = io.StringIO()
        assert manage.main(["check", "local", "localhost", "--targets", str(project / "targets.yaml")],
                           stdout=out) == 0, out.getvalue()
        assert "django: System check identified" in out.getvalue()
        assert "(security.W018) You should not have DEBUG set to True in deployment." in out.getvalue()
        # A project that no longer imports fails the check, with Django's own words.
        (release / "shop" / "settings.py").write_text("import no_such_module\n")
        out = io.StringIO()
        assert manage.main(["check", "local", "localhost", "--targets", str(project / "targets.yaml")],
                           stdout=out) == 1
        assert "local django: manage.py check --deploy --database default, exit code 1:" in out.getvalue()
        assert "ModuleNotFoundError: No module named 'no_such_module'" in out.getvalue()
    finally:
        _destroy(project)
    # deployer made the database, so destroy removes it.
    assert not (project / ".deployer-local" / "www" / "local").exists()
    assert not (project / ".deployer-local" / "www" / "local.shared").exists()


@needs_local_site
@needs_app_wheels
def test_init_with_a_settings_package_and_requirements_serves_the_project_from_its_virtualenv(tmp_path):
    project = _startproject(tmp_path / "shop", settings_package=True)
    (project / "requirements.txt").write_text(f"{DJANGO}\n")
    out = io.StringIO()
    assert manage.main(["init", str(project)], stdout=out) == 0
    assert "WSGI file shop/serving.py" in out.getvalue()
    assert "packages from requirements.txt for Python 3." in out.getvalue()
    text = (project / "targets.yaml").read_text()
    # The one thing a machine with no index needs: where the wheels are.
    targets = project / "targets.yaml"
    targets.write_text(text.replace("    requirements: requirements.txt\n", "    requirements: requirements.txt\n"
                                    f"    no_index: true\n    find_links: [{APP_WHEELS}]\n"))
    vhost = (project / "templates" / "default_template").read_text()
    assert "python-home=<<VENV>>" in vhost and "WSGIScriptAlias / <<DEPLOY_PATH>>/shop/serving.py" in vhost
    port = config.load(targets).resolve("local").apache.port
    try:
        _deploy(project)
        # Django 4.2 from the virtualenv, not the machine's own.
        status, page = _get(port, "/")
        assert status == 200 and b"docs.djangoproject.com/en/4.2/" in page, page[:2000]
        assert _get(port, "/static/admin/css/base.css")[0] == 200
    finally:
        _destroy(project)


def test_what_the_project_says_is_used_only_in_its_plain_shape(tmp_path, monkeypatch):
    project = _startproject(tmp_path / "shop")
    settings = project / "shop" / "settings.py"
    # Printed junk, a static root outside the project, and one that would need quoting.
    settings.write_text("print('\\x1b[31mjunk')\n" + settings.read_text()
                        + "STATIC_ROOT = '/tmp/elsewhere'\nDATABASES['default']['NAME'] = BASE_DIR / 'my db'\n")
    found = survey.survey(project)
    assert found.static_root == "" and found.sqlite == "" and found.wsgi == "shop/wsgi.py"
    assert any("STATIC_ROOT is not set" in n for n in found.notes)
    # A settings module that never returns: init goes on without it.
    monkeypatch.setattr(survey, "PROBE_TIMEOUT", 2)
    settings.write_text("import time\ntime.sleep(60)\n")
    started = time.monotonic()
    found = survey.survey(project)
    assert time.monotonic() - started < 10
    assert found.python == "" and found.wsgi == "shop/wsgi.py"
    assert any("took over 2 s, and was stopped" in n for n in found.notes), found.notes
    # manage.py naming a settings module that is not one.
    (project / "manage.py").write_text("os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'x;rm -rf ~')\n")
    assert survey.survey(project).settings == ""


def test_the_projects_own_virtualenv_is_asked_first(tmp_path):
    project = _startproject(tmp_path / "shop")
    # Debian's Django, seen through the system site packages: a .venv that imports it.
    venv = project / ".venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    found = survey.survey(project)
    assert found.python == str(project / ".venv" / "bin" / "python"), found
    assert found.static_root == "collected" and found.sqlite == "db.sqlite3"


def test_a_name_yaml_would_read_as_something_else_stays_a_name(tmp_path):
    project = tmp_path / "shop"
    project.mkdir()
    text = init.targets_for((SKELETON / "targets.yaml").read_bytes(),
                            survey.Project(sqlite="null", requirements="true", hosts_version="3.11.2"))
    (project / "targets.yaml").write_bytes(text)
    (project / "true").write_text("")
    (project / "templates").mkdir()
    (project / "templates" / "default_template").write_text("")
    local = config.load(project / "targets.yaml").resolve("local")
    assert local.shared.create == ("null",) and local.python.requirements == str(project / "true")


def test_a_front_end_build_becomes_a_build_in_a_copy(tmp_path):
    project = _startproject(tmp_path / "shop")
    (project / "package.json").write_text('{"scripts": {"build": "vite build"}}')
    (project / "package-lock.json").write_text("{}")
    out = io.StringIO()
    assert manage.main(["init", str(project)], stdout=out) == 0
    assert "a build: npm ci, npm run build" in out.getvalue()
    build = config.load(project / "targets.yaml").resolve("local").build
    assert build.run == ("npm ci", "npm run build") and build.copy_source
    # Without a build script, no build.
    (project / "package.json").write_text('{"scripts": {"test": "x"}}')
    assert survey.survey(project).build == ()


def test_an_error_in_the_settings_is_a_note_and_printable(tmp_path):
    project = _startproject(tmp_path / "shop")
    (project / "shop" / "settings.py").write_text("raise RuntimeError('no \\x1b[2J SECRET_KEY')\n")
    found = survey.survey(project)
    assert found.python and found.static_root == ""
    assert any("could not read the settings (RuntimeError: no ?[2J SECRET_KEY)" in n for n in found.notes)


def test_deployer_schema_prints_the_packaged_schema():
    out = io.StringIO()
    assert manage.main(["schema"], stdout=out) == 0
    assert out.getvalue() == (REPO / "deployer" / "config" / "targets.schema.json").read_text()
