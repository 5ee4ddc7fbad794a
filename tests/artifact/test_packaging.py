"""The release tarball: what goes in, what is withheld and why, its content hash, and the archive itself."""

import errno
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from deployer.artifact import packaging
from deployer.artifact.packaging import Rules
from deployer.cli.deploy import main
from deployer.errors import StepFailed, UsageError
from tests.conftest import free_port

# Split, so that this file is no private key to `scan` itself.
BEGIN = "-" * 5 + "BEGIN "

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
    "notes/uploads": "a file: `uploads/` names directories only",
    "assets/static/site.css": "body {}\n",
    "assets/static/js/app.js.map": "{}",
}

PACKAGED = [
    "app/__init__.py",
    "app/views.py",
    "assets/static/js/app.js.map",
    "assets/static/site.css",
    "current.py",
    "dangling",
    "docs/media/uploads/keep.txt",
    "manage.py",
    "media/logo.png",
    "media/uploads.txt",
    "notes/uploads",
    "static",
]


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (root / rel).write_bytes(content)
        else:
            (root / rel).write_text(content)


@pytest.fixture
def src(tmp_path) -> Path:
    root = tmp_path / "src"
    write(root, FILES)
    (root / "manage.py").chmod(0o755)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of the app")
    (root / "static").symlink_to("assets/static")  # a directory link inside the tree: packaged, not followed
    (root / "current.py").symlink_to("app/views.py")
    (root / "dangling").symlink_to("nowhere")
    return root


def scan(src: Path, exclude: tuple[str, ...] = EXCLUDE, **rules) -> packaging.Manifest:
    return packaging.scan(str(src), Rules(exclude=exclude, **rules))


