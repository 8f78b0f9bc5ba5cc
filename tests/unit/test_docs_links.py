"""Every relative link of the README and docs/ resolves: a leaderboard copied into docs/results
without its figures (or with another suite's) used to show broken images. `dkbench report ...
publish=docs/results` copies them together; this test keeps it that way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

#: a Markdown link or image target: ](target) or ](target "title")
_TARGET = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def relative_targets(markdown: str) -> list[str]:
    """Link targets that name a file of the repository (no scheme, no bare #anchor), code blocks skipped."""
    targets = []
    for target in _TARGET.findall(_FENCE.sub("", markdown)):
        path = target.split("#")[0]
        if path and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", path):
            targets.append(path)
    return targets


def test_the_link_reader_finds_links_and_skips_urls_anchors_and_code():
    text = ('see [a](docs/a.md#part) ![f](f.png "title") [w](https://x.org) [s](#here)\n'
            "```\n[not](in_code.md)\n```\n")
    assert relative_targets(text) == ["docs/a.md", "f.png"]


DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(document: Path):
    missing = [t for t in relative_targets(document.read_text(encoding="utf-8")) if not (document.parent / t).exists()]
    assert not missing, f"{document.relative_to(REPO)} links files that do not exist: {missing}"
