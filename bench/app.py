"""A real-sized app to deploy: examples/djangoapp plus Django's own source as ballast.

    python -m bench.app DIR        # build it into DIR/app and print its size

The ballast is Debian's python3-django (`cp -rL` of its package directory,
without __pycache__): about 20 MB in 3,500 files, which nobody imports; it
stands in for the templates, static files and vendored code of a real app.
`set_release(app, text)` rewrites RELEASE.txt, which the app's /health
shows: one file changes, and a check over HTTP can tell the releases apart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "djangoapp"
DJANGO = Path("/usr/lib/python3/dist-packages/django")


def build(dest: Path) -> Path:
    """The app at dest/app (dest must not hold one yet); returns its path."""
    if not DJANGO.is_dir():
        raise SystemExit(f"{DJANGO} is missing: apt-get install python3-django (as .ci/run does)")
    app = dest / "app"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (app / "ballast").mkdir()
    subprocess.run(["cp", "-rL", str(DJANGO), str(app / "ballast" / "django")], check=True, timeout=120)
    for cache in sorted(app.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    for pyc in app.rglob("*.pyc"):
        pyc.unlink()
    return app


def set_release(app: Path, text: str) -> None:
    """Change one file, RELEASE.txt, whose text /health reports as "release"."""
    (app / "RELEASE.txt").write_text(text + "\n")


def size(app: Path) -> tuple[int, int]:
    """(files, bytes) of the app's regular files."""
    files = total = 0
    for root, _, names in os.walk(app):
        for n in names:
            p = os.path.join(root, n)
            if os.path.isfile(p) and not os.path.islink(p):
                files += 1
                total += os.path.getsize(p)
    return files, total


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    built = build(Path(sys.argv[1]))
    n, b = size(built)
    print(f"{built}: {n} files, {b / 1e6:.1f} MB")