def members(dest: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(dest) as tar:
        return {m.name: m for m in tar.getmembers()}


def contents(dest: Path) -> dict[str, bytes]:
    with tarfile.open(dest) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def test_scan_applies_name_and_path_patterns(src):
    manifest = scan(src)
    assert list(manifest.files) == PACKAGED
    # An excluded path is just excluded, not reported as withheld.
    assert manifest.withheld == manifest.included == ()


def test_without_excludes_everything_but_the_safe_defaults_is_packaged(src):
    manifest = scan(src, ())
    assert list(manifest.files) == sorted([*FILES.keys() - {".git/HEAD"}, "current.py", "dangling", "static"])
    assert manifest.withheld == ((".git", "version control directory"),)


@pytest.mark.parametrize(
    ("exclude", "gone"),
    [
        (("/static",), ["static"]),                 # a directory link, by name
        (("static",), ["static", "assets/static/js/app.js.map", "assets/static/site.css"]),
        (("/docs",), ["docs/media/uploads/keep.txt"]),  # a leading slash anchors at the root
        (("app/*.py",), ["app/__init__.py", "app/views.py"]),
        # `*` stops at a slash.
        (("*/uploads/*",), []),
        (("docs/*.txt",), []),
        (("docs/*/*/*.txt",), ["docs/media/uploads/keep.txt"]),
        # A trailing slash matches a directory (at any depth), never a file or a link.
        (("uploads/",), ["docs/media/uploads/keep.txt"]),
        (("static/",), ["assets/static/js/app.js.map", "assets/static/site.css"]),
        (("assets/static/",), ["assets/static/js/app.js.map", "assets/static/site.css"]),
        (("*.py",), ["app/__init__.py", "app/views.py", "current.py", "manage.py"]),
        # A name matches at any depth.
        (("media",), ["media/logo.png", "media/uploads.txt", "docs/media/uploads/keep.txt"]),
        # `**` crosses directories, as in .gitignore.
        (("**/*.map",), ["assets/static/js/app.js.map"]),
        (("assets/**/site.css",), ["assets/static/site.css"]),
        # `!` takes a file back.
        (("*.py", "!manage.py"), ["app/__init__.py", "app/views.py", "current.py"]),
        # ... but not out of an excluded directory, which is not walked.
        (("uploads/", "!docs/media/uploads/keep.txt"), ["docs/media/uploads/keep.txt"]),
    ],
)
def test_more_excludes(src, exclude, gone):
    assert list(scan(src, EXCLUDE + exclude).files) == [p for p in PACKAGED if p not in gone]


def test_an_excluded_directory_is_not_walked(src):
    os.mkfifo(src / "node_modules/pipe")
    assert list(scan(src).files) == PACKAGED


CREDENTIALS = {
    ".git/HEAD": "ref: refs/heads/main\n",
    ".git/objects/ab/cdef": "blob",
    ".hg/store/data": "x",
    ".svn/entries": "x",
    ".bzr/branch-format": "x",
    "_darcs/format": "x",
    "lib/CVS/Root": "x",
    "vendor/sub/.git": "gitdir: ../../.git/modules/sub\n",  # a submodule's .git is a file
    "vendor/sub/lib.py": "",
    "keys/id_rsa": "k",
    "keys/id_dsa": "k",
    "keys/id_ecdsa": "k",
    "keys/id_ed25519": "k",
    "keys/id_ecdsa_sk": "k",
    "keys/id_ed25519_sk": "k",
    "keys/id_ed25519.pub": "ssh-ed25519 AAAAC3Nza deploy@ci\n",
    "keys/id_rsa.pub": "ssh-rsa AAAAB3Nza deploy@ci\n",
    "certs/server.pem": "k",
    "certs/server.KEY": "k",
    "certs/client.p12": "k",
    "certs/client.pfx": "k",
    "certs/trust.jks": "k",
    "certs/app.keystore": "k",
    "vpn/demo.ovpn": "remote vpn.example.com\n",
    "home/.ssh/config": "Host *\n",
    "home/.gnupg/pubring.kbx": "k",
    ".netrc": "machine x password y\n",
    "config/.pgpass": "db:5432:*:app:secret\n",
    ".env": "SECRET_KEY=x\n",
    ".env.production": "SECRET_KEY=y\n",
    "config/.env.local": "SECRET_KEY=z\n",
    "config/k.txt": "notes\n" + BEGIN + "OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n",
    "config/rsa": BEGIN + "RSA PRIVATE KEY-----\n",
    "config/enc.bin": b"\x00" * 100 + (BEGIN + "ENCRYPTED PRIVATE KEY-----\n").encode(),
    # Past the first 16 KiB read by the tarball writer, and past 64 KiB (a certificate chain, then its key).
    "config/late.txt": "x" * 60_000 + BEGIN + "PRIVATE KEY-----\n",
    "certs/bundle.crt": (BEGIN + "CERTIFICATE-----\n") * 5000 + BEGIN + "RSA PRIVATE KEY-----\n",
    "vpn/client.conf": "#\n" + BEGIN + "OpenVPN Static key V1-----\n",
    "keys/deploy.key.txt": "PuTTY-User-Key-File-3: ssh-ed25519\n",
    # What the review found still shipped.
    ".ENV": "A=1\n",
    "prod.env": "A=1\n",
    ".envrc": "export A=1\n",
    ".git-credentials": "https://u:p@example.com\n",
    ".aws/credentials": "[default]\n",
    ".docker/config.json": "{}\n",
    ".kube/config": "x\n",
    ".npmrc": "//r/:_authToken=x\n",
    ".pypirc": "[pypi]\n",
    "site/.htpasswd": "u:x\n",
    "terraform.tfstate": "{}\n",
    "terraform.tfstate.backup": "{}\n",
    "keys/deploy.ppk": "k\n",
    "keys/key.der": "k\n",
    "config/cert.txt": BEGIN + "CERTIFICATE-----\n",
    "config/public.txt": BEGIN + "PUBLIC KEY-----\n",
    "config/env.py": "not a .env file",
    "app.py": "print('ok')\n",
}

WITHHELD = {
    ".ENV": "environment file",
    ".aws": "credentials directory",
    ".docker": "credentials directory",
    ".envrc": "environment file",
    ".git-credentials": "credentials file",
    ".kube": "credentials directory",
    ".npmrc": "credentials file",
    ".pypirc": "credentials file",
    "certs/bundle.crt": "contains a private key",
    "keys/deploy.key.txt": "contains a private key",
    "keys/deploy.ppk": "private key (by name)",
    "keys/key.der": "private key (by name)",
    "prod.env": "environment file",
    "site/.htpasswd": "credentials file",
    "terraform.tfstate": "Terraform state (holds secrets)",
    "terraform.tfstate.backup": "Terraform state (holds secrets)",
    "vpn/client.conf": "contains a private key",
    ".bzr": "version control directory",
    ".env": "environment file",
    ".env.production": "environment file",
    ".git": "version control directory",
    ".hg": "version control directory",
    ".netrc": "credentials file",
    ".svn": "version control directory",
    "_darcs": "version control directory",
    "certs/app.keystore": "private key (by name)",
    "certs/client.p12": "private key (by name)",
    "certs/client.pfx": "private key (by name)",
    "certs/server.KEY": "private key (by name)",
    "certs/server.pem": "private key (by name)",
    "certs/trust.jks": "private key (by name)",
    "config/.env.local": "environment file",
    "config/.pgpass": "credentials file",
    "config/enc.bin": "contains a private key",
    "config/k.txt": "contains a private key",
    "config/late.txt": "contains a private key",
    "config/rsa": "contains a private key",
    "home/.gnupg": "credentials directory",
    "home/.ssh": "credentials directory",
    "keys/id_dsa": "private key (by name)",
    "keys/id_ecdsa": "private key (by name)",
    "keys/id_ecdsa_sk": "private key (by name)",
    "keys/id_ed25519": "private key (by name)",
    "keys/id_ed25519_sk": "private key (by name)",
    "keys/id_rsa": "private key (by name)",
    "lib/CVS": "version control directory",
    "vendor/sub/.git": "version control directory",
    "vpn/demo.ovpn": "VPN config (by name)",
}

SHIPPED = ["app.py", "config/cert.txt", "config/env.py", "config/public.txt", "keys/id_ed25519.pub",
           "keys/id_rsa.pub", "vendor/sub/lib.py"]


@pytest.fixture
def creds(tmp_path) -> Path:
    root = tmp_path / "creds"
    write(root, CREDENTIALS)
    return root


def test_credentials_are_withheld_by_default(creds, tmp_path):
    dest = tmp_path / "release.tar.gz"
    manifest = packaging.build(str(creds), Rules(), str(dest))
    assert dict(manifest.withheld) == WITHHELD
    assert list(manifest.files) == SHIPPED
    assert manifest.size == sum(len(CREDENTIALS[p]) for p in SHIPPED)
    assert manifest.included == ()
    assert sorted(contents(dest)) == SHIPPED


def test_a_withheld_directory_is_not_walked(creds):
    os.mkfifo(creds / ".git/pipe")
    (creds / ".git/hooks").symlink_to("/etc/shadow")
    assert dict(scan(creds, ()).withheld)[".git"] == "version control directory"


def test_files_of_the_targets_file_are_withheld_by_any_spelling(creds, tmp_path):
    write(creds, {"targets.yaml": "targets: {}\n", "deploy/client.conf": "remote vpn\n",
                  "deploy/known_hosts": "host ssh-ed25519 AAAA\n"})
    os.link(creds / "deploy/client.conf", creds / "client-copy.conf")
    (creds / "deploy/current.conf").symlink_to("client.conf")
    alias = tmp_path / "alias"
    alias.symlink_to(creds)
    protected = ((str(alias / "targets.yaml"), "the targets file"),
                 (str(alias / "deploy/../deploy/current.conf"), "named in targets.yaml"),
                 (str(creds / "deploy/known_hosts"), "named in targets.yaml"),
                 (str(tmp_path / "no/such/known_hosts"), "named in targets.yaml"))
    manifest = scan(creds, (), protected=protected)
    assert dict(manifest.withheld) == WITHHELD | {
        "targets.yaml": "the targets file",
        "deploy/current.conf": "named in targets.yaml",
        "deploy/client.conf": "named in targets.yaml",  # what that link points to
        "client-copy.conf": "named in targets.yaml",  # a hard link is the same file
        "deploy/known_hosts": "named in targets.yaml",
    }
    assert list(manifest.files) == SHIPPED


def test_include_packages_what_the_defaults_withhold(creds, tmp_path):
    write(creds, {"keys/deploy.pem": "the app's own TLS key\n", "targets.yaml": "targets: {}\n"})
    dest = tmp_path / "release.tar.gz"
    rules = Rules(include=("keys/deploy.pem", "config/k.txt", "home/.ssh", "targets.yaml"),
                  protected=((str(creds / "targets.yaml"), "the targets file"),))
    manifest = packaging.build(str(creds), rules, str(dest))
    assert manifest.included == (
        ("config/k.txt", "contains a private key"),
        ("home/.ssh", "credentials directory"),
        ("keys/deploy.pem", "private key (by name)"),
        ("targets.yaml", "the targets file"),
    )
    assert contents(dest)["keys/deploy.pem"] == b"the app's own TLS key\n"
    assert sorted(contents(dest)) == sorted(
        [*SHIPPED, "keys/deploy.pem", "config/k.txt", "home/.ssh/config", "targets.yaml"])
    # Only what was named: the other keys stay out.
    assert dict(manifest.withheld) == {k: v for k, v in WITHHELD.items() if k not in rules.include}


@pytest.mark.parametrize(
    ("include", "exclude", "message"),
    [
        ("nope.txt", (), "package/include: nope.txt: no such file or directory"),
        ("keys/*", (), r"package/include: keys/\*: no such file or directory .* not patterns"),
        ("../outside/secret.txt", (), "package/include: ../outside/secret.txt: must be a path inside"),
        ("/etc/passwd", (), "package/include: /etc/passwd: must be a path inside"),
        ("config/cert.txt", ("*.txt",), "package/include: config/cert.txt is excluded by package/exclude"),
        ("keys/id_rsa", ("keys/",), "package/include: keys/id_rsa is excluded by package/exclude"),
        ("certs/a/b/server.pem", ("**/*.pem",), "package/include: certs/a/b/server.pem is excluded"),
        (".git/HEAD", (), "package/include: .git/HEAD is inside .git, which is withheld"),
    ],
)
def test_bad_include(creds, include, exclude, message):
    write(creds, {"certs/a/b/server.pem": "k"})
    with pytest.raises(UsageError, match=message):
        scan(creds, exclude, include=(include,))


def test_double_star_exclude_reaches_any_depth(creds):
    write(creds, {"certs/a/b/server.pem": "k"})
    manifest = scan(creds, ("**/*.pem",))
    # Excluded, so neither packaged nor reported as withheld.
    assert "certs/a/b/server.pem" not in dict(manifest.withheld)
    assert "certs/server.pem" not in dict(manifest.withheld)
    assert list(manifest.files) == SHIPPED


def test_modes_are_normalized_and_owners_times_dropped(tmp_path):
    root = tmp_path / "src"
    write(root, {"bin/tool": "#!/bin/sh\n", "bin/g.sh": "", "settings.py": "DEBUG = False\n",
                 "run.sh": "", "private.txt": "", "data/x": ""})
    modes = {"bin/tool": 0o4755, "bin/g.sh": 0o2775, "settings.py": 0o666, "run.sh": 0o700,
             "private.txt": 0o600, "bin": 0o2777, "data": 0o1777}
    for rel, mode in modes.items():
        (root / rel).chmod(mode)
    dest = tmp_path / "release.tar.gz"
    packaging.build(str(root), Rules(), str(dest))
    got = members(dest)
    assert {name: m.mode for name, m in got.items()} == {
        "bin": 0o755, "bin/tool": 0o755, "bin/g.sh": 0o755, "settings.py": 0o644, "run.sh": 0o755,
        "private.txt": 0o644, "data": 0o755, "data/x": 0o644,
    }
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in got.values()} == {(0, 0, "", "", 0)}
    assert {name for name, m in got.items() if m.isdir()} == {"bin", "data"}


