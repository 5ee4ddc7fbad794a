"""What deployer writes on a host, on the local transport: names nobody can plant
first, files it never writes through, and output it keeps bounded."""

import hashlib
import io
import json
import os
import shutil
import tarfile

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


def relink(path, target, work):
    return LocalTransport().run(hostscripts.relink(str(path), target, str(work)).line())


def restore_link(path, work):
    return LocalTransport().run(hostscripts.restore_link(str(path), str(work)).line())


def test_relink_then_restore_puts_the_previous_target_back(tmp_path):
    path, work = tmp_path / "sub" / "live", tmp_path / "sub" / ".live.work"
    assert relink(path, "first", work).ok
    assert restore_link(path, work).ok
    assert not path.is_symlink() and sorted(os.listdir(path.parent)) == []  # there was no link
    assert relink(path, "first", work).ok
    shutil.rmtree(work)  # the change is kept: tidied, as a deploy that succeeds does
    assert relink(path, "second", work).ok and os.readlink(path) == "second"
    assert restore_link(path, work).ok
    assert os.readlink(path) == "first" and sorted(os.listdir(path.parent)) == ["live"]


def test_relink_refuses_a_real_file_or_directory_at_the_path(tmp_path):
    path = tmp_path / "live"
    path.mkdir()
    result = relink(path, "new", tmp_path / ".work")
    assert not result.ok and "exists and is not a symlink" in result.stderr
    assert path.is_dir() and not path.is_symlink() and not (tmp_path / ".work").exists()
    assert restore_link(path, tmp_path / ".work").ok and path.is_dir()


def install(path, work, mode=0o600, owner="", content=b"# mark\nServerName x\n"):
    line = hostscripts.install(str(path), "# mark", mode, owner, str(work), len(content)).line()
    return LocalTransport().run(line, stdin=content)


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


def unpack(tmp_path, artifact: bytes, checksum: bytes | None = None):
    releases, release = tmp_path / "www" / "a.releases", tmp_path / "www" / "a.releases" / "r1"
    tmp = releases / ".r1.tmp"
    digest = checksum or hashlib.sha256(artifact).hexdigest().encode()
    t = LocalTransport()
    result = t.run(hostscripts.unpack(str(releases), str(release), str(tmp), "run-1", str(tmp_path / "www" / "a"))
                   .line(), stdin=digest + b"\n" + artifact)
    return result, release, tmp, lambda: t.run(hostscripts.discard(str(release), str(tmp), "run-1").line())


def tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_the_artifact_is_streamed_into_a_release_and_checked(tmp_path):
    result, release, tmp, discard = unpack(tmp_path, tarball({"manage.py": b"x\n", "app/v.py": b"y\n"}))
    assert result.ok, result.stderr
    assert (release / "app" / "v.py").read_bytes() == b"y\n"
    assert (release / ".deployer-release-id").read_text() == "run-1\n"
    assert not tmp.exists()
    assert discard().ok and not release.exists()


def test_a_damaged_artifact_leaves_no_release(tmp_path):
    artifact = tarball({"manage.py": b"x\n"})
    result, release, tmp, discard = unpack(tmp_path, artifact, checksum=b"0" * 64)
    assert not result.ok and "the artifact arrived damaged" in result.stderr
    assert not release.exists()
    assert discard().ok and not tmp.exists()


def test_a_truncated_artifact_fails_the_unpack(tmp_path):
    artifact = tarball({"manage.py": b"x\n" * 1000})
    result, release, _, discard = unpack(tmp_path, artifact[:len(artifact) // 2],
                                         checksum=hashlib.sha256(artifact).hexdigest().encode())
    assert not result.ok and "unpacking the artifact failed" in result.stderr
    assert not release.exists()
    assert discard().ok


def test_another_runs_release_is_never_touched(tmp_path):
    release = tmp_path / "www" / "a.releases" / "r1"
    release.mkdir(parents=True)
    (release / ".deployer-release-id").write_text("run-0\n")
    result, _, _, discard = unpack(tmp_path, tarball({"manage.py": b"x\n"}))
    assert not result.ok and "already exists" in result.stderr
    assert discard().ok
    assert (release / ".deployer-release-id").read_text() == "run-0\n"


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
