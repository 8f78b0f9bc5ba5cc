"""Generic readers configured by YAML alone (`npz`, `folder`) and YAML-declared splits
(`dkbench.data.yaml_split`), on tiny fixtures written here: 16×16 PNGs + a CSV, small .npz files.
No real data is read."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dkbench.data.loading import load_dataset
from dkbench.data.registry import MissingDataError
from dkbench.data.spec import SPLITS
from dkbench.data.yaml_split import SplitSettings, assign_splits, split_key
from dkbench.errors import InvalidDataError, RunConfigError

REPO = Path(__file__).resolve().parents[2]
SIZE = 16
CLASSES = ["nevus", "melanoma"]
# 16 rows, 8 patients of 2 images; (image, label, age, sex, patient, biopsy). Age '' and sex
# 'unknown' are missing cells; biopsy is label-derived (the YAML says so): it must never be read.
ROWS = [
    (f"img{i:02d}", CLASSES[(i // 2) % 2], "" if i == 3 else str(30 + i), "unknown" if i == 5 else ("male", "female")[i % 2],
     f"P{i // 2}", "yes" if (i // 2) % 2 else "no")
    for i in range(16)
]


# --- fixtures --------------------------------------------------------------------------------
def write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def square_mask(i: int) -> np.ndarray:
    """A lesion square whose place depends on the row, so a mask read for the wrong row shows."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[i % 8: i % 8 + 6, 2:8] = 255
    return mask


def write_folder(root: Path, rows=ROWS, *, masks: bool = True, extra_columns: dict[str, list[str]] | None = None) -> Path:
    """`root/my_images/` with one RGB PNG per row, `labels.csv` and (optionally) `masks/<id>.png`."""
    folder = root / "my_images"
    header = ["image", "label", "age", "sex", "patient_id", "biopsy", *(extra_columns or {})]
    lines = []
    for i, (name, label, age, sex, patient, biopsy) in enumerate(rows):
        level = 200 if label == "melanoma" else 60
        write_png(folder / f"{name}.png", np.full((SIZE, SIZE, 3), (level, i * 10, 5), np.uint8))
        if masks:
            write_png(folder / "masks" / f"{name}.png", square_mask(i))
        lines.append([f"{name}.png", label, age, sex, patient, biopsy, *(v[i] for v in (extra_columns or {}).values())])
    with open(folder / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *lines])
    return folder


def folder_config(**options) -> dict:
    """The example YAML with the given options merged over its own (None drops an option)."""
    cfg = yaml.safe_load((REPO / "configs/dataset/example_folder.yaml").read_text())
    cfg.update({"num_classes": 2, "class_names": CLASSES, "size": SIZE, "name": "mine"})
    merged = {**cfg["options"], "csv": "my_images/labels.csv", **options}
    cfg["options"] = {k: v for k, v in merged.items() if v is not None}
    return cfg


def npz_config(**changes) -> dict:
    cfg = yaml.safe_load((REPO / "configs/dataset/example_npz.yaml").read_text())
    cfg.update({"size": SIZE, "name": "arrays"})
    options = changes.pop("options", {})
    cfg.update(changes)
    cfg["options"] = {**cfg["options"], "file": "my_npz/arrays.npz", **options}
    return cfg


def write_npz(root: Path, **arrays) -> Path:
    path = root / "my_npz" / "arrays.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def binary_arrays(n: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 100, size=(n, SIZE, SIZE)).astype(np.uint8)
    x[y == 1] += 100
    return {"x": x, "y": y}


def by_id(arrays, key: str | None = None) -> dict[str, np.ndarray]:
    out = {}
    for split in arrays.splits.values():
        values = split.label if key is None else split.extras[key]
        out.update(zip(split.ids.tolist(), values))
    return out