def test_build_writes_exactly_the_files(src, tmp_path):
    dest = tmp_path / "release.tar.gz"
    manifest = packaging.build(str(src), Rules(exclude=EXCLUDE), str(dest))
    assert manifest == scan(src)
    got = members(dest)
    assert sorted(name for name, m in got.items() if not m.isdir()) == PACKAGED
    assert {m.mode for m in got.values() if m.isdir()} == {0o755}
    assert got["manage.py"].mode == 0o755
    assert contents(dest)["app/views.py"] == b"def index(): ...\n"
    links = {m.name: m.linkname for m in got.values() if m.issym()}
    assert links == {"current.py": "app/views.py", "dangling": "nowhere", "static": "assets/static"}
    # Directories are entries of their own (0755, checked above), not left to the hosts' tar.
    assert sorted(name for name, m in got.items() if m.isdir()) == [
        "app", "assets", "assets/static", "assets/static/js", "docs", "docs/media", "docs/media/uploads",
        "media", "notes"]


def test_links_inside_the_tree_are_packaged_as_links(src):
    (src / "app/top.py").symlink_to("../manage.py")
    (src / "app/chain.py").symlink_to("../current.py")
    (src / "app/gone").symlink_to("../no/such/file")
    assert list(scan(src).files) == sorted([*PACKAGED, "app/top.py", "app/chain.py", "app/gone"])


