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
    ("sweep with seed=", ["sweep", "suite=smoke", "seed=5"], 2, ["seed=5", "suite.seeds="]),
    ("sweep with dataset= over two datasets", ["sweep", "suite=smoke", "suite.datasets=[probe,probe_3class]",
                                               "dataset=probe"], 2, ["dataset=probe", "suite.datasets="]),
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


# --- bad data files: refused when the data loads, one line naming the dataset, split and fix ------
def _medmnist_file(root, *, images=None, labels=None, sizes=(40, 20, 20)):
    """A small BreastMNIST-shaped file; `images` / `labels` (split → array) replace the good ones."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        label = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
        arrays[f"{split}_images"] = rng.integers(0, 255, size=(n, 28, 28)).astype(np.uint8)
        arrays[f"{split}_labels"] = label
    for split, value in (images or {}).items():
        arrays[f"{split}_images"] = value
    for split, value in (labels or {}).items():
        arrays[f"{split}_labels"] = value
    (root / "medmnist").mkdir(parents=True, exist_ok=True)
    np.savez(root / "medmnist" / "breastmnist.npz", **arrays)
    return root


def _bad_data_cases():
    import numpy as np

    rng = np.random.default_rng(1)
    unit = rng.random((20, 28, 28)).astype(np.float32)  # float images in [0, 1]
    return [
        ("float images in [0, 1]", {"images": {"val": unit}}, ["split val", "dtype float32", "uint8"]),
        ("NaN in test images", {"images": {"test": np.where(unit > 0.5, np.nan, unit)}}, ["split test", "uint8"]),
        ("int64 images beyond 255", {"images": {"train": (rng.integers(0, 76500, (40, 28, 28)))}},
         ["split train", "int64"]),
        ("float labels 0.5 / 1.5", {"labels": {"train": (np.arange(40) % 2 + 0.5).reshape(40, 1)}},
         ["train_labels", "non-integral"]),
        ("single-class validation split", {"labels": {"val": np.zeros((20, 1), np.uint8)}},
         ["split val", "two classes"]),
        ("labels shorter than images", {"labels": {"test": (np.arange(10) % 2).reshape(10, 1).astype(np.uint8)}},
         ["split test", "10 labels for 20 images"]),
        ("a one-image training split", {"images": {"train": np.zeros((1, 28, 28), np.uint8)},
                                        "labels": {"train": np.zeros((1, 1), np.uint8)}}, ["split train", "at least 2"]),
    ]


@pytest.mark.parametrize("case", _bad_data_cases(), ids=[c[0] for c in _bad_data_cases()])
def test_bad_data_is_refused_in_one_line(case, tmp_path, capsys, monkeypatch):
    _, bad, words = case
    monkeypatch.delenv("DKBENCH_TRACEBACK", raising=False)
    data = _medmnist_file(tmp_path / "data", **bad)
    code = main(["train", "dataset=breastmnist", "backbone=tinycnn", "trainer.max_epochs=1", "ui.progress_bar=false",
                 f"paths.root_dir={tmp_path}", f"paths.data_dir={data}"])
    err = capsys.readouterr().err
    message = [line for line in err.strip().splitlines() if line.startswith("dkbench ")]
    assert code == 2 and len(message) == 1 and "Traceback" not in err, err
    assert "breastmnist" in message[0]
    for word in words:
        assert word in message[0], (word, message[0])