# --- folder reader -----------------------------------------------------------------------------
def test_folder_reads_images_labels_metadata_with_missing_values_and_a_split(tmp_path):
    write_folder(tmp_path)
    arrays = load_dataset(folder_config(), tmp_path)
    assert arrays.spec.provides == {"metadata"}
    assert sum(len(s) for s in arrays.splits.values()) == 16
    ids = [i for s in arrays.splits.values() for i in s.ids.tolist()]
    assert sorted(ids) == sorted(r[0] for r in ROWS)  # every row once, id = file name without extension
    train = arrays.splits["train"]
    assert train.image.shape[1:] == (3, SIZE, SIZE) and train.image.dtype == np.uint8
    labels = by_id(arrays)
    assert all(labels[name] == CLASSES.index(label) for name, label, *_ in ROWS)
    first = dict(zip(train.ids.tolist(), train.image))[train.ids[0]]
    row = [r for r in ROWS if r[0] == train.ids[0]][0]
    assert first[0, 0, 0] == (200 if row[1] == "melanoma" else 60)  # pixels of that row's file

    assert arrays.notes["metadata_names"] == ["age", "age_missing", "sex=female", "sex=male"]
    meta = by_id(arrays, "metadata")
    assert np.isnan(meta["img03"][0]) and meta["img03"][1] == 1.0  # missing age: NaN + indicator
    assert meta["img04"][0] == 34.0 and meta["img04"][1] == 0.0
    np.testing.assert_array_equal(meta["img05"][2:], [0.0, 0.0])  # sex 'unknown': all-zero one-hot
    np.testing.assert_array_equal(meta["img02"][2:], [0.0, 1.0])  # male

    notes = arrays.notes
    assert len(notes["split_hash"]) == 64 and Path(notes["split_file"]).is_file()
    assert Path(notes["split_file"]).parent == tmp_path / "my_images" / ".dkbench_splits"
    saved = json.loads(Path(notes["split_file"]).read_text())
    assert {s: sorted(saved[s]) for s in SPLITS} == {s: sorted(arrays.splits[s].ids.tolist()) for s in SPLITS}


