"""files: rendered into every release (settings, secrets) and vars exported
to migrate and hooks, on a real host over SSH: written with their mode,
never on a command line, masked in every output."""

import os
import stat

import pytest

from deployer.plan import vhost
from tests.conftest import tree_digest

SECRET = "s3cr3t-Value-9f2"


@pytest.fixture
def with_files(site, monkeypatch, tmp_path):
    monkeypatch.setenv("DJ_SECRET", SECRET)
    template = tmp_path / "env.template"
    template.write_text("SECRET_KEY=<<SECRET_KEY>>\nDEBUG=<<DEBUG>>\n")
    settings = tmp_path / "local_settings.template"
    settings.write_text("ALLOWED_HOSTS = ['<<HOSTNAME>>']\n")
    seen = site.root / "seen"
    site.edit(files=[{"template": str(template), "path": ".env"},
                     {"template": str(settings), "path": "conf/local_settings.py", "mode": "0600"}],
              vars={"SECRET_KEY": {"env": "DJ_SECRET", "secret": True, "export": True}, "DEBUG": "0"},
              migrate=f'echo "$SECRET_KEY $DEBUG" > {seen}')
    site.seen = seen
    return site


def test_files_are_rendered_into_the_release_and_secrets_reach_migrate_only_through_a_private_file(with_files):
    site = with_files
    code, out = site.deploy()
    assert code == 0, out
    live = site.live()
    mark = vhost.owner_mark("alpha")
    assert (live / ".env").read_text() == f"{mark}\nSECRET_KEY={SECRET}\nDEBUG=0\n"
    assert stat.S_IMODE(os.stat(live / ".env").st_mode) == 0o640
    assert (live / "conf" / "local_settings.py").read_text() == f"{mark}\nALLOWED_HOSTS = ['alpha.example.test']\n"
    assert stat.S_IMODE(os.stat(live / "conf" / "local_settings.py").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(live / ".deployer-env").st_mode) == 0o600
    # Exported: migrate has it; a var not exported (DEBUG) it has not.
    assert site.seen.read_text() == f"{SECRET} \n"
    assert SECRET not in out
    # A dry run shows the files, the secret masked.
    code, out = site.deploy("--dry-run")
    assert code == 0, out
    assert "| SECRET_KEY=****" in out and SECRET not in out
    assert "write .deployer-env in the release: SECRET_KEY for migrate and hooks" in out


def test_the_secret_is_on_no_command_line(with_files):
    from deployer import context, steps
    from deployer.config import load
    from deployer.plan import pipeline

    target = load(str(with_files.targets_file)).resolve("alpha")
    ctx = context.make("alpha", "alpha.example.test", target, {}, target.pipeline)
    plan = pipeline.build(ctx)
    lines = [s.command.line() for _, s in plan.steps() if isinstance(s, steps.Run)]
    lines += [s.command().line() for _, s in plan.steps() if isinstance(s, (steps.Install, steps.Link))]
    assert any("migrate" in line or "$SECRET_KEY" in line for line in lines)
    assert not [line for line in lines if SECRET in line]


def test_a_token_without_a_value_in_a_file_changes_nothing(with_files, tmp_path):
    site = with_files
    (tmp_path / "env.template").write_text("SECRET_KEY=<<SECRET_KEY>>\nNAME=<<DB_NAME>>\n")
    before = tree_digest(site.root)
    code, out = site.deploy()
    assert code == 2, out
    assert "DB_NAME" in out
    assert tree_digest(site.root) == before


def test_a_file_in_the_shared_folder_is_written_by_every_deploy_put_back_by_a_failed_one_and_destroyed(
        site, tmp_path):
    import io

    from deployer.cli.manage import main as manage

    template = tmp_path / "cron.template"
    template.write_text("RUN=<<LEVEL>>\n")
    shared = site.root / "www" / "alpha.shared"
    mark = vhost.owner_mark("alpha")
    site.edit(files=[{"template": str(template), "path": "conf/cron.env", "shared": True, "mode": "0600"}],
              vars={"LEVEL": "one"})
    code, out = site.deploy()
    assert code == 0, out
    written = shared / "conf" / "cron.env"
    assert written.read_text() == f"{mark}\nRUN=one\n" and stat.S_IMODE(os.stat(written).st_mode) == 0o600
    assert (site.live() / "conf" / "cron.env").resolve() == written
    # A failed deploy puts the previous one back.
    site.edit(files=[{"template": str(template), "path": "conf/cron.env", "shared": True, "mode": "0600"}],
              vars={"LEVEL": "two"}, migrate="exit 3")
    (site.source / "manage.py").write_text("print('again')\n")
    code, out = site.deploy()
    assert code == 1, out
    assert written.read_text() == f"{mark}\nRUN=one\n"
    site.edit(files=[{"template": str(template), "path": "conf/cron.env", "shared": True, "mode": "0600"}],
              vars={"LEVEL": "two"}, migrate=None)
    code, out = site.deploy()
    assert code == 0, out
    assert written.read_text() == f"{mark}\nRUN=two\n"
    # deployer wrote it: destroy removes it.
    code = manage(["destroy", "alpha", "--targets", str(site.targets_file), "--yes", "--output", "plain"],
                  stdout=io.StringIO())
    assert code == 0 and not shared.exists()


