"""The git state recorded in every run's metadata.json."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from dkbench.runner.environment import git_sha

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_dirty_covers_edits_and_new_files_under_src_and_configs_only(tmp_path):
    _git(tmp_path, "init", "-q")
    for folder in ("src", "configs", "docs"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "kept.txt").write_text("x")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    clean = git_sha(tmp_path)
    assert len(clean) == 40 and not clean.endswith("-dirty")
    (tmp_path / "docs" / "notes.md").write_text("new")  # a new file outside code and configs
    assert git_sha(tmp_path) == clean
    (tmp_path / "configs" / "strategy_new.yaml").write_text("name: new")  # a new config: results may change
    assert git_sha(tmp_path) == clean + "-dirty"
    (tmp_path / "configs" / "strategy_new.yaml").unlink()
    (tmp_path / "docs" / "kept.txt").write_text("edited")  # an edit to a tracked file, anywhere
    assert git_sha(tmp_path) == clean + "-dirty"