def test_folder_grey_images_masks_and_attributes(tmp_path):
    network = ["typical", "atypical", "", "absent"] * 4
    write_folder(tmp_path, extra_columns={"network": network})
    cfg = folder_config(mask_dir="my_images/masks", attributes=["network"], metadata=None)
    cfg.update({"in_chans": 1, "provides": ["mask", "bbox", "attributes"]})
    arrays = load_dataset(cfg, tmp_path)
    assert arrays.spec.provides == {"mask", "bbox", "attributes"}
    split = arrays.splits["train"]
    assert split.image.shape[1:] == (1, SIZE, SIZE) and "metadata" not in split.extras
    masks = by_id(arrays, "mask")
    i = 6
    np.testing.assert_array_equal(masks[f"img{i:02d}"][0], square_mask(i) // 255)  # the row's own mask
    boxes = by_id(arrays, "bbox")
    np.testing.assert_array_equal(boxes[f"img{i:02d}"], [2, i % 8, 8, i % 8 + 6])
    assert arrays.notes["attribute_coding"] == {"network": ["absent", "atypical", "typical"]}
    codes = by_id(arrays, "attributes")
    assert [int(codes[f"img{i:02d}"][0]) for i in range(4)] == [2, 1, -1, 0]  # '' → -1 (ignored)


def test_folder_segmentation_uses_the_masks_as_label(tmp_path):
    write_folder(tmp_path)
    cfg = folder_config(mask_dir="my_images/masks", metadata=None, label_column=None)
    cfg.update({"task": "segmentation", "num_classes": 2, "class_names": ["background", "lesion"],
                "provides": ["mask", "bbox"], "label_derived": []})
    arrays = load_dataset(cfg, tmp_path)
    split = arrays.splits["val"]
    assert split.label.shape == (len(split), 1, SIZE, SIZE)
    np.testing.assert_array_equal(split.label, split.extras["mask"])
    assert arrays.notes["split_stratified_by_label"] is False


def test_split_column_of_the_csv(tmp_path):
    given = ["train"] * 8 + ["val"] * 4 + ["test"] * 4
    write_folder(tmp_path, extra_columns={"split": given}, masks=False)
    arrays = load_dataset(folder_config(split=None, split_column="split"), tmp_path)
    assert arrays.splits["val"].ids.tolist() == [f"img{i:02d}" for i in range(8, 12)]
    assert arrays.notes["split_file"] is None and len(arrays.notes["split_hash"]) == 64
    write_folder(tmp_path / "bad", extra_columns={"split": ["train"] * 15 + ["valid"]}, masks=False)
    with pytest.raises(InvalidDataError, match=r"split names \['valid'\].*one of \['train', 'val', 'test'\]"):
        load_dataset(folder_config(split=None, split_column="split"), tmp_path / "bad")


def test_label_derived_column_never_reaches_a_strategy(tmp_path):
    """`biopsy` (label_derived in the YAML) is in the CSV: no extra, no metadata column, no batch
    key carries it, and declaring it as metadata or an attribute is refused."""
    from dkbench.data.datamodule import DKDataModule

    write_folder(tmp_path, masks=False)
    cfg = folder_config(metadata={"age": "numeric", "sex": "categorical", "patient_id": "categorical"})
    arrays = load_dataset(cfg, tmp_path)
    assert arrays.spec.label_derived == {"biopsy"}
    assert not any("biopsy" in name for name in arrays.notes["metadata_names"])
    assert arrays.splits["train"].extras["metadata"].shape[1] == len(arrays.notes["metadata_names"])
    batch = DKDataModule(arrays, batch_size=4, exclude=arrays.spec.label_derived).datasets["train"].__getitems__([0, 1])
    assert set(batch) == {"image", "label", "metadata", "index", "id"}
    # biopsy is "yes" exactly for melanoma: had it leaked, a metadata column would equal the label
    meta = np.concatenate([s.extras["metadata"] for s in arrays.splits.values()])
    labels = np.concatenate([s.label for s in arrays.splits.values()])
    assert not any(np.array_equal(np.nan_to_num(meta[:, j]), labels) for j in range(meta.shape[1]))
    with pytest.raises(RunConfigError, match=r"\['biopsy'\] listed under label_derived.*cannot be metadata"):
        load_dataset(folder_config(metadata={"biopsy": "categorical"}), tmp_path)
    with pytest.raises(RunConfigError, match=r"\['biopsy'\] listed under label_derived.*cannot be attributes"):
        load_dataset(folder_config(attributes=["biopsy"]), tmp_path)


# --- errors of the folder reader ------------------------------------------------------------------
def test_folder_missing_column_is_named(tmp_path):
    write_folder(tmp_path, masks=False)
    with pytest.raises(InvalidDataError, match=r"labels.csv: no column\(s\) \['diagnosis'\] \(the CSV has \['image'"):
        load_dataset(folder_config(label_column="diagnosis"), tmp_path)
    with pytest.raises(InvalidDataError, match=r"no column\(s\) \['weight'\]"):
        load_dataset(folder_config(metadata={"weight": "numeric"}), tmp_path)


def test_folder_missing_mask_is_named_before_reading(tmp_path):
    folder = write_folder(tmp_path)
    (folder / "masks" / "img07.png").unlink()
    cfg = folder_config(mask_dir="my_images/masks")
    cfg["provides"] = ["mask", "bbox", "metadata"]
    with pytest.raises(MissingDataError, match=r"mask of row 9 of labels.csv not found at .*masks/img07.png"):
        load_dataset(cfg, tmp_path)
    (folder / "img02.png").unlink()
    with pytest.raises(MissingDataError, match=r"image of row 4 of labels.csv not found at .*img02.png"):
        load_dataset(folder_config(), tmp_path)


def test_folder_bad_cells_and_options_are_refused_in_one_line(tmp_path):
    rows = [(*r[:2], "sixty" if r[0] == "img04" else r[2], *r[3:]) for r in ROWS]
    write_folder(tmp_path, rows, masks=False)
    with pytest.raises(InvalidDataError, match=r"row 6: age='sixty' is not a number"):
        load_dataset(folder_config(), tmp_path)
    write_folder(tmp_path / "b", [(r[0], "lentigo" if r[0] == "img01" else r[1], *r[2:]) for r in ROWS], masks=False)
    with pytest.raises(InvalidDataError, match=r"row 3: label 'lentigo'.*class_names \['nevus', 'melanoma'\]"):
        load_dataset(folder_config(), tmp_path / "b")
    cfg = folder_config()
    cfg["provides"] = ["metadata", "mask"]
    with pytest.raises(RunConfigError, match=r"provides lists \['mask'\] but dataset.options configure no such data"):
        load_dataset(cfg, tmp_path)
    with pytest.raises(RunConfigError, match=r"unknown option\(s\) \['masks'\]"):
        load_dataset(folder_config(masks="x"), tmp_path)
    with pytest.raises(RunConfigError, match=r"metadata column types \{'age': 'number'\}"):
        load_dataset(folder_config(metadata={"age": "number"}), tmp_path)
    with pytest.raises(RunConfigError, match=r"split.ratios=\[0.5, 0.5\]"):
        load_dataset(folder_config(split={"ratios": [0.5, 0.5]}), tmp_path)


# --- YAML splits ------------------------------------------------------------------------------
def test_grouped_split_keeps_groups_together_is_stratified_and_deterministic():
    rng = np.random.default_rng(3)
    group_sizes = rng.integers(1, 6, size=120)
    groups = np.repeat([f"patient{g}" for g in range(120)], group_sizes)
    labels = np.repeat(rng.integers(0, 3, size=120), group_sizes)  # one label per patient
    settings = SplitSettings(ratios=(0.7, 0.15, 0.15), stratify=True, group_by="patient", seed=0)
    split = assign_splits(labels, groups, settings)
    for g in np.unique(groups):
        assert len(set(split[groups == g].tolist())) == 1, g  # every patient in one split
    shares = np.bincount(split, minlength=3) / len(split)
    np.testing.assert_allclose(shares, [0.7, 0.15, 0.15], atol=0.03)
    for label in range(3):  # each class split close to the ratios too
        np.testing.assert_allclose(np.bincount(split[labels == label], minlength=3) / (labels == label).sum(),
                                   [0.7, 0.15, 0.15], atol=0.06)
    np.testing.assert_array_equal(split, assign_splits(labels, groups, settings))  # deterministic
    other = assign_splits(labels, groups, SplitSettings(group_by="patient", seed=1))
    assert not np.array_equal(split, other)  # the seed matters
    ids = [f"id{i}" for i in range(len(groups))]
    assert split_key(ids, labels, groups, settings) == split_key(ids, labels, groups, settings)
    assert split_key(ids, labels, groups, settings) != split_key(ids, labels[::-1], groups, settings)
    assert split_key(ids, labels, groups, settings) == split_key(
        ids, labels, groups, SplitSettings(group_by="patient", save_dir="/elsewhere"))  # where it is saved: no


def test_small_strata_still_reach_every_split():
    groups = [f"g{i}" for i in range(6)]
    split = assign_splits(np.array([0, 0, 0, 1, 1, 1]), groups, SplitSettings())
    for label_rows in (split[:3], split[3:]):
        assert sorted(label_rows.tolist()) == [0, 1, 2]


def test_folder_grouped_split_is_saved_once_and_reused(tmp_path):
    write_folder(tmp_path, masks=False)
    first = load_dataset(folder_config(), tmp_path)
    for split in first.splits.values():
        patients = {r[4] for r in ROWS if r[0] in set(split.ids.tolist())}
        assert all(r[0] in set(split.ids.tolist()) for r in ROWS if r[4] in patients)  # whole patients
    path = Path(first.notes["split_file"])
    stamp = path.stat().st_mtime_ns
    again = load_dataset(folder_config(), tmp_path)
    assert path.stat().st_mtime_ns == stamp and again.notes["split_hash"] == first.notes["split_hash"]
    assert all(np.array_equal(again.splits[s].ids, first.splits[s].ids) for s in SPLITS)
    # a saved file is what is used: edited by hand (val and test swapped), the run follows it
    doc = json.loads(path.read_text())
    doc["val"], doc["test"] = doc["test"], doc["val"]
    path.write_text(json.dumps(doc))
    swapped = load_dataset(folder_config(), tmp_path)
    assert sorted(swapped.splits["val"].ids) == sorted(first.splits["test"].ids)
    doc["test"] = doc["test"][1:]
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidDataError, match="does not list this data's sample ids.*delete it"):
        load_dataset(folder_config(), tmp_path)
    other = load_dataset(folder_config(split={"seed": 1, "group_by": "patient_id"}), tmp_path)
    assert other.notes["split_hash"] != first.notes["split_hash"] and Path(other.notes["split_file"]) != path


