"""README and docs/ link to each other by file and heading: every link
between them leads somewhere, so a moved section cannot leave a dead one."""

import re

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _anchors(page) -> set[str]:
    """GitHub's anchor of each heading: lower case, punctuation dropped, spaces as -."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_leads_to_a_file_and_heading_that_are_there(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    dead = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path, _, anchor = target.partition("#")
        if "://" in path:
            continue
        where = (page.parent / path).resolve() if path else page
        if not where.exists():
            dead.append(target)
        elif anchor and where.suffix == ".md" and anchor not in _anchors(where):
            dead.append(target)
    assert dead == []


def test_readme_is_the_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) < 200
    # Its first two blocks are the two commands (tests/cli/test_local_default runs the first).
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    assert "deploy local local.test" in blocks[0] and ".ci/run" in blocks[1]