@pytest.mark.parametrize(
    ("links", "exclude", "message"),
    [
        ({"shadow": "/etc/shadow"}, (), "shadow -> /etc/shadow: symlink points outside"),
        ({"app/root": "../../../../root"}, (), "app/root -> ../../../../root: symlink points outside"),
        ({"app/up": "../static/../../outside"}, (), "app/up -> ../static/../../outside: symlink points outside"),
        # Inside by its text, outside once the link it goes through is followed.
        ({"ext": "../outside", "via": "ext/secret.txt"}, ("/ext",),
         "via -> ext/secret.txt: symlink resolves to .*/outside/secret.txt, outside"),
    ],
)
def test_a_link_out_of_the_tree_fails_the_package(src, tmp_path, links, exclude, message):
    for link, target in links.items():
        (src / link).symlink_to(target)
    with pytest.raises(UsageError, match=message):
        scan(src, EXCLUDE + exclude)
    dest = tmp_path / "release.tar.gz"
    with pytest.raises(UsageError, match=message):
        packaging.build(str(src), Rules(exclude=EXCLUDE + exclude), str(dest))
    assert not dest.exists()


def test_an_unreadable_directory_fails_the_package(src, monkeypatch):
    real = os.scandir

    def scandir(path):
        if os.path.basename(path) == "assets":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UsageError, match=f"cannot package {re.escape(str(src))}/assets: Permission denied"):
        scan(src)


