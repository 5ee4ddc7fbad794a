"""What deployer writes on a host, on the local transport: names nobody can plant
first, files it never writes through, and output it keeps bounded."""

import io
import json
import os

import pytest

from deployer import hostscripts
from deployer.cli import main
from deployer.transport import LocalTransport, Tail
from tests.conftest import armed_local_target


def deploy(targets, name="demo") -> tuple[int, list[dict]]:
    out = io.StringIO()
    code = main([name, f"{name}.example.test", "--targets", str(targets), "--output", "json"], stdout=out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_directory_planted_at_the_old_temp_name_cannot_become_the_live_path(tmp_path):
    # deployer used to make `www/demo.deployer-tmp` with `ln -sfn`, which put
    # the link inside a directory planted there, then moved the directory to
    # DEPLOY_PATH: a real directory, and the deploy said "done".
    targets = armed_local_target(tmp_path)
    planted = tmp_path / "www" / "demo.deployer-tmp"
    planted.mkdir(parents=True)
    code, events = deploy(targets)
    assert code == 0, events[-1]
    live = tmp_path / "www" / "demo"
    assert live.is_symlink() and os.readlink(live).startswith(str(tmp_path / "www" / "demo.releases"))
    assert list(planted.iterdir()) == []


def test_relink_fails_rather_than_use_a_planted_temp_name(tmp_path):
    path, tmp = tmp_path / "live", tmp_path / "live.tmp"
    path.symlink_to("old")
    tmp.mkdir()
    result = LocalTransport().run(hostscripts.relink(str(path), "new", str(tmp)).line())
    assert not result.ok
    assert os.readlink(path) == "old" and list(tmp.iterdir()) == []


def test_relink_replaces_a_link_atomically_and_leaves_no_temp(tmp_path):
    path, tmp = tmp_path / "sub" / "live", tmp_path / "sub" / ".live.tmp"
    t = LocalTransport()
    assert t.run(hostscripts.relink(str(path), "first", str(tmp)).line()).ok
    assert t.run(hostscripts.relink(str(path), "second", str(tmp)).line()).ok
    assert os.readlink(path) == "second" and not tmp.exists() and not tmp.is_symlink()


def install(path, work, mode=0o600, owner="", content=b"# mark\nServerName x\n"):
    return LocalTransport().run(hostscripts.install(str(path), "# mark", mode, owner, str(work)).line(),
                                stdin=content)


def restore(path, work):
    return LocalTransport().run(hostscripts.restore(str(path), str(work)).line())


def test_install_then_restore_leaves_no_file_where_there_was_none(tmp_path):
    path, work = tmp_path / "site.conf", tmp_path / ".site.conf.work"
    assert install(path, work).ok
    assert path.read_text() == "# mark\nServerName x\n" and path.stat().st_mode & 0o777 == 0o600
    assert restore(path, work).ok
    assert sorted(os.listdir(tmp_path)) == []


def test_install_then_restore_puts_back_the_same_file(tmp_path):
    path, work = tmp_path / "site.conf", tmp_path / ".site.conf.work"
    path.write_text("# mark\nold\n")
    path.chmod(0o640)
    inode = path.stat().st_ino
    assert install(path, work).ok and path.read_text().endswith("ServerName x\n")
    assert restore(path, work).ok
    assert (path.stat().st_ino, path.stat().st_mode & 0o777, path.read_text()) == (inode, 0o640, "# mark\nold\n")
    assert sorted(os.listdir(tmp_path)) == ["site.conf"]


def test_restore_is_harmless_when_the_install_never_ran(tmp_path):
    path = tmp_path / "site.conf"
    path.write_text("# somebody else's\n")
    assert restore(path, tmp_path / "work").ok and path.read_text() == "# somebody else's\n"


def test_an_install_that_failed_half_way_is_undone_whole(tmp_path):
    # chown fails after the previous file was linked and the new one written:
    # the restore must keep the previous file (not rename it onto itself) and
    # leave nothing of the new one, whose content may be a secret.
    path, work = tmp_path / "site.conf", tmp_path / ".site.conf.work"
    path.write_text("# mark\nold\n")
    result = install(path, work, owner="no-such-user-here", content=b"# mark\nSetEnv DB s3cret\n")
    assert not result.ok and "no-such-user-here" in result.stderr
    assert restore(path, work).ok
    assert path.read_text() == "# mark\nold\n"
    assert sorted(os.listdir(tmp_path)) == ["site.conf"]


def test_copy_to_the_host_never_writes_through_a_planted_link(tmp_path):
    src, victim, dest = tmp_path / "src", tmp_path / "victim", tmp_path / "dest"
    src.write_text("artifact")
    victim.write_text("precious")
    dest.symlink_to(victim)
    with pytest.raises(FileExistsError):
        LocalTransport().put(str(src), str(dest))
    assert victim.read_text() == "precious"


# -- output ---------------------------------------------------------------------------------

def test_tail_keeps_the_end_and_counts_the_rest():
    tail = Tail(limit=10)
    for chunk in (b"0123456789", b"abc", b"", b"defghijklmnop"):
        tail.add(chunk)
    assert tail.text() == "[16 earlier bytes of output not kept]\nghijklmnop"


def test_a_local_command_that_prints_megabytes_keeps_only_the_tail(tmp_path):
    result = LocalTransport().run("head -c 5000000 /dev/zero | tr '\\0' y; echo; echo last >&2")
    kept = 256 * 1024
    assert result.ok
    assert result.stdout == f"[{5000001 - kept} earlier bytes of output not kept]\n" + "y" * (kept - 1) + "\n"
    assert result.stderr == "last\n"


def test_stdin_and_a_chatty_command_do_not_wait_on_each_other():
    # 4 MB each way: more than any pipe holds, so one side blocking would hang.
    data = b"z" * 4_000_000
    result = LocalTransport().run("cat; cat >&2 </dev/null", stdin=data)
    assert result.ok and len(result.stdout) < 300 * 1024 and result.stdout.endswith("zzz")
