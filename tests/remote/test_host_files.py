"""What deployer writes on a host, on the local transport: names nobody can plant
first, files it never writes through, and output it keeps bounded."""

import base64
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import tarfile

import pytest

from deployer.artifact import delta, packaging
from deployer.cli.deploy import main
from deployer.connectors.local import LocalTransport
from deployer.connectors.result import Tail
from deployer.remote import hostscripts
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


def listing(files: dict[str, bytes]) -> bytes:
    """A release's .deployer-sums for `files` (mode 644), as deployer.artifact.delta writes it."""
    return b"".join(b"%s 644 %s\n" % (hashlib.sha256(data).hexdigest().encode(), name.encode())
                    for name, data in sorted(files.items()))


RELAY_TAG = "deployer-relay-run-1"


def unpack(tmp_path, artifact: bytes, checksum: bytes | None = None, files=None, release="r1",
           base="-", drop=b"", add=None, want=None, how="sent", env="", copy=None, root="www", name="a",
           others=True):
    """Run the unpack script for instance `name`; by default a whole release of `files`, as for a host
    with none. `how` as the runner says it: `keep` (with a key on stdin after the lists) and
    `sent` read `artifact` on stdin, `fetched` finds it in the relay directory."""
    files = files or {}
    releases = tmp_path / root / f"{name}.releases"
    release = releases / release
    tmp, relay = releases / f".{release.name}.tmp", releases / ".relay"
    digest = checksum or hashlib.sha256(artifact).hexdigest().encode()
    add = listing(files) if add is None else add
    want = want or hashlib.sha256(listing(files)).hexdigest()
    head = b"%s %s %s %s\n" % (digest, base.encode(), want.encode(), how.encode())
    if how != "fetched":
        head += lists(drop, add)
    if how == "keep":
        copy = copy or hashlib.sha256(lists(drop, add) + artifact).hexdigest().encode()
        head += b"%s ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBJLRtV6OsJmtgr6BhS8XeENBQNr8FbNapEU/JhKLhSZ\n" % copy
    t = LocalTransport()
    command = hostscripts.unpack(str(releases), str(release), str(tmp), "run-1", str(tmp_path / "www" / name),
                                 str(relay), RELAY_TAG, 600, others)
    result = t.run(f"{env} HOME={shlex.quote(str(tmp_path / 'home'))} " + command.line(),
                   stdin=head + (b"" if how == "fetched" else artifact))
    return result, release, tmp, lambda: t.run(hostscripts.discard(str(release), str(tmp), "run-1",
                                                                   str(relay)).line())


def lists(drop: bytes, add: bytes) -> bytes:
    """The drop and add lists as the unpack reads them: each gzipped, after its size."""
    drop, add = gzip.compress(drop, mtime=0), gzip.compress(add, mtime=0)
    return b"%d\n%s%d\n%s" % (len(drop), drop, len(add), add)


def tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_the_artifact_is_streamed_into_a_release_and_checked(tmp_path):
    files = {"manage.py": b"x\n", "app/v.py": b"y\n"}
    result, release, tmp, discard = unpack(tmp_path, tarball(files), files=files)
    assert result.ok, result.stderr
    assert (release / ".deployer-sums").read_bytes() == listing(files)
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


def test_a_backslash_in_the_deploy_root_is_a_plain_character(tmp_path):
    # GNU tar reads escapes in a -C argument: "a\\tb" would become a tab.
    files = {"manage.py": b"x\n"}
    result, release, _, _ = unpack(tmp_path, tarball(files), files=files, root="a\\tb")
    assert result.ok, result.stderr
    assert (release / "manage.py").read_bytes() == b"x\n" and "\\" in str(release)