def test_same_tree_elsewhere_has_the_same_hash(src, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(src, copy, symlinks=True)
    assert scan(copy).digest == scan(src).digest


def _touch_mtime(src: Path) -> None:
    os.utime(src / "app/views.py", (1_000_000_000, 1_000_000_000))


def _change_byte(src: Path) -> None:
    (src / "app/views.py").write_text("def index(): ..\n")


def _change_mode(src: Path) -> None:
    (src / "app/views.py").chmod(0o755)


def _group_writable(src: Path) -> None:
    (src / "app/views.py").chmod(0o664)


def _setuid_without_exec(src: Path) -> None:
    (src / "app/views.py").chmod(0o4644)


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


def _add_withheld(src: Path) -> None:
    (src / "app/id_ed25519").write_text("k")
    (src / "app/notes.txt").write_text(BEGIN + "PRIVATE KEY-----\n")


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
        (_group_writable, False),  # packaged 0644 either way
        (_setuid_without_exec, False),
        (_change_excluded, False),
        (_add_withheld, False),
        (_add_empty_dir, False),  # not packaged, so not hashed
    ],
)
def test_tree_hash(src, change, changes_hash):
    before = scan(src).digest
    change(src)
    assert (scan(src).digest != before) is changes_hash


def test_two_builds_are_byte_identical(src, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(src, copy, symlinks=True)
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000), follow_symlinks=False)
    first, second, third = (tmp_path / f"{n}.tar.gz" for n in ("first", "second", "third"))
    packaging.build(str(src), Rules(exclude=EXCLUDE), str(first))
    packaging.build(str(src), Rules(exclude=EXCLUDE), str(second))
    packaging.build(str(copy), Rules(exclude=EXCLUDE), str(third))
    assert first.read_bytes() == second.read_bytes() == third.read_bytes()
    # The gzip header holds neither the file's name (flags 0) nor the time of the build.
    assert first.read_bytes()[3:8] == bytes(5)


def test_unpacked_tarball_hashes_like_its_source(src, tmp_path):
    dest = tmp_path / "release.tar.gz"
    packaging.build(str(src), Rules(exclude=EXCLUDE), str(dest))
    out = tmp_path / "unpacked"
    out.mkdir()
    # With tar itself, as the hosts unpack it.
    subprocess.run(["tar", "-xzf", dest, "-C", out, "--no-same-owner"], check=True)
    assert scan(out, ()).digest == scan(src).digest


def test_build_checks_the_planned_digest(src, tmp_path):
    planned = scan(src).digest
    ok = tmp_path / "ok.tar.gz"
    assert packaging.build(str(src), Rules(exclude=EXCLUDE), str(ok), expect=planned).digest == planned
    (src / "app/views.py").write_text("changed after the plan\n")
    dest = tmp_path / "release.tar.gz"
    with pytest.raises(StepFailed, match="source changed since the plan was made"):
        packaging.build(str(src), Rules(exclude=EXCLUDE), str(dest), expect=planned)
    assert not dest.exists()