def test_destroy_removes_what_deployer_wrote_and_leaves_the_shared_files_placed_by_hand(site):
    import io

    from deployer.cli.manage import main as manage

    shared = site.root / "www" / "alpha.shared"
    (shared / "conf").mkdir(parents=True)
    (shared / "conf" / "local_settings.py").write_text("DB_PASSWORD = 'by hand'\n")
    site.edit(shared={"dirs": ["media"], "files": ["conf/local_settings.py"]})
    assert site.deploy()[0] == 0
    (shared / "media" / "upload.png").write_text("png")
    out = io.StringIO()
    code = manage(["destroy", "alpha", "--targets", str(site.targets_file), "--yes", "--output", "plain"],
                  stdout=out)
    assert code == 0, out.getvalue()
    assert not site.live().exists() and not (site.root / "www" / "alpha.releases").exists()
    assert sorted(str(p.relative_to(shared)) for p in shared.rglob("*")) == ["conf", "conf/local_settings.py"]
    assert out.getvalue().rstrip().endswith("the shared files placed by hand stay: conf/local_settings.py")


def test_writable_folders_stay_writable_for_the_web_servers_group(site):
    import grp

    gid = grp.getgrnam("www-data").gr_gid
    shared = site.root / "www" / "alpha.shared"
    (shared / "media" / "old").mkdir(parents=True)
    (shared / "media" / "old" / "before.txt").write_text("made by an earlier deploy, mode 644")
    os.chmod(shared / "media" / "old", 0o2755)
    site.edit(shared={"writable": ["media"], "group": "www-data"},
              migrate="mkdir -p media/thumbs && echo x > media/thumbs/made.txt")
    code, out = site.deploy()
    assert code == 0, out
    media = shared / "media"

    def mode(p):
        st = os.lstat(p)
        return st.st_gid, stat.S_IMODE(st.st_mode)

    assert mode(media) == (gid, 0o2775)
    # What migrate made there: the group's (setgid), group-writable (umask 002).
    assert mode(media / "thumbs") == (gid, 0o2775)
    assert mode(media / "thumbs" / "made.txt") == (gid, 0o664)
    # What an earlier deploy made: given to the group (chgrp -h), and counted, not chmod'ed.
    assert mode(media / "old" / "before.txt") == (gid, 0o644)
    assert "2 file(s) or folder(s) in" in out and "are not writable for group www-data; fix them once" in out
    assert (site.live() / "media").resolve() == media.resolve()


def test_a_file_to_create_is_made_once_empty_and_group_writable_and_a_link_there_is_refused(site):
    import grp

    gid = grp.getgrnam("www-data").gr_gid
    db = site.root / "www" / "alpha.shared" / "data" / "db.sqlite3"
    site.edit(shared={"create": ["data/db.sqlite3"], "group": "www-data"},
              migrate="test ! -s data/db.sqlite3 || exit 9; echo migrated >> data/db.sqlite3")
    code, out = site.deploy()
    assert code == 0, out
    st = os.lstat(db)
    assert (st.st_gid, stat.S_IMODE(st.st_mode), db.read_text()) == (gid, 0o660, "migrated\n")
    assert (site.live() / "data" / "db.sqlite3").resolve() == db.resolve()
    # The next release links the same file: made once, never emptied.
    site.edit(shared={"create": ["data/db.sqlite3"], "group": "www-data"}, migrate="cat data/db.sqlite3")
    (site.source / "manage.py").write_text("print('again')\n")
    code, out = site.deploy()
    assert code == 0, out
    assert db.read_text() == "migrated\n"
    # A link planted where the file would be made: refused, not followed.
    db.unlink()
    elsewhere = site.root / "elsewhere"
    db.symlink_to(elsewhere)
    (site.source / "manage.py").write_text("print('a third')\n")
    code, out = site.deploy()
    assert code == 1 and "is not a file (a link?); deployer will not link it" in out, out
    assert not elsewhere.exists()


def test_hooks_on_an_instances_first_deploy_and_on_its_destroy(site):
    import io

    from deployer.cli.manage import main as manage

    log = site.root / "db.log"
    site.edit(hooks={"first_deploy": {"run": f'echo "createdb app_$CONFIG_NAME" >> {log}', "on": "first"},
                     "destroy": {"run": f'echo "dropdb app_$CONFIG_NAME in $PWD" >> {log}', "on": "first"}},
              migrate=f"test -s {log}")  # the database is made before migrate
    code, out = site.deploy()
    assert code == 0, out
    assert log.read_text() == "createdb app_alpha\n"
    (site.source / "manage.py").write_text("print('again')\n")
    code, out = site.deploy()
    assert code == 0, out
    assert "not the first deploy of alpha on this host: not run" in out
    assert log.read_text() == "createdb app_alpha\n"
    out = io.StringIO()
    code = manage(["destroy", "alpha", "--targets", str(site.targets_file), "--yes", "--output", "plain"],
                  stdout=out)
    assert code == 0, out.getvalue()
    assert log.read_text().splitlines()[1] == f"dropdb app_alpha in {site.root / 'www' / 'alpha'}"
    assert not site.live().exists()


def test_a_secret_with_a_quote_is_masked_in_the_env_file_as_the_dry_run_shows_it(with_files, monkeypatch):
    quoted = "s3cr'et-Value-7"
    monkeypatch.setenv("DJ_SECRET", quoted)
    code, out = with_files.deploy("--dry-run")
    assert code == 0, out
    # .deployer-env holds it shell-quoted ('s3cr'"'"'et-...'): that form is masked too.
    assert "SECRET_KEY=****" in out and "s3cr" not in out and "Value-7" not in out