def test_a_truncated_artifact_fails_the_unpack(tmp_path):
    artifact = tarball({"manage.py": b"x\n" * 1000})
    result, release, _, discard = unpack(tmp_path, artifact[:len(artifact) // 2],
                                         checksum=hashlib.sha256(artifact).hexdigest().encode())
    assert not result.ok and "unpacking the artifact failed" in result.stderr
    assert not release.exists()
    assert discard().ok


def _live(tmp_path, files, name="a", release="r0"):
    """A release of `files` made by unpack, and instance `name`'s DEPLOY_PATH pointing at it."""
    result, made, _, _ = unpack(tmp_path, tarball(files), files=files, release=release, name=name)
    assert result.ok, result.stderr
    (tmp_path / "www" / name).symlink_to(made)
    return made


def _manifest(files):
    sums = tuple((p, hashlib.sha256(d).hexdigest(), 0o644) for p, d in sorted(files.items()))
    return packaging.Manifest(digest="d", files=tuple(files), size=0, withheld=(), included=(), sums=sums)


def _state(tmp_path, full=True, name="a", others=True):
    result = LocalTransport().run(hostscripts.live_state(str(tmp_path / "www" / name), full, others).line())
    assert result.ok, result.stderr
    return delta.parse(result.stdout)


def test_only_what_changed_is_sent_and_the_rest_is_linked_from_the_live_release(tmp_path):
    old = {"manage.py": b"x\n", "app/v.py": b"y\n", "app/gone.py": b"g\n", "a b/c d.txt": b"spaces\n"}
    live = _live(tmp_path, old)
    state = _state(tmp_path)
    assert state.base == hashlib.sha256(listing(old)).hexdigest() and state.listed == listing(old)
    assert not state.drift
    new = {**{k: v for k, v in old.items() if k != "app/gone.py"}, "app/v.py": b"changed\n", "app/new.py": b"n\n"}
    manifest = _manifest(new)
    plan = delta.against(manifest, state)
    assert plan.send == {"app/v.py", "app/new.py"}
    changed = {p: new[p] for p in plan.send}
    result, release, _, _ = unpack(tmp_path, tarball(changed), files=new, release="r1", base=plan.base,
                                   drop=plan.drop, add=plan.add, want=plan.want)
    assert result.ok, result.stderr
    assert "2 files linked from the live release, 2 sent" in result.stdout
    for path, data in new.items():
        assert (release / path).read_bytes() == data
    assert not (release / "app" / "gone.py").exists()
    assert (release / "manage.py").stat().st_ino == (live / "manage.py").stat().st_ino
    assert (release / ".deployer-sums").read_bytes() == listing(new)


def test_an_unchanged_release_is_all_links(tmp_path):
    files = {"manage.py": b"x\n", "app/v.py": b"y\n"}
    _live(tmp_path, files)
    plan = delta.against(_manifest(files), _state(tmp_path))
    assert plan.send == set() and plan.drop == plan.add == b""
    result, release, _, _ = unpack(tmp_path, tarball({}), files=files, release="r1", base=plan.base,
                                   drop=plan.drop, add=plan.add, want=plan.want)
    assert result.ok, result.stderr
    assert "2 files linked from the live release, 0 sent" in result.stdout
    assert (release / ".deployer-sums").read_bytes() == listing(files)


def test_a_file_changed_in_place_in_the_live_release_is_sent_not_linked(tmp_path):
    files = {"manage.py": b"x\n", "app/v.py": b"y\n"}
    live = _live(tmp_path, files)
    (live / "app" / "v.py").write_bytes(b"edited on the host\n")
    state = _state(tmp_path, full=False)
    assert state.drift == {"app/v.py"} and state.listed is None
    state = _state(tmp_path)
    manifest = _manifest(files)
    plan = delta.against(manifest, state)
    assert plan.send == {"app/v.py"}
    result, release, _, _ = unpack(tmp_path, tarball({"app/v.py": b"y\n"}), files=files, release="r1",
                                   base=plan.base, drop=plan.drop, add=plan.add, want=plan.want)
    assert result.ok, result.stderr
    assert (release / "app" / "v.py").read_bytes() == b"y\n"


def test_a_live_release_that_changed_since_it_was_read_fails_the_unpack(tmp_path):
    files = {"manage.py": b"x\n"}
    _live(tmp_path, files)
    result, release, _, discard = unpack(tmp_path, tarball({}), files=files, release="r1", base="0" * 64,
                                         add=b"")
    assert not result.ok and "changed or went during the deploy" in result.stderr
    assert not release.exists() and discard().ok


# Releases named as deployer names them: only those are another instance's to start from.
OLDER, NEWER = "20261201T000000Z-0a", "20261202T000000Z-0b"


def test_a_new_instance_starts_from_the_newest_live_release_of_another_and_links_what_it_shares(tmp_path):
    old = {"manage.py": b"x\n", "app/v.py": b"y\n", "app/w.py": b"w\n"}
    _live(tmp_path, {"manage.py": b"older\n"}, name="alpha", release=OLDER)
    staging = _live(tmp_path, old, name="staging", release=NEWER)
    state = _state(tmp_path)
    assert state.seed == "staging" and state.base == hashlib.sha256(listing(old)).hexdigest()
    new = {**old, "app/v.py": b"changed\n"}
    plan = delta.against(_manifest(new), state)
    assert plan.send == {"app/v.py"}
    result, release, _, _ = unpack(tmp_path, tarball({"app/v.py": new["app/v.py"]}), files=new, base=plan.base,
                                   drop=plan.drop, add=plan.add, want=plan.want)
    assert result.ok, result.stderr
    assert "2 files linked from the live release of staging, 1 sent" in result.stdout
    assert (release / "manage.py").stat().st_ino == (staging / "manage.py").stat().st_ino
    assert {p: (release / p).read_bytes() for p in new} == new
    # Its own live release, once it has one, comes first.
    (tmp_path / "www" / "a").symlink_to(release)
    assert _state(tmp_path).seed == ""


def _not_ours(path):
    os.lchown(path, 65534, 65534)


def _plant(www, made, how):
    """Make a link `b` that leads to the release `made` (c's) in a way `how` names."""
    if how == "other-instances-folder":
        (www / "b").symlink_to(made)
        return
    if how == "no-instance":
        (www / "b").symlink_to(made.rename(www / made.name))
        return
    name = "B" if how == "not-a-config-name" else "b"
    releases = www / f"{name}.releases"
    release = "mine" if how == "not-a-release-name" else made.name
    (www / name).symlink_to(releases / release)
    if how == "releases-is-a-link":
        releases.symlink_to(made.parent)
    elif how == "release-is-a-link":
        releases.mkdir()
        (releases / release).symlink_to(made)
    else:
        made.rename(made.parent / release)
        made.parent.rename(releases)
    if how.endswith("not-ours"):
        _not_ours({"release-not-ours": releases / release, "releases-not-ours": releases,
                   "list-not-ours": releases / release / ".deployer-sums"}[how])


@pytest.mark.parametrize("how", ["other-instances-folder", "no-instance", "release-is-a-link",
                                 "releases-is-a-link", "not-a-release-name", "not-a-config-name",
                                 "release-not-ours", "releases-not-ours", "list-not-ours"])
def test_another_instances_release_is_started_from_only_when_it_is_all_deployers_and_ours(tmp_path, how):
    if os.geteuid() != 0:
        pytest.skip("needs root: files of another user")
    made = _live(tmp_path, {"manage.py": b"x\n"}, name="c", release=NEWER)
    (tmp_path / "www" / "c").unlink()  # only the planted link may lead to the release
    _plant(tmp_path / "www", made, how)
    state = _state(tmp_path)
    assert state.base is None and state.seed == ""


def _spoil(release, how):
    """Make app/v.py of `release` a file a new release may not link, as `how` says."""
    v = release / "app" / "v.py"
    if how == "other-users-file":
        _not_ours(v)
    elif how == "writable-by-others":
        v.chmod(0o666)
    elif how == "another-mode":
        v.chmod(0o755)  # listed 644
    elif how == "gone":
        v.unlink()
    elif how == "folder-writable-by-others":
        v.parent.chmod(0o777)
    elif how == "behind-a-link":
        # What the web server could do to a folder it may write (a shared one): the same name,
        # mtime 0 and ours, but not the file the list says.
        elsewhere = release.parent / "elsewhere"
        shutil.copytree(v.parent, elsewhere)
        (elsewhere / "v.py").write_bytes(b"not the release's\n")
        os.utime(elsewhere / "v.py", (0, 0))
        shutil.rmtree(v.parent)
        v.parent.symlink_to(elsewhere)


SPOILED = ["other-users-file", "writable-by-others", "another-mode", "gone", "folder-writable-by-others",
           "behind-a-link"]


@pytest.mark.parametrize("how", SPOILED)
@pytest.mark.parametrize("whose", ["own", "another-instances"])
def test_a_file_the_new_release_may_not_link_is_sent(tmp_path, how, whose):
    if how == "other-users-file" and os.geteuid() != 0:
        pytest.skip("needs root: files of another user")
    files = {"manage.py": b"x\n", "app/v.py": b"y\n", "w.py": b"w\n"}
    name = "a" if whose == "own" else "staging"
    release = _live(tmp_path, files, name=name, release=NEWER)
    _spoil(release, how)
    state = _state(tmp_path)
    assert state.drift == {"app/v.py"} and state.seed == ("" if whose == "own" else "staging")
    plan = delta.against(_manifest(files), state)
    assert plan.send == {"app/v.py"}
    result, made, _, _ = unpack(tmp_path, tarball({"app/v.py": files["app/v.py"]}), files=files,
                                release=f"{NEWER}1", base=plan.base, drop=plan.drop, add=plan.add, want=plan.want)
    assert result.ok, result.stderr
    assert {p: (made / p).read_bytes() for p in files} == files
    assert not (made / "app").is_symlink() and (made / "app" / "v.py").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("how", SPOILED)
def test_a_file_spoiled_between_the_read_and_the_unpack_fails_the_unpack(tmp_path, how):
    if how == "other-users-file" and os.geteuid() != 0:
        pytest.skip("needs root: files of another user")
    files = {"manage.py": b"x\n", "app/v.py": b"y\n", "w.py": b"w\n"}
    release = _live(tmp_path, files, release=NEWER)
    plan = delta.against(_manifest(files), _state(tmp_path))
    assert plan.send == set()
    _spoil(release, how)
    result, made, _, discard = unpack(tmp_path, tarball({}), files=files, release=f"{NEWER}1", base=plan.base,
                                      drop=plan.drop, add=plan.add, want=plan.want)
    assert not result.ok and "changed since this deploy read it (1 of its files" in result.stderr
    assert not made.exists() and discard().ok


def test_an_instance_whose_live_release_has_no_list_starts_from_no_other(tmp_path):
    _live(tmp_path, {"manage.py": b"x\n"}, name="staging", release=NEWER)
    own = _live(tmp_path, {"manage.py": b"x\n"}, release=OLDER)
    (own / ".deployer-sums").unlink()
    state = _state(tmp_path)
    assert state.base is None and state.seed == ""


def test_a_seed_that_went_during_the_deploy_fails_the_unpack_and_says_why(tmp_path):
    files = {"manage.py": b"x\n", "app/v.py": b"y\n"}
    _live(tmp_path, files, name="staging", release=NEWER)
    plan = delta.against(_manifest(files), _state(tmp_path))
    (tmp_path / "www" / "staging").unlink()
    result, release, _, discard = unpack(tmp_path, tarball({}), files=files, base=plan.base, drop=plan.drop,
                                         add=plan.add, want=plan.want)
    assert not result.ok and "changed or went during the deploy" in result.stderr
    assert not release.exists() and discard().ok


def test_told_not_to_a_new_instance_starts_from_no_other_instances_release(tmp_path):
    files = {"manage.py": b"x\n"}
    _live(tmp_path, files, name="staging", release=NEWER)
    assert _state(tmp_path, others=False).base is None
    # Nor does the unpack look there for the release to start from.
    plan = delta.against(_manifest(files), _state(tmp_path))
    result, release, _, _ = unpack(tmp_path, tarball({}), files=files, base=plan.base, drop=plan.drop,
                                   add=plan.add, want=plan.want, others=False)
    assert not result.ok and "changed or went during the deploy" in result.stderr


def test_a_release_that_shares_less_than_a_tenth_of_the_files_is_not_started_from(tmp_path):
    other = {f"other/{i}.py": b"%d\n" % i for i in range(20)}
    _live(tmp_path, {**other, "manage.py": b"x\n"}, name="another-app", release=NEWER)
    state = _state(tmp_path)
    mine = {f"mine/{i}.py": b"mine %d\n" % i for i in range(20)}
    assert delta.against(_manifest({**mine, "manage.py": b"x\n"}), state).send is None  # 1 of 21 shared
    assert delta.against(_manifest({**mine, **dict(list(other.items())[:2]), "manage.py": b"x\n"}),
                         state).send == set(mine)  # 3 of 23


def test_a_release_that_would_differ_from_the_runners_fails_the_unpack(tmp_path):
    files = {"manage.py": b"x\n"}
    result, release, _, _ = unpack(tmp_path, tarball(files), files=files, want="1" * 64)
    assert not result.ok and "is not the runner's" in result.stderr
    assert not release.exists()


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


def test_a_hosts_list_that_unpacks_past_the_bound_is_not_believed(monkeypatch):
    listed = b"0" * 64 + b" 644 a.py\n"

    def answer(data):
        return f"base {hashlib.sha256(listed).hexdigest()}\nsums {base64.b64encode(data).decode()}\n"

    assert delta.parse(answer(gzip.compress(listed))).listed == listed
    monkeypatch.setattr(delta, "UNPACKED_LIMIT", len(listed) - 1)
    # A gzip bomb is the same thing, larger: the runner stops unpacking at the bound.
    assert delta.parse(answer(gzip.compress(listed))).listed is None
    assert delta.parse(answer(gzip.compress(listed)[:-4])).listed is None  # cut short


# -- the relay: the first host keeps a copy and offers it to a one-time key --

def authorized_keys(tmp_path, text: bytes) -> "os.PathLike":
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    keys = ssh / "authorized_keys"
    keys.write_bytes(text)
    keys.chmod(0o600)
    return keys


def test_the_first_host_keeps_the_artifact_and_offers_it_to_the_one_time_key_only(tmp_path):
    files = {"manage.py": b"x\n"}
    artifact = tarball(files)
    # The user's last key has no newline at the end: ours must not join it.
    keys = authorized_keys(tmp_path, b"ssh-ed25519 AAAAuser user@laptop")
    result, release, _, _ = unpack(tmp_path, artifact, files=files, how="keep")
    assert result.ok, result.stderr
    assert "is offered to the other hosts until" in result.stdout
    relay = release.parent / ".relay"
    # Kept as the others' unpack will read it: the lists, then the tarball.
    assert (relay / "copy").read_bytes() == lists(b"", listing(files)) + artifact
    assert oct(relay.stat().st_mode & 0o777) == "0o700"
    lines = keys.read_text().splitlines()
    assert lines[0] == "ssh-ed25519 AAAAuser user@laptop"
    options, key, tag = lines[1].rsplit(" ", 2)[0], lines[1].split(" ")[-2], lines[1].split(" ")[-1]
    assert tag == RELAY_TAG and key.startswith("AAAAC3")
    assert options.startswith('restrict,expiry-time="') and "ssh-ed25519" in options
    assert f'command="cat -- {relay}/copy"' in options
    assert oct(keys.stat().st_mode & 0o777) == "0o600"

    close = LocalTransport().run(f"HOME={shlex.quote(str(tmp_path / 'home'))} "
                                 + hostscripts.close(str(relay), RELAY_TAG).line())
    assert close.ok, close.stderr
    assert keys.read_text() == "ssh-ed25519 AAAAuser user@laptop\n"
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    assert not relay.exists()
    assert os.listdir(keys.parent) == ["authorized_keys"]


def test_no_offer_through_a_linked_authorized_keys_and_the_deploy_goes_on(tmp_path):
    files = {"manage.py": b"x\n"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("ssh-ed25519 AAAAother\n")
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "authorized_keys").symlink_to(elsewhere)
    result, release, _, _ = unpack(tmp_path, tarball(files), files=files, how="keep")
    assert result.ok, result.stderr
    assert "not offered to the other hosts" in result.stdout and (release / "manage.py").exists()
    assert elsewhere.read_text() == "ssh-ed25519 AAAAother\n"


@pytest.mark.parametrize(("setup", "env", "copy", "why"), [
    # sshd would run the forced command instead of the key's: the key would be a login.
    (None, "SSH_ORIGINAL_COMMAND=x", None, "runs under an sshd ForceCommand"),
    (lambda keys: os.link(keys, keys.with_name("other")), "", None, "is not a regular file with one name"),
    (None, "", b"0" * 64, "could not be kept whole"),
])
def test_no_offer_when_the_key_could_do_more_or_the_copy_is_not_whole(tmp_path, setup, env, copy, why):
    files = {"manage.py": b"x\n"}
    keys = authorized_keys(tmp_path, b"ssh-ed25519 AAAAuser user@laptop\n")
    if setup:
        setup(keys)
    result, release, _, _ = unpack(tmp_path, tarball(files), files=files, how="keep", env=env, copy=copy)
    assert result.ok, result.stderr
    assert "the artifact is not offered to the other hosts: " in result.stdout and why in result.stdout
    assert keys.read_bytes() == b"ssh-ed25519 AAAAuser user@laptop\n" and (release / "manage.py").exists()


def test_a_host_unpacks_the_copy_it_fetched_and_removes_it(tmp_path):
    files = {"manage.py": b"x\n", "app/v.py": b"y\n"}
    artifact = tarball(files)
    relay = tmp_path / "www" / "a.releases" / ".relay"
    relay.mkdir(parents=True, mode=0o700)
    (relay / "copy").write_bytes(lists(b"", listing(files)) + artifact)
    result, release, _, _ = unpack(tmp_path, artifact, files=files, how="fetched")
    assert result.ok, result.stderr
    assert (release / "app/v.py").read_bytes() == b"y\n" and not relay.exists()


def test_a_fetched_copy_that_is_not_the_artifact_fails_the_unpack(tmp_path):
    files = {"manage.py": b"x\n"}
    relay = tmp_path / "www" / "a.releases" / ".relay"
    relay.mkdir(parents=True)
    (relay / "copy").write_bytes(lists(b"", listing(files)) + tarball({"manage.py": b"evil\n"}))
    result, release, _, discard = unpack(tmp_path, tarball(files), files=files, how="fetched")
    assert not result.ok and "damaged" in result.stderr and not release.exists()
    assert discard().ok and not relay.exists()


def test_nothing_to_fetch_makes_nothing(tmp_path):
    relay = tmp_path / "relay"
    result = LocalTransport().run(hostscripts.fetch(str(relay), "198.18.1.10", 22, 60).line(), stdin=b"-\n")
    assert result.ok and result.stdout == "" and not relay.exists()


def test_stop_run_stops_the_sessions_a_gone_run_left_and_only_those(tmp_path):
    # A runner killed with SIGKILL leaves its remote commands running: the
    # next run stops every session that carries the gone run's id.
    import subprocess
    import time

    from tests.conftest import process_running

    def session(run_id: str) -> subprocess.Popen:
        line = hostscripts.session(run_id, (("sleep 30", False),)).line()
        proc = subprocess.Popen(["sh", "-c", line], stdin=subprocess.PIPE, start_new_session=True)
        proc.stdin.write(b"token\n")
        proc.stdin.flush()
        return proc

    gone, other = session("0123456789abcdef"), session("fedcba9876543210")
    try:
        time.sleep(0.5)
        r = LocalTransport().run(hostscripts.stop_run("0123456789abcdef", 2).line(), timeout=30)
        assert r.ok, r.stderr
        assert "stopped what run 0123456789abcdef still ran" in r.stdout
        gone.wait(10)
        assert process_running(other.pid)
        assert not LocalTransport().run(hostscripts.stop_run("0000000000000000", 2).line(), timeout=30).stdout
    finally:
        for p in (gone, other):
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()


def test_work_dirs_of_killed_runs_on_this_machine_are_removed_and_no_other(tmp_path):
    import subprocess

    from deployer.run.executor import remove_stale_workdirs

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"deployer-demo-20260101T000000Z-abc-{dead.pid}"
    (stale / "x").mkdir(parents=True)
    mine = tmp_path / f"deployer-demo-20260101T000000Z-abc-{os.getpid()}"
    mine.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = tmp_path / f"deployer-demo-x-{dead.pid + 1}"
    planted.symlink_to(elsewhere)
    unrelated = tmp_path / "deployer-lab"
    unrelated.mkdir()
    remove_stale_workdirs(str(tmp_path))
    assert not stale.exists()
    assert mine.is_dir() and elsewhere.is_dir() and planted.is_symlink() and unrelated.is_dir()


def test_of_runs_taking_over_a_gone_runs_lock_at_once_only_one_wins(tmp_path):
    import subprocess

    state = tmp_path / "demo.deployer"
    (state / "lock").mkdir(parents=True)
    (state / "lock" / "owner").write_text("deadbeefdeadbeef\ngone\n")
    procs = [subprocess.Popen(["sh", "-c", hostscripts.lock(str(state), f"run{i:012d}", f"taker {i}", 0, False,
                                                            "hint", takes_over="deadbeefdeadbeef").line()],
                              stderr=subprocess.PIPE) for i in range(6)]
    won = [i for i, p in enumerate(procs) if p.wait(30) == 0]
    assert len(won) == 1
    assert (state / "lock" / "owner").read_text() == f"run{won[0]:012d}\ntaker {won[0]}\n"


@pytest.mark.parametrize("takes_over", ["", "deadbeefdeadbeef"])
def test_a_stop_signal_while_the_lock_is_taken_never_leaves_a_lock_nobody_can_name(tmp_path, takes_over):
    """The run interrupted (its session's process group sent SIGTERM) in the
    moment the lock's mkdir runs: once, the lock stayed with no owner, and
    the instance was locked for good. A mkdir slowed down here holds that
    moment open."""
    import signal
    import subprocess
    import time

    state = tmp_path / "demo.deployer"
    lock = state / "lock"
    if takes_over:
        lock.mkdir(parents=True)
        (lock / "owner").write_text(f"{takes_over}\ngone\n")
    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "mkdir").write_text('#!/bin/sh\n/bin/mkdir "$@" || exit\n'
                                'case "$*" in *lock|*taken-*) touch "$0.made"; sleep 2 ;; esac\n')
    (slow / "mkdir").chmod(0o755)
    command = hostscripts.lock(str(state), "0123456789abcdef", "deploy of release R by me", 5, False, "hint",
                               takes_over=takes_over).line()
    proc = subprocess.Popen(["sh", "-c", command], env={**os.environ, "PATH": f"{slow}:{os.environ['PATH']}"},
                            start_new_session=True, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (slow / "mkdir.made").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (slow / "mkdir.made").exists()
        os.killpg(proc.pid, signal.SIGTERM)  # as stop_group sends it, which then waits for the whole group
        proc.wait(20)
        while time.monotonic() < deadline + 10:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Taken and named, or not taken: never a lock without its owner.
    assert not lock.exists() or (lock / "owner").read_text().startswith("0123456789abcdef\n"), \
        sorted(p.name for p in lock.iterdir())


@pytest.mark.parametrize("tag", ["deployer-relay-\\|.*", "deployer-relay-.*", ".*", "AAAAuser"])
def test_closing_the_relay_removes_only_the_line_whose_last_field_is_the_tag(tmp_path, tag):
    # A tag is matched as a string, never as a pattern: one that a host made
    # up (from a forged run id) can remove no key of the user's.
    ours = 'restrict ssh-ed25519 AAAAone deployer-relay-0123456789abcdef\n'
    keys = authorized_keys(tmp_path, b"ssh-ed25519 AAAAuser user@laptop\n" + ours.encode())
    close = LocalTransport().run(f"HOME={shlex.quote(str(tmp_path / 'home'))} "
                                 + hostscripts.close(str(tmp_path / "relay"), tag).line())
    assert close.ok, close.stderr
    assert keys.read_text() == "ssh-ed25519 AAAAuser user@laptop\n" + ours
    close = LocalTransport().run(f"HOME={shlex.quote(str(tmp_path / 'home'))} "
                                 + hostscripts.close(str(tmp_path / "relay"),
                                                     "deployer-relay-0123456789abcdef").line())
    assert close.ok, close.stderr
    assert keys.read_text() == "ssh-ed25519 AAAAuser user@laptop\n"