def test_split_save_dir_and_unwritable_folder(tmp_path):
    write_folder(tmp_path, masks=False)
    moved = load_dataset(folder_config(split={"group_by": "patient_id", "save_dir": "splits_here"}), tmp_path)
    assert Path(moved.notes["split_file"]).parent == tmp_path / "splits_here"
    (tmp_path / "blocked").write_text("a file where the folder would go")
    kept = load_dataset(folder_config(split={"group_by": "patient_id", "save_dir": "blocked/sub"}), tmp_path)
    assert kept.notes["split_file"] is None and any("split not saved" in w for w in kept.notes["warnings"])
    assert all(np.array_equal(kept.splits[s].ids, moved.splits[s].ids) for s in SPLITS)


# --- npz reader -------------------------------------------------------------------------------
def test_npz_one_array_set_with_a_grouped_yaml_split(tmp_path):
    arrays_in = binary_arrays(40)
    groups = np.repeat(np.arange(20), 2).astype(str)
    arrays_in["y"] = np.repeat(np.arange(20) % 2, 2)  # one label per group
    write_npz(tmp_path, **arrays_in, patient=groups)
    cfg = npz_config(options={"split": {"ratios": [0.6, 0.2, 0.2], "stratify": True, "group_by": "patient", "seed": 0}})
    arrays = load_dataset(cfg, tmp_path)
    assert arrays.spec.provides == frozenset()
    assert [len(arrays.splits[s]) for s in SPLITS] == [24, 8, 8]
    for split in arrays.splits.values():
        rows = split.ids.astype(int)
        assert split.image.shape[1:] == (1, SIZE, SIZE)
        np.testing.assert_array_equal(split.image[:, 0], arrays_in["x"][rows])
        np.testing.assert_array_equal(split.label, arrays_in["y"][rows])
    groups_of = {s: set(groups[split.ids.astype(int)].tolist()) for s, split in arrays.splits.items()}
    assert not (groups_of["train"] & groups_of["val"] or groups_of["train"] & groups_of["test"]
                or groups_of["val"] & groups_of["test"])  # every patient in one split
    assert Path(arrays.notes["split_file"]).parent == tmp_path / "my_npz" / ".dkbench_splits"


