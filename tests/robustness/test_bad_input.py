"""Bad input through the real command line, in process: each case must be refused with a short
message that names the setting and the fix, a non-zero exit status, no traceback, and nothing
written (no run folder, nothing outside the runs folder). The start of issue 12's corpus."""

from __future__ import annotations

import pytest

from dkbench.cli import main

TINY = ["dataset=probe", "backbone=tinycnn", "trainer.max_epochs=1", "dataset.options.n_train=32",
        "dataset.options.n_val=16", "dataset.options.n_test=16", "ui.progress_bar=false"]

#: (id, command and overrides, exit status, words the message must contain)
CASES = [
    ("dataset name with ..", ["train", "dataset.name=../../escaped"], 2, ["dataset.name", "no '..'"]),
    ("tag with a separator", ["train", "tag=@a/b"], 2, ["tag=", "path separators"]),
    ("strategy name with ..", ["train", "strategy.name=.."], 2, ["strategy.name"]),
    ("zero epochs", ["train", "trainer.max_epochs=0"], 2, ["trainer.max_epochs=0", ">= 1"]),
    ("endless epochs", ["train", "trainer.max_epochs=-1"], 2, ["trainer.max_epochs=-1", "never end"]),
    ("zero batch size", ["train", "data.batch_size=0"], 2, ["data.batch_size=0", ">= 1"]),
    ("negative learning rate", ["train", "model.optimizer.lr=-0.1"], 2, ["model.optimizer.lr=-0.1", "> 0"]),
    ("NaN learning rate", ["train", "model.optimizer.lr=nan"], 2, ["model.optimizer.lr=nan"]),
    ("unknown strategy option", ["train", "+strategy.options.no_such_option=1"], 2,
     ["unknown option", "no_such_option"]),
    ("strategy option out of range", ["train", "strategy=self_paced", "strategy.options.growth=0.5"], 2,
     ["growth", ">= 1", "strategy.options.growth"]),
    ("strategy option of the wrong type", ["train", "strategy=attention_supervision",
                                           "strategy.options.weight=heavy"], 2, ["weight", "float"]),
    ("strategy the dataset cannot serve", ["train", "dataset=probe_3class", "strategy=roi_input",
                                           "dataset.provides=[]"], 2, ["roi_input", "mask"]),
    ("sweep with zero epochs", ["sweep", "suite=smoke", "trainer.max_epochs=0"], 2, ["trainer.max_epochs=0"]),
    ("report without a suite", ["report"], 2, ["suite=<name>"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line_without_a_traceback(case, tmp_path, capsys, monkeypatch):
    _, argv, status, words = case
    monkeypatch.delenv("DKBENCH_TRACEBACK", raising=False)
    command, *overrides = argv
    paths = [f"paths.root_dir={tmp_path}", f"paths.runs_dir={tmp_path / 'runs'}"]
    full = [command, *TINY, *overrides, *paths] if command in ("train", "sweep") else [command, *overrides, *paths]
    if command == "sweep":  # a suite brings its own dataset and epochs; overrides after it win
        full = [command, *overrides, *paths, "ui.progress_bar=false"]
    assert main(full) == status
    err = capsys.readouterr().err
    message = [line for line in err.strip().splitlines() if line.startswith("dkbench ")]
    assert len(message) == 1, err
    for word in words:
        assert word in message[0], (word, message[0])
    assert "Traceback" not in err
    runs = tmp_path / "runs"
    written = [p for p in runs.rglob("*") if p.is_file()] if runs.exists() else []
    assert not written, written  # refused before any folder or file
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["runs"])  # nothing beside it either


def test_traceback_on_request(tmp_path, monkeypatch, capsys):
    """DKBENCH_TRACEBACK=1: the same refusal raises, with its traceback."""
    monkeypatch.setenv("DKBENCH_TRACEBACK", "1")
    from dkbench.errors import RunConfigError

    with pytest.raises(RunConfigError, match="trainer.max_epochs=0"):
        main(["train", *TINY, "trainer.max_epochs=0", f"paths.root_dir={tmp_path}"])
