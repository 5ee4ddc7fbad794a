"""The release tarball: what goes in, its content hash, and the archive itself."""

import os
import shutil
import tarfile
from pathlib import Path

import pytest

from deployer import packaging
from deployer.errors import UsageError

EXCLUDE = (".git", "__pycache__", "*.pyc", "node_modules", "media/uploads")

FILES = {
    "manage.py": "import sys\n",
    "app/__init__.py": "",
    "app/views.py": "def index(): ...\n",
    "app/views.pyc": "compiled",
    "app/__pycache__/views.cpython-311.pyc": "compiled",
    "app/node_modules/left-pad/index.js": "nested, still pruned",
    ".git/HEAD": "ref: refs/heads/main\n",
    "node_modules/x/index.js": "x",
    "media/logo.png": "png",
    "media/uploads/a.jpg": "user upload",
    # A slash pattern matches the path from the root, not a name anywhere.
    "docs/media/uploads/keep.txt": "kept",
    "media/uploads.txt": "kept: the pattern is a path, not a prefix",
}

PACKAGED = [
    "app/__init__.py",
    "app/views.py",
    "current.py",
    "dangling",
    "docs/media/uploads/keep.txt",
    "manage.py",
    "media/logo.png",
    "media/uploads.txt",
    "static",
]


@pytest.fixture
def src(tmp_path) -> Path:
    root = tmp_path / "src"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "manage.py").chmod(0o755)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of the app")
    (root / "static").symlink_to("../outside")  # a directory link: packaged, not followed
    (root / "current.py").symlink_to("app/views.py")
    (root / "dangling").symlink_to("nowhere")
    return root


def test_files_applies_name_and_path_patterns(src):
    assert packaging.files(str(src), EXCLUDE) == PACKAGED


def test_files_without_excludes_lists_everything_but_directories(src):
    listed = packaging.files(str(src), ())
    assert listed == sorted([*FILES, "current.py", "dangling", "static"])


@pytest.mark.parametrize(
    ("exclude", "gone"),
    [
        (("static",), ["static"]),                  # a directory link, by name
        (("/docs",), ["docs/media/uploads/keep.txt"]),  # a leading slash anchors at the root
        (("app/*.py",), ["app/__init__.py", "app/views.py"]),
        # `*` stops at a slash, and a trailing slash matches a name anywhere.
        (("*/uploads/*",), []),
        (("docs/*.txt",), []),
        (("docs/*/*/*.txt",), ["docs/media/uploads/keep.txt"]),
        (("uploads/",), ["docs/media/uploads/keep.txt"]),
        (("*.py",), ["app/__init__.py", "app/views.py", "current.py", "manage.py"]),
        # A name matches at any depth.
        (("media",), ["media/logo.png", "media/uploads.txt", "docs/media/uploads/keep.txt"]),
    ],
)
def test_more_excludes(src, exclude, gone):
    assert packaging.files(str(src), EXCLUDE + exclude) == [p for p in PACKAGED if p not in gone]


def test_same_tree_elsewhere_has_the_same_hash(src, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(src, copy, symlinks=True)
    assert packaging.tree_hash(str(copy), EXCLUDE) == packaging.tree_hash(str(src), EXCLUDE)


def _touch_mtime(src: Path) -> None:
    os.utime(src / "app/views.py", (1_000_000_000, 1_000_000_000))


def _change_byte(src: Path) -> None:
    (src / "app/views.py").write_text("def index(): ..\n")


def _change_mode(src: Path) -> None:
    (src / "app/views.py").chmod(0o755)


def _rename(src: Path) -> None:
    (src / "app/views.py").rename(src / "app/view.py")


def _relink(src: Path) -> None:
    (src / "current.py").unlink()
    (src / "current.py").symlink_to("app/__init__.py")


def _add_empty_file(src: Path) -> None:
    (src / "app/empty.py").write_text("")


def _file_becomes_link(src: Path) -> None:
    (src / "media/logo.png").unlink()
    (src / "media/logo.png").symlink_to("png")


def _change_excluded(src: Path) -> None:
    (src / "app/views.pyc").write_text("recompiled")
    (src / "media/uploads/b.jpg").write_text("new upload")


def _add_empty_dir(src: Path) -> None:
    (src / "app/migrations").mkdir()


@pytest.mark.parametrize(
    ("change", "changes_hash"),
    [
        (_change_byte, True),
        (_change_mode, True),
        (_rename, True),
        (_relink, True),
        (_add_empty_file, True),
        (_file_becomes_link, True),
        (_touch_mtime, False),
        (_change_excluded, False),
        (_add_empty_dir, False),  # not packaged, so not hashed
    ],
)
def test_tree_hash(src, change, changes_hash):
    before = packaging.tree_hash(str(src), EXCLUDE)
    change(src)
    assert (packaging.tree_hash(str(src), EXCLUDE) != before) is changes_hash


def test_build_writes_exactly_the_files_owned_by_root(src, tmp_path):
    dest = tmp_path / "work" / "nested" / "release.tar.gz"
    assert packaging.build(str(src), EXCLUDE, str(dest)) == len(PACKAGED)
    with tarfile.open(dest) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == packaging.files(str(src), EXCLUDE)
        assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
        by_name = {m.name: m for m in members}
        assert by_name["manage.py"].mode == 0o755
        assert tar.extractfile("app/views.py").read() == b"def index(): ...\n"
        links = {m.name: m.linkname for m in members if m.issym()}
        assert links == {"current.py": "app/views.py", "dangling": "nowhere", "static": "../outside"}


def test_unpacked_tarball_hashes_like_its_source(src, tmp_path):
    dest = tmp_path / "release.tar.gz"
    packaging.build(str(src), EXCLUDE, str(dest))
    out = tmp_path / "unpacked"
    with tarfile.open(dest) as tar:
        tar.extractall(out, filter="tar")
    assert packaging.tree_hash(str(out), ()) == packaging.tree_hash(str(src), EXCLUDE)


def test_build_into_the_current_directory(src, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert packaging.build(str(src), EXCLUDE, "release.tar.gz") == len(PACKAGED)
    assert tarfile.is_tarfile(tmp_path / "release.tar.gz")


def test_fifo_in_source_is_a_usage_error_not_a_hang(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with pytest.raises(UsageError, match="pipe: not a regular file or symlink"):
        packaging.tree_hash(str(src), ())
    assert packaging.files(str(src), ("pipe",)) == []