def test_npz_medmnist_style_split_keys_channels_last_and_text_labels(tmp_path):
    rng = np.random.default_rng(0)
    arrays_in = {}
    for split, n in zip(SPLITS, (6, 4, 4)):
        arrays_in[f"{split}_images"] = rng.integers(0, 255, size=(n, SIZE, SIZE, 3)).astype(np.uint8)
        arrays_in[f"{split}_labels"] = np.array(["negative", "positive"] * (n // 2))
    write_npz(tmp_path, **arrays_in)
    cfg = npz_config(in_chans=3, options={"keys": {"images": "{split}_images", "labels": "{split}_labels"}, "split": None})
    del cfg["options"]["split"]
    arrays = load_dataset(cfg, tmp_path)
    val = arrays.splits["val"]
    np.testing.assert_array_equal(val.image, arrays_in["val_images"].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(val.label, [0, 1, 0, 1])
    assert val.ids.tolist() == [f"val-{i:06d}" for i in range(4)]
    assert arrays.notes["split_method"].startswith("given by the file's split keys")


def test_npz_segmentation_masks_255_and_a_split_array(tmp_path):
    x = binary_arrays(12)["x"]
    m = np.zeros((12, SIZE, SIZE), np.uint8)
    m[:, 4:10, 3:9] = 255
    split = np.array(["train"] * 6 + ["val"] * 3 + ["test"] * 3)
    write_npz(tmp_path, x=x, m=m, s=split, ids=np.array([f"case{i}" for i in range(12)]))
    cfg = npz_config(task="segmentation", class_names=["background", "lesion"], provides=["mask", "bbox"],
                     options={"keys": {"images": "x", "masks": "m", "split": "s", "ids": "ids"}})
    del cfg["options"]["split"]
    arrays = load_dataset(cfg, tmp_path)
    test = arrays.splits["test"]
    assert test.ids.tolist() == ["case9", "case10", "case11"]
    assert test.label.shape == (3, 1, SIZE, SIZE) and set(np.unique(test.label)) == {0, 1}
    np.testing.assert_array_equal(test.extras["bbox"][0], [3, 4, 9, 10])


def test_npz_errors_name_the_key_and_the_fix(tmp_path):
    write_npz(tmp_path, **binary_arrays())
    with pytest.raises(InvalidDataError, match=r"no array 'labels' \(dataset.options.keys.labels\); the file holds "
                                               r"\['x', 'y'\]: set keys.labels to one of them"):
        load_dataset(npz_config(options={"keys": {"images": "x", "labels": "labels"}}), tmp_path)
    with pytest.raises(InvalidDataError, match=r"key 'x': images have shape \(24, 16, 16\); the YAML \(in_chans=3"):
        load_dataset(npz_config(in_chans=3), tmp_path)
    write_npz(tmp_path, x=binary_arrays()["x"].astype(np.float32) / 255, y=binary_arrays()["y"])
    with pytest.raises(InvalidDataError, match=r"key 'x': images have dtype float32; store uint8"):
        load_dataset(npz_config(), tmp_path)
    write_npz(tmp_path, x=binary_arrays()["x"], y=binary_arrays()["y"][:20])
    with pytest.raises(InvalidDataError, match=r"'y' has 20 rows but 'x' 24"):
        load_dataset(npz_config(), tmp_path)
    with pytest.raises(RunConfigError, match=r"keys \['labels'\] do not; name every key with \{split\}"):
        load_dataset(npz_config(options={"keys": {"images": "{split}_x", "labels": "y"}, "split": None}), tmp_path)
    with pytest.raises(RunConfigError, match=r"task segmentation needs dataset.options.keys.masks"):
        load_dataset(npz_config(task="segmentation"), tmp_path)
    with pytest.raises(MissingDataError, match=r"npz file of dataset 'arrays' \(dataset.options.file\) not found"):
        load_dataset(npz_config(options={"file": "elsewhere/none.npz"}), tmp_path)


# --- the example YAMLs and an end-to-end run --------------------------------------------------------
def test_example_yamls_list_and_compose_without_their_data():
    from omegaconf import OmegaConf

    from dkbench.listing import list_datasets
    from dkbench.runner.compose import compose_config

    listed = list_datasets()
    assert "example_npz | binary" in listed and "example_folder | multiclass" in listed
    for name in ("example_npz", "example_folder"):
        cfg = compose_config([f"dataset={name}", "backbone=tinycnn"])
        OmegaConf.to_container(cfg, resolve=True)
        with pytest.raises(MissingDataError, match="not found"):
            load_dataset(cfg.dataset, cfg.paths.data_dir + "/surely_absent")


def test_train_one_epoch_on_a_folder_dataset_from_a_user_config_dir(tmp_path, monkeypatch):
    from dkbench.config import USER_CONFIGS_ENV
    from dkbench.runner.compose import compose_config
    from dkbench.runner.train import train

    write_folder(tmp_path / "data", masks=False)
    cfg = folder_config()
    cfg["name"] = "my_lesions"
    (tmp_path / "configs" / "dataset").mkdir(parents=True)
    (tmp_path / "configs" / "dataset" / "my_lesions.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv(USER_CONFIGS_ENV, str(tmp_path / "configs"))
    run_cfg = compose_config(["dataset=my_lesions", "backbone=tinycnn", "trainer.max_epochs=1", "data.batch_size=4",
                              "ui.progress_bar=false", f"paths.root_dir={tmp_path}", f"paths.runs_dir={tmp_path / 'runs'}",
                              f"paths.data_dir={tmp_path / 'data'}"])
    metrics = train(run_cfg)
    run = Path(run_cfg.paths.run_dir)
    assert 0.0 <= metrics["test/auroc"] <= 1.0 and (run / "DONE").exists()
    meta = json.loads((run / "metadata.json").read_text())
    notes = meta["data"]["notes"]
    assert len(notes["split_hash"]) == 64 and notes["metadata_names"][0] == "age"
    assert sum(meta["data"]["split_sizes"].values()) == 16
