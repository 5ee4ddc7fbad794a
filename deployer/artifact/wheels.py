"""The app's Python packages for the hosts, made on this machine: the
requirements resolved for the hosts' interpreter (not this machine's), and a
wheel of each, kept in a set of their own that the release carries as
`.deployer-python/` (SET_DIR).

The runner's Python may differ from the hosts' (pyenv's 3.11.7 against
Debian's 3.11.2), and a marker such as `python_full_version < "3.11.3"`
then picks other packages: pip evaluates markers against the interpreter
it runs in whatever --python-version says (pypa/pip#11010), so uv resolves
(`uv pip compile --python-version --python-platform`, which evaluates them
for the target) and pip downloads exactly those pins, with their hashes,
for the hosts' platform. The set is kept by the hash of what it was made
from: a deploy whose requirements did not change makes nothing.
"""

import hashlib
import os
import re
import shutil
import sys
import tempfile

from deployer.config.model import Python
from deployer.quoting import Command

SET_DIR = ".deployer-python"  # in every release of a target with `python:`
WHOLE = ".whole"  # in a set: written last, once every wheel is there
# What a set is made by: a new way of making one must not reuse an old set.
_FORMAT = b"deployer-wheels-1\0"


def cache_dir() -> str:
    """This user's cache of sets: XDG's, as pip's and uv's are."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "deployer", "python")


def key(python: Python) -> str:
    """What a set is made from: the requirements' bytes, where the packages
    come from and what they are for."""
    h = hashlib.sha256(_FORMAT)
    with open(python.requirements, "rb") as f:
        h.update(hashlib.sha256(f.read()).digest())
    for part in (python.version, python.platform, python.index_url, *python.find_links, str(python.no_index)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:32]


def set_path(python: Python) -> str:
    return os.path.join(cache_dir(), key(python))


def is_whole(path: str) -> bool:
    return os.path.isfile(os.path.join(path, WHOLE))


def venv_name(python: Python, pinned: bytes) -> str:
    """The hosts' virtualenv for a set: the interpreter, its version and the
    pins with their hashes name it, so the same name is the same packages."""
    h = hashlib.sha256(f"{python.interpreter}\0{python.version}\0".encode() + pinned)
    return f"{python.version}-{h.hexdigest()[:16]}"


def uv_platform(platform: str) -> str:
    """manylinux_2_28_x86_64 (the wheel tag) as uv's --python-platform: x86_64-manylinux_2_28."""
    m = re.fullmatch(r"(manylinux_2_[0-9]+)_(.+)", platform)
    return f"{m.group(2)}-{m.group(1)}" if m else platform


# The old names of manylinux_2_17, _2_12 and _2_5 (PEP 600): wheels still use them.
_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def pip_platforms(platform: str) -> list[str]:
    """--platform for pip download: the hosts' manylinux tag and every older
    one, which their glibc runs too (pip takes only the tags it is given),
    then plain linux."""
    m = re.fullmatch(r"manylinux_2_([0-9]+)_(.+)", platform)
    if m is None:
        return ["--platform", platform]
    newest, arch = int(m.group(1)), m.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(newest, 4, -1)]
    tags += [f"{_LEGACY[minor]}_{arch}" for minor in sorted(_LEGACY, reverse=True)
             if minor <= newest and (minor == 17 or arch in ("x86_64", "i686"))]
    # Last: a wheel built here with `pip wheel` (a find_links folder), for a package PyPI has no wheel of.
    tags.append(f"linux_{arch}")
    return [word for tag in tags for word in ("--platform", tag)]


def _sources(python: Python) -> list[str]:
    out = []
    if python.index_url:
        out += ["--index-url", python.index_url]
    for link in python.find_links:
        out += ["--find-links", link]
    if python.no_index:
        out.append("--no-index")
    return out


def uv_bin() -> str:
    """The uv installed with deployer (a dependency), else the first on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv") or "uv"


def commands(python: Python, work: str) -> list[Command]:
    """What makes a set in `work`: requirements.txt (the pins, with hashes)
    and wheels/ (a wheel of each)."""
    uv = uv_bin()
    source = python.requirements
    made = []
    if os.path.basename(source) == "uv.lock":
        # The lock's own pins, then resolved again for the hosts: its markers
        # are universal, and only uv evaluates them for another interpreter.
        exported = os.path.join(work, "exported.txt")
        made.append(Command.of((uv, "export", "--quiet", "--frozen", "--no-emit-project", "--no-hashes",
                                "--format", "requirements-txt", "--project", os.path.dirname(source),
                                "--output-file", exported)))
        source = exported
    pinned = os.path.join(work, "requirements.txt")
    # Wheels only (--no-build): no interpreter is needed, and none is downloaded for the hosts' version.
    made.append(Command.of((uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--generate-hashes",
                            "--no-build", "--no-python-downloads",
                            "--python-version", python.version, "--python-platform", uv_platform(python.platform),
                            *_sources(python), "--output-file", pinned, source)))
    made.append(Command.of((sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                            "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
                            *pip_platforms(python.platform), "--python-version", python.version,
                            "--implementation", "cp", "--abi", python.abi, *_sources(python),
                            "--dest", os.path.join(work, "wheels"), "--requirement", pinned)))
    return made


def begin(python: Python) -> str:
    """A private folder beside the sets to make one in (see finish)."""
    os.makedirs(cache_dir(), mode=0o700, exist_ok=True)
    return tempfile.mkdtemp(prefix=".making-", dir=cache_dir())


def finish(work: str, dest: str) -> str:
    """The set made in `work` kept as `dest`, what it holds said in words; a
    set another run kept there meanwhile is as good (same key) and stays."""
    wheels = sorted(os.listdir(os.path.join(work, "wheels")))
    pins = pinned_names(os.path.join(work, "requirements.txt"))
    have = {_project(w) for w in wheels}
    lacking = sorted(set(pins) - have)
    if lacking:
        raise FileNotFoundError(f"no wheel was downloaded for {', '.join(lacking)}")
    with open(os.path.join(work, WHOLE), "x"):
        pass
    try:
        os.rename(work, dest)
    except OSError:
        if not is_whole(dest):
            raise
        shutil.rmtree(work)
    return f"{len(pins)} packages, {len(wheels)} wheels: {dest}"


def pinned_names(path: str) -> list[str]:
    """The projects a pinned requirements file names, normalized (PEP 503)."""
    with open(path, encoding="utf-8") as f:
        pins = (re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", line) for line in f)
        return [_normal(m.group(1)) for m in pins if m]


def _project(wheel: str) -> str:
    return _normal(wheel.split("-", 1)[0])


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
