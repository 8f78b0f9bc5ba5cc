"""Bad input through the real command line, in process: each case must be refused with a short
message that names the setting and the fix, a non-zero exit status, no traceback, and nothing
written (no run folder, nothing outside the runs folder). The start of issue 12's corpus."""

from __future__ import annotations

import os

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
    ("publish beside compare", ["report", "suite=smoke", "compare=smoke@tuned", "publish=docs"], 2,
     ["publish=", "drop compare="]),
    # settings that used to fail late (after imports and data loading), with a traceback, or never
    ("epochs not a number", ["train", "trainer.max_epochs=abc"], 2, ["trainer.max_epochs='abc'", "whole number"]),
    ("two devices", ["train", "trainer.devices=2"], 2, ["trainer.devices=2", "one device", "hydra/launcher=gpu_pack"]),
    ("a list of devices", ["train", "trainer.devices=[0,1]"], 2, ["trainer.devices=[0, 1]", "one cell per GPU"]),
    ("a DDP strategy", ["train", "+trainer.strategy=ddp"], 2, ["trainer.strategy=ddp", "one cell per GPU"]),
    ("two nodes", ["train", "+trainer.num_nodes=2"], 2, ["trainer.num_nodes=2", "one node"]),
    ("a key the config lacks", ["train", "trainer.num_nodes=2"], 2, ["trainer.num_nodes", "+trainer.num_nodes=2"]),
    ("negative seed", ["train", "seed=-1"], 2, ["seed=-1", "0 to 2**32-1"]),
    ("on_device typo", ["train", "data.on_device=maybe"], 2, ["data.on_device='maybe'", "true, false or auto"]),
    ("monitor mode typo", ["train", "monitor.mode=median"], 2, ["monitor.mode='median'", "min or max"]),
    ("checkpoint every 0 epochs", ["train", "checkpoint.last_every_n_epochs=0"], 2,
     ["checkpoint.last_every_n_epochs=0", "≥ 1"]),
    ("speed flag not a boolean", ["train", "speed.compile=maybe"], 2, ["speed.compile", "true or false"]),
    ("weights file missing", ["train", "backbone.weights=/nonexistent/w.pt"], 2,
     ["/nonexistent/w.pt", "backbone.weights=null"]),
    ("unknown dataset", ["train", "dataset=nosuchdataset"], 2, ["dataset=nosuchdataset", "valid names", "probe"]),
    ("unknown backbone", ["train", "backbone=nosuchnet"], 2, ["backbone=nosuchnet", "resnet18_28"]),
    ("unknown strategy", ["train", "strategy=nosuchidea"], 2, ["strategy=nosuchidea", "baseline"]),
    ("malformed override", ["train", "trainer.max_epochs=["], 2, ["malformed override", "key=value"]),
    ("backbone name with ..", ["train", "backbone.name=../x"], 2, ["backbone.name", "no '..'"]),
    ("suite name with a separator", ["train", "suite_name=a/b"], 2, ["suite_name", "path separators"]),
    ("tag that is ..", ["train", "tag=.."], 2, ["tag="]),
    ("learning rate not a number", ["train", "model.optimizer.lr=abc"], 2, ["model.optimizer.lr='abc'"]),
    ("fractional batch size", ["train", "data.batch_size=1.5"], 2, ["data.batch_size=1.5", "whole number"]),
    ("probe option out of range", ["train", "dataset.options.signal=2"], 2, ["signal", "[0, 1]"]),
    ("unknown probe option", ["train", "+dataset.options.bogus=2"], 2, ["bogus", "valid"]),
    ("unknown suite in a sweep", ["sweep", "suite=nosuchsuite"], 2, ["suite=nosuchsuite", "valid names", "smoke"]),
    ("unknown suite in a report", ["report", "suite=nosuchsuite"], 2, ["suite=nosuchsuite", "smoke"]),
    ("sweep axis dataset that does not exist", ["sweep", "suite=smoke", "suite.datasets=[nosuchdataset]"], 2,
     ["nosuchdataset"]),
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


def _one_line_refusal(capsys, code: int) -> str:
    err = capsys.readouterr().err
    message = [line for line in err.strip().splitlines() if line.startswith("dkbench ")]
    assert code == 2 and len(message) == 1 and "Traceback" not in err, err
    return message[0]


#: (id, overrides, words): data that is absent or set up wrongly, refused before any folder exists
DATA_CASES = [
    ("MedMNIST file missing", ["dataset=breastmnist", "paths.data_dir={nowhere}"],
     ["breastmnist.npz", "not found", "DKBENCH_DATA", "download=true"]),
    ("BUSI file missing", ["dataset=busi", "paths.data_dir={nowhere}"], ["busi/busi_128.npz", "To obtain it"]),
    ("Kvasir-SEG file missing", ["dataset=kvasir_seg", "backbone=unet", "paths.data_dir={nowhere}"],
     ["kvasir_seg_128.npz", "DKBENCH_DATA"]),
    ("data root is a file", ["dataset=breastmnist", "paths.data_dir={a_file}"], ["not found", "paths.data_dir"]),
    ("MedMNIST size that does not exist", ["dataset=breastmnist", "dataset.size=100", "paths.data_dir={data}"],
     ["dataset.size=100", "28, 64, 128, 224"]),
    ("unknown MedMNIST option", ["dataset=breastmnist", "+dataset.options.bogus=1", "paths.data_dir={data}"],
     ["bogus", "dataset.options.flag"]),
    ("unknown BUSI option", ["dataset=busi", "+dataset.options.bogus=1", "paths.data_dir={data}"],
     ["bogus", "include_normal"]),
    ("DenseNet at 28 px", ["dataset=breastmnist", "backbone=densenet121", "paths.data_dir={data}"],
     ["32px", "dataset.size=64"]),
    ("runs folder under a file", ["dataset=breastmnist", "paths.data_dir={data}", "paths.runs_dir={a_file}/runs"],
     ["paths.runs_dir", "is a file"]),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_setting_refused_before_anything_is_written(case, tmp_path, capsys, monkeypatch):
    _, overrides, words = case
    monkeypatch.delenv("DKBENCH_TRACEBACK", raising=False)
    data = _medmnist_file(tmp_path / "data")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    places = {"nowhere": tmp_path / "nowhere", "a_file": a_file, "data": data}
    argv = ["train", "backbone=tinycnn", "trainer.max_epochs=1", "ui.progress_bar=false",
            f"paths.root_dir={tmp_path}", f"paths.runs_dir={tmp_path / 'runs'}",
            *(o.format(**places) for o in overrides)]
    message = _one_line_refusal(capsys, main(argv))
    for word in words:
        assert word in message, (word, message)
    assert not (tmp_path / "runs").exists()  # refused before any run folder


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: permissions cannot refuse it")
def test_read_only_runs_folder_is_refused_in_one_line(tmp_path, capsys):
    runs = tmp_path / "ro"
    runs.mkdir()
    runs.chmod(0o555)
    message = _one_line_refusal(capsys, main(["train", *TINY, f"paths.runs_dir={runs}"]))
    assert "not writable" in message and "paths.runs_dir" in message


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
