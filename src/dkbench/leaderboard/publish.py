"""`dkbench report suite=<name> publish=<folder>`: a report copied where documents live.

A report folder names its figures generically (``heatmap_delta.png``, ``bars.png``,
``cd_diagram.png``), so several suites' leaderboards cannot share one folder such as
``docs/results``: copied by hand, the Markdown kept links to files that were not copied, or to
another suite's. Publishing writes ``<stem>_leaderboard.md`` beside ``<stem>_<figure>`` for every
figure the Markdown links, and rewrites those links, so every link of the copy resolves.
``<stem>`` is the suite's folder name with ``@`` (a protocol's suffix, e.g. ``@tuned``) as ``_``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from dkbench.errors import RunConfigError
from dkbench.storage import atomic_file, atomic_write_text

#: a Markdown image whose target is a bare file name (the report's own figures)
_IMAGE_LINK = re.compile(r"(!\[[^\]]*\]\()([^)/\\]+)(\))")


def published_stem(suite_name: str) -> str:
    return suite_name.replace("@", "_")


def publish_report(report_dir: Path, dest: Path, suite_name: str) -> list[Path]:
    """Copy ``report_dir/leaderboard.md`` and the figures it links into ``dest``, prefixed with
    the suite's stem; returns the written paths (the Markdown first)."""
    source = report_dir / "leaderboard.md"
    if not source.is_file():
        raise RunConfigError(f"publish: {source} does not exist; run `dkbench report suite={suite_name}` first")
    if dest.exists() and not dest.is_dir():
        raise RunConfigError(f"publish={dest} is a file; give a folder (e.g. publish=docs/results)")
    stem = published_stem(suite_name)
    written: list[Path] = []
    figures: list[tuple[Path, Path]] = []

    def rename(match: re.Match) -> str:
        name = match.group(2)
        figure = report_dir / name
        if not figure.is_file():  # a link the report did not write: leave it as it is
            return match.group(0)
        figures.append((figure, dest / f"{stem}_{name}"))
        return f"{match.group(1)}{stem}_{name}{match.group(3)}"

    markdown = _IMAGE_LINK.sub(rename, source.read_text(encoding="utf-8"))
    dest.mkdir(parents=True, exist_ok=True)
    for figure, target in figures:  # a copy, never a hard link: the next report rewrites its figures in place
        with open(figure, "rb") as src, atomic_file(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    target_md = dest / f"{stem}_leaderboard.md"
    atomic_write_text(target_md, markdown)
    written.append(target_md)
    written += [target for _, target in figures]
    return written