def test_build_never_writes_through_a_planted_link(src, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    dest = tmp_path / "release.tar.gz"
    dest.symlink_to(victim)
    with pytest.raises(FileExistsError):
        packaging.build(str(src), Rules(exclude=EXCLUDE), str(dest))
    assert victim.read_text() == "untouched"
    assert dest.is_symlink()


def test_build_into_the_current_directory(src, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert len(packaging.build(str(src), Rules(exclude=EXCLUDE), "release.tar.gz").files) == len(PACKAGED)
    assert tarfile.is_tarfile(tmp_path / "release.tar.gz")


def test_fifo_in_source_is_a_usage_error_not_a_hang(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with pytest.raises(UsageError, match="pipe: not a regular file or symlink"):
        scan(src, ())
    assert scan(src, ("pipe",)).files == ()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sums_are_each_packaged_file_s_hash_and_mode(src, tmp_path):
    (src / "app/id_ed25519").write_text("k")  # withheld by name
    (src / "app/notes.txt").write_text(BEGIN + "PRIVATE KEY-----\n")  # withheld by content
    dest = tmp_path / "release.tar.gz"
    manifest = packaging.build(str(src), Rules(exclude=EXCLUDE), str(dest))
    shipped = contents(dest)
    # Regular files only (no links, nothing withheld), sorted, with the mode as packaged.
    assert manifest.sums == tuple((name, _sha(data), members(dest)[name].mode)
                                  for name, data in sorted(shipped.items()))
    assert dict((p, m) for p, _, m in manifest.sums)["manage.py"] == 0o755
    assert [p for p, _, _ in manifest.sums] == [p for p in PACKAGED if not (src / p).is_symlink()]
    assert scan(src).sums == manifest.sums


def test_the_digest_follows_the_sums(src):
    before = scan(src)
    (src / "app/views.py").write_text("def index(): ..\n")
    after = scan(src)
    changed = {p for p, _, _ in set(after.sums) ^ set(before.sums)}
    assert changed == {"app/views.py"}
    assert after.digest != before.digest


def test_a_large_file_is_streamed_hashed_and_sniffed_only_at_its_start(src, tmp_path):
    big = os.urandom(2 * packaging._KEY_SCAN + 12345)
    write(src, {"media/big.bin": big + (BEGIN + "PRIVATE KEY-----\n").encode()})
    dest = tmp_path / "release.tar.gz"
    manifest = packaging.build(str(src), Rules(exclude=EXCLUDE), str(dest))
    assert contents(dest)["media/big.bin"][:len(big)] == big
    assert dict((p, s) for p, s, _ in manifest.sums)["media/big.bin"] == _sha((src / "media/big.bin").read_bytes())
    assert manifest.size == sum((src / p).stat().st_size for p, _, _ in manifest.sums)


def test_a_file_cut_while_being_read_fails(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(UsageError, match="f: changed while being packaged"):
            packaging._read(fd, 10, str(path))
    finally:
        os.close(fd)


def test_builds_are_byte_identical_whatever_the_chunks_and_threads(src, tmp_path, monkeypatch):
    write(src, {"media/big.bin": os.urandom(300_000), "media/text.txt": "hello\n" * 50_000})
    rules = Rules(exclude=EXCLUDE)
    # Small chunks: many gzip members, compressed by more threads than members at once.
    monkeypatch.setattr(packaging, "_CHUNK", 10_000)
    built = {}
    for workers in (1, 2, 4):
        monkeypatch.setattr(packaging, "_WORKERS", workers)
        dest = tmp_path / f"{workers}.tar.gz"
        packaging.build(str(src), rules, str(dest))
        built[workers] = dest.read_bytes()
    assert built[1] == built[2] == built[4]
    # gzip itself reads the members as one stream, and tar the archive in it, without a complaint.
    assert subprocess.run(["gzip", "-t", tmp_path / "2.tar.gz"], capture_output=True).returncode == 0
    listing = subprocess.run(["tar", "-tzf", tmp_path / "2.tar.gz"], capture_output=True, text=True, check=True)
    assert listing.stderr == ""
    assert sorted(n.rstrip("/") for n in listing.stdout.splitlines()) == sorted(members(tmp_path / "2.tar.gz"))
    assert contents(tmp_path / "2.tar.gz")["media/text.txt"] == b"hello\n" * 50_000


def _unpack(dest: Path, out: Path) -> dict[str, tuple[str, int, str]]:
    """What real tar makes of the tarball: relative path: (kind, mode, link target or content hash)."""
    out.mkdir()
    subprocess.run(["tar", "-xzf", dest, "-C", out, "--no-same-owner"], check=True)
    found = {}
    for path in out.rglob("*"):
        rel = str(path.relative_to(out))
        st = path.lstat()
        if path.is_symlink():
            found[rel] = ("link", 0, os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", st.st_mode & 0o7777, "")
        else:
            found[rel] = ("file", st.st_mode & 0o7777, _sha(path.read_bytes()))
    return found


def test_only_packs_those_files_with_every_directory_and_link(src, tmp_path):
    rules = Rules(exclude=EXCLUDE)
    full = packaging.build(str(src), rules, str(tmp_path / "full.tar.gz"))
    only = frozenset({"manage.py", "assets/static/site.css", "no/such/file"})
    part = packaging.build(str(src), rules, str(tmp_path / "part.tar.gz"), expect=full.digest, only=only)
    # The manifest describes the whole tree, as a full build's does.
    assert part == full
    whole = _unpack(tmp_path / "full.tar.gz", tmp_path / "full")
    got = _unpack(tmp_path / "part.tar.gz", tmp_path / "part")
    assert got == {rel: v for rel, v in whole.items() if v[0] != "file" or rel in only}
    assert {rel for rel, v in got.items() if v[0] == "file"} == {"manage.py", "assets/static/site.css"}
    assert got["manage.py"] == ("file", 0o755, _sha(b"import sys\n"))
    assert {rel for rel, v in got.items() if v[0] == "link"} == {"current.py", "dangling", "static"}
    assert {rel for rel, v in got.items() if v[0] == "dir"} == {
        "app", "assets", "assets/static", "assets/static/js", "docs", "docs/media", "docs/media/uploads",
        "media", "notes"}
    empty = packaging.build(str(src), rules, str(tmp_path / "none.tar.gz"), only=frozenset())
    assert empty == full
    assert {v[0] for v in _unpack(tmp_path / "none.tar.gz", tmp_path / "none").values()} == {"dir", "link"}


def test_only_still_checks_the_whole_tree_against_the_plan(src, tmp_path):
    planned = scan(src).digest
    (src / "app/views.py").write_text("changed after the plan\n")  # not in only
    dest = tmp_path / "release.tar.gz"
    with pytest.raises(StepFailed, match="source changed since the plan was made"):
        packaging.build(str(src), Rules(exclude=EXCLUDE), str(dest), expect=planned,
                        only=frozenset({"manage.py"}))
    assert not dest.exists()


def test_long_and_non_ascii_names_and_links_survive_real_tar(src, tmp_path):
    deep = "d" * 60 + "/" + "e" * 60 + "/" + "f" * 120 + ".txt"  # past ustar's 100 bytes: a pax header
    write(src, {deep: "deep\n", "app/café ☕.py": "# utf-8\n", "app/" + "n" * 100: "exactly 104\n"})
    (src / "app/long-link").symlink_to("../" + deep)
    (src / "app/lien-é").symlink_to("café ☕.py")
    dest = tmp_path / "release.tar.gz"
    manifest = packaging.build(str(src), Rules(exclude=EXCLUDE), str(dest))
    got = _unpack(dest, tmp_path / "out")
    assert got[deep] == ("file", 0o644, _sha(b"deep\n"))
    assert got["app/café ☕.py"] == ("file", 0o644, _sha(b"# utf-8\n"))
    assert got["app/long-link"] == ("link", 0, "../" + deep)
    assert got["app/lien-é"] == ("link", 0, "café ☕.py")
    assert scan(tmp_path / "out", ()).digest == manifest.digest


def test_every_header_is_a_valid_ustar_header(src, tmp_path):
    dest = tmp_path / "release.tar.gz"
    packaging.build(str(src), Rules(exclude=EXCLUDE), str(dest))
    with gzip.open(dest) as f:
        data = f.read()
    assert len(data) % 10240 == 0
    with tarfile.open(dest) as tar:
        for m in tar.getmembers():
            block = data[m.offset:m.offset + 512]
            assert block[257:265] == b"ustar\x0000"
            assert int(block[148:154], 8) == sum(block[:148]) + 8 * 32 + sum(block[156:])
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0)


def test_a_protected_directory_is_withheld(src):
    manifest = scan(src, protected=((str(src / "docs"), "named in targets.yaml"),))
    assert manifest.withheld == (("docs", "named in targets.yaml"),)
    assert "docs/media/uploads/keep.txt" not in manifest.files


def test_a_protected_file_the_runner_cannot_read_is_withheld(src, monkeypatch):
    real = os.open

    def deny(path, *args, **kwargs):
        if str(path).endswith("media/logo.png"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    protected = ((str(src / "media/logo.png"), "named in targets.yaml"),)
    assert dict(scan(src, protected=protected).withheld) == {"media/logo.png": "named in targets.yaml"}
    # Not protected, an unreadable file fails the package, as before.
    with pytest.raises(UsageError, match="cannot package .*media/logo.png: Permission denied"):
        scan(src)


# -- through the CLI: the default package of a checkout -------------------------------------

def test_default_package_of_a_checkout_ships_no_credentials(tmp_path):
    # The review's reproduction: no package: key, so the source is the
    # checkout itself, VPN config, SSH key, .env and .git included.
    (tmp_path / "manage.py").write_text("x\n")
    (tmp_path / "vhost").write_text("ServerName <<HOSTNAME>>\n")
    planted = {"vpn/demo.ovpn": "client\nauth-user-pass auth.txt\n", "vpn/auth.txt": "me\npw\n",
               "keys/id_ed25519": "k\n", ".env": "SECRET=1\n", ".git/HEAD": "ref\n",
               "certs/a/b/server.pem": "c\n", "notes/key.txt": BEGIN + "PRIVATE KEY-----\n"}
    for rel, text in planted.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "targets.yaml").write_text(
        "targets:\n  demo:\n    transport: local\n    deploy_root: www\n"
        f"    apache: {{dir: apache2, ctl: builtin, port: {free_port()}}}\n"
        "    migrate: null\n    template: vhost\n"
        "    vpn: {kind: none}\n"
        "  alpha: {hosts: [web1.internal], known_hosts: keys/known,"
        " vpn: {kind: openvpn, config: vpn/demo.ovpn}}\n")
    (tmp_path / "keys" / "known").write_text("")
    args = ["demo", "demo.example.test", "--targets", str(tmp_path / "targets.yaml"), "--output", "plain"]
    out = io.StringIO()
    assert main([*args, "--dry-run"], stdout=out) == 0
    shown = out.getvalue()
    for line in ("left out: .env: environment file", "left out: .git: version control directory",
                 "left out: certs/a/b/server.pem: private key (by name)",
                 "left out: keys/id_ed25519: private key (by name)",
                 "left out: keys/known: named in targets.yaml",
                 "left out: notes/key.txt: contains a private key",
                 "left out: targets.yaml: the targets file",
                 "left out: vhost: named in targets.yaml",
                 "left out: vpn/auth.txt: named in targets.yaml",  # the password file the .ovpn names
                 "left out: vpn/demo.ovpn: named in targets.yaml"):
        assert line in shown, shown
    assert "1 files, 2 bytes" in shown
    assert main(args, stdout=io.StringIO()) == 0
    release = next((tmp_path / "www" / "demo.releases").iterdir())
    # The app, and what deployer keeps with it: the id of the run that made
    # it, its file list, the vhost it was deployed with.
    assert sorted(p.name for p in release.iterdir()) == [".deployer-release-id", ".deployer-sums",
                                                         ".deployer-vhost", "manage.py"]


def test_a_dry_run_loads_no_executor(tmp_path):
    # The executor brings the SSH library, whose import alone costs a dry run a tenth of a second.
    (tmp_path / "manage.py").write_text("x\n")
    (tmp_path / "vhost").write_text("ServerName <<HOSTNAME>>\n")
    (tmp_path / "targets.yaml").write_text(
        "targets:\n  demo:\n    hosts: [198.18.0.1]\n    template: vhost\n    known_hosts: known\n")
    (tmp_path / "known").write_text("")
    args = ["demo", "demo.example.test", "--dry-run", "--targets", str(tmp_path / "targets.yaml"),
            "--output", "plain"]
    code = (f"import sys; from deployer.cli.deploy import main;"
            f" print(main({args!r}), 'deployer.run.executor' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.splitlines()[-1] == "0 False", run.stdout + run.stderr


def test_a_tree_deployer_made_is_packaged_whole_under_its_path(tmp_path):
    """The wheels go in as `extra`: under their own path, every file, none withheld for looking
    like a key (a wheel may well hold a test key), their dot files (the set's marker) left out."""
    src, made = tmp_path / "src", tmp_path / "made"
    (src / "app").mkdir(parents=True)
    (src / "app" / "views.py").write_text("x = 1\n")
    (made / "wheels").mkdir(parents=True)
    (made / "requirements.txt").write_text("six==1.16.0\n")
    (made / "wheels" / "six-1.16.0-py2.py3-none-any.whl").write_text(BEGIN + "RSA PRIVATE KEY-----\n")
    (made / ".whole").write_text("")
    rules = Rules(extra=((".deployer-python", str(made)),))
    m = packaging.build(str(src), rules, str(tmp_path / "a.tgz"))
    assert m.files == (".deployer-python/requirements.txt",
                       ".deployer-python/wheels/six-1.16.0-py2.py3-none-any.whl", "app/views.py")
    assert not m.withheld
    with tarfile.open(tmp_path / "a.tgz") as t:
        assert t.extractfile(".deployer-python/requirements.txt").read() == b"six==1.16.0\n"
    # The digest covers it: another wheel is another release.
    (made / "wheels" / "six-1.16.0-py2.py3-none-any.whl").write_text("other")
    assert packaging.scan(str(src), rules).digest != m.digest


def test_the_copy_a_build_runs_in_holds_no_version_control_and_no_file_targets_yaml_names(tmp_path):
    src = tmp_path / "src"
    for rel, text in {"manage.py": "", "static/app.js": "js", ".git/HEAD": "ref", "vpn/demo.conf": "remote x",
                      ".env": "SECRET=1", "targets.yaml": "targets: {}"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    os.chmod(src / "manage.py", 0o755)
    (src / "empty").mkdir()
    os.symlink("static/app.js", src / "app.js")
    rules = Rules(protected=((str(src / "vpn" / "demo.conf"), "named in targets.yaml"),
                             (str(src / "targets.yaml"), "the targets file")))
    count = packaging.copy(str(src), str(tmp_path / "copy"), rules)
    copied = {str(p.relative_to(tmp_path / "copy")) for p in (tmp_path / "copy").rglob("*")}
    assert copied == {"manage.py", "static", "static/app.js", ".env", "empty", "app.js", "vpn"}
    assert count == 4
    assert os.stat(tmp_path / "copy" / "manage.py").st_mode & 0o777 == 0o755
    assert os.readlink(tmp_path / "copy" / "app.js") == "static/app.js"
    assert os.stat(tmp_path / "copy").st_mode & 0o777 == 0o700
    # What the safe defaults withhold by name is withheld again when the copy is packaged.
    assert ".env" not in packaging.scan(str(tmp_path / "copy"), Rules()).files
