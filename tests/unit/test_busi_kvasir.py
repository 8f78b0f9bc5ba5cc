"""BUSI and Kvasir-SEG: committed splits, readers, configs.

Tests marked `data` read the real files under DKBENCH_DATA (default ../shared/datasets) and skip
when they are absent; the others use tiny fake files in tmp_path.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dkbench.data.loading import load_dataset, spec_from_config
from dkbench.errors import RunConfigError
from dkbench.data.registry import DATASETS, MissingDataError
from dkbench.data.saved_splits import SplitMismatchError, load_split, masks_to_bbox, split_path
from dkbench.data.spec import SPLITS

REPO = Path(__file__).resolve().parents[2]
FILES = {"busi": "busi/busi_128.npz", "kvasir_seg": "kvasir_seg/kvasir_seg_128.npz"}
SPLIT_OF = {"busi": "busi", "busi_binary": "busi", "busi_seg": "busi", "kvasir_seg": "kvasir_seg"}


def config(name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / "dataset" / f"{name}.yaml").read_text())


def npz_path(data_dir: Path, split_name: str) -> Path:
    path = data_dir / FILES[split_name]
    if not path.is_file():
        pytest.skip(f"{path} not found; set DKBENCH_DATA to the shared datasets folder to run this test")
    return path


_cache: dict[Path, dict[str, np.ndarray]] = {}


def npz(path: Path) -> dict[str, np.ndarray]:
    if path not in _cache:
        with np.load(path) as z:
            _cache[path] = {k: z[k] for k in z.files}
    return _cache[path]


_loaded: dict[str, object] = {}


def loaded(name: str, data_dir: Path, **override):
    key = f"{name}{sorted(override.items())}"
    if key not in _loaded:
        npz_path(data_dir, SPLIT_OF[name])
        cfg = config(name)
        cfg["options"] = {**(cfg.get("options") or {}), **override}
        _loaded[key] = load_dataset(cfg, data_dir)
    return _loaded[key]


# ----------------------------------------------------------------------------- split files
@pytest.mark.data
@pytest.mark.parametrize("name", ["busi", "kvasir_seg"])
def test_split_partitions_every_id_once(name, data_dir):
    """train/val/test/excluded are disjoint and cover every id of the npz exactly once; only the
    members of cross-label duplicate groups are excluded."""
    ids = npz(npz_path(data_dir, name))["ids"].astype(str).tolist()
    doc = load_split(name)
    listed = [i for s in (*SPLITS, "excluded") for i in doc[s]]
    assert len(listed) == len(set(listed)), "an id is listed twice"
    assert sorted(listed) == sorted(ids)
    assert sorted(doc["excluded"]) == sorted(i for g in doc["cross_label_groups"] for i in g)
    assert doc["source_sha256"] and doc["seed"] == 0 and doc["method"].endswith(".")
    assert doc["counts"]["excluded"] == len(doc["excluded"])
    assert [doc["counts"][s] for s in SPLITS] == [len(doc[s]) for s in SPLITS]


@pytest.mark.parametrize("name", ["busi", "kvasir_seg"])
def test_every_group_lies_in_one_split(name):
    doc = load_split(name)
    where = {i: s for s in SPLITS for i in doc[s]}
    assert doc["groups"], "no duplicate groups recorded"
    for group in doc["groups"]:
        assert len(group) >= 2
        assert len({where[i] for i in group}) == 1, f"group {group} is split across {[where[i] for i in group]}"
    flat = [i for g in doc["groups"] for i in g]
    assert len(flat) == len(set(flat)), "groups overlap (union-find should have merged them)"


def test_readme_pairs_are_grouped():
    for name, pairs in {
        "busi": [("benign (433)", "malignant (145)"), ("normal (51)", "normal (54)"),
                 ("malignant (18)", "malignant (116)")],
        "kvasir_seg": [("cju30bmab08bi0835mvlr6e0r", "cju77k828z46w0871r0avuoo9")],
    }.items():
        doc = load_split(name)
        groups = [set(g) for g in doc["groups"] + doc["cross_label_groups"]]
        for a, b in pairs:
            assert any({a, b} <= g for g in groups), f"{a}/{b} not grouped in {name}.json"


@pytest.mark.data
def test_busi_class_ratios_close_to_overall(data_dir):
    z = npz(npz_path(data_dir, "busi"))
    label = dict(zip(z["ids"].astype(str).tolist(), z["labels"].tolist()))
    overall = np.bincount(z["labels"], minlength=3) / len(z["labels"])
    doc = load_split("busi")
    n_split = sum(len(doc[s]) for s in SPLITS)
    sizes = {s: len(doc[s]) / n_split for s in SPLITS}
    assert sizes == pytest.approx({"train": 0.7, "val": 0.1, "test": 0.2}, abs=0.01)
    for s in SPLITS:
        frac = np.bincount([label[i] for i in doc[s]], minlength=3) / len(doc[s])
        assert np.abs(frac - overall).max() <= 0.03, f"{s}: class fractions {frac} vs overall {overall}"


def test_kvasir_split_sizes():
    doc = load_split("kvasir_seg")
    assert [len(doc[s]) for s in SPLITS] == [800, 100, 100]


@pytest.mark.data
def test_make_splits_is_deterministic(data_dir, tmp_path):
    npz_path(data_dir, "busi"), npz_path(data_dir, "kvasir_seg")
    spec = importlib.util.spec_from_file_location("make_splits", REPO / "scripts" / "make_splits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.write_splits(data_dir, tmp_path)
    for name, path in written.items():
        assert path.read_bytes() == split_path(name).read_bytes(), (
            f"re-running make_splits gives a different {name}.json"
        )


# ----------------------------------------------------------------------------- readers
def busi_total(data_dir: Path, lesions_only: bool) -> int:
    """BUSI images in some split: all (or all lesion) images minus the excluded ones."""
    z = npz(npz_path(data_dir, "busi"))
    excluded = set(load_split("busi")["excluded"])
    keep = [i for i, lab in zip(z["ids"].astype(str), z["labels"]) if i not in excluded and (lab or not lesions_only)]
    return len(keep)


@pytest.mark.data
@pytest.mark.parametrize(
    "name, n_chans, labels, total",
    [("busi", 1, {0, 1, 2}, "all"), ("busi_binary", 1, {0, 1}, "lesion"), ("kvasir_seg", 3, None, 1000),
     ("busi_seg", 1, None, "lesion")],
)
def test_reader_shapes_and_dtypes(name, n_chans, labels, total, data_dir):
    arrays = loaded(name, data_dir)
    if isinstance(total, str):
        total = busi_total(data_dir, lesions_only=total == "lesion")
        assert arrays.notes["split_excluded"] == 19 and total in (761, 630)
    assert name in DATASETS
    assert arrays.checksum == load_split(SPLIT_OF[name])["source_sha256"]
    assert arrays.notes["split_file"] == f"{SPLIT_OF[name]}.json" and arrays.notes["split_method"]
    assert sum(len(s) for s in arrays.splits.values()) == total
    for split in arrays.splits.values():
        n = len(split)
        assert split.image.dtype == np.uint8 and split.image.shape == (n, n_chans, 128, 128)
        mask, bbox = split.extras["mask"], split.extras["bbox"]
        assert mask.dtype == np.uint8 and mask.shape == (n, 1, 128, 128) and mask.max() <= 1
        assert bbox.dtype == np.float32 and bbox.shape == (n, 4)
        if labels is None:  # segmentation: the label is the mask
            assert split.label.dtype == np.uint8 and split.label.shape == (n, 1, 128, 128)
            np.testing.assert_array_equal(split.label, mask)
            assert (mask.reshape(n, -1).max(1) == 1).all(), "a lesion/polyp image has an empty mask"
        else:
            assert split.label.shape == (n,) and set(np.unique(split.label)) <= labels
            assert split.extras["text"].shape == (n,)
            assert arrays.notes["label_derived"] == ["text"]
            assert any("never use them as model input" in w for w in arrays.notes["warnings"])


@pytest.mark.data
def test_busi_binary_drops_normal_and_keeps_split(data_dir):
    three, binary = loaded("busi", data_dir), loaded("busi_binary", data_dir)
    for s in SPLITS:
        assert not any(i.startswith("normal") for i in binary.splits[s].ids)
        keep = three.splits[s].label != 0
        np.testing.assert_array_equal(binary.splits[s].ids, three.splits[s].ids[keep])
        np.testing.assert_array_equal(binary.splits[s].label, three.splits[s].label[keep] - 1)
        assert set(binary.splits[s].label.tolist()) == {0, 1}
    assert spec_from_config(config("busi_binary")).class_names == ("benign", "malignant")


@pytest.mark.data
def test_busi_include_normal_options(data_dir):
    seg = loaded("busi_seg", data_dir, include_normal=True)
    assert sum(len(s) for s in seg.splits.values()) == busi_total(data_dir, lesions_only=False)
    no_normal = loaded("busi", data_dir, include_normal=False)
    assert sum(len(s) for s in no_normal.splits.values()) == busi_total(data_dir, lesions_only=True)
    with pytest.raises(RunConfigError, match="unknown option"):
        loaded("busi_binary", data_dir, include_normal=True)


@pytest.mark.data
@pytest.mark.parametrize("name", ["busi", "kvasir_seg"])
def test_bbox_matches_mask_extent(name, data_dir):
    for split in loaded(name, data_dir).splits.values():
        for m, box in zip(split.extras["mask"][:, 0], split.extras["bbox"]):
            ys, xs = np.nonzero(m)
            if len(ys) == 0:
                assert np.isnan(box).all()
            else:
                assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_masks_to_bbox_small_cases():
    m = np.zeros((3, 1, 5, 6), np.uint8)
    m[1, 0, 2, 3] = 1
    m[2, 0, 0:5, 1:6] = 1
    box = masks_to_bbox(m)
    assert np.isnan(box[0]).all()
    assert box[1].tolist() == [3, 2, 4, 3] and box[2].tolist() == [1, 0, 6, 5]


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name, file", [("busi", "busi/busi_128.npz"), ("busi_seg", "busi/busi_128.npz"),
                                        ("kvasir_seg", "kvasir_seg/kvasir_seg_128.npz")])
def test_missing_file_error_names_path_and_env(name, file, tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_dataset(config(name), tmp_path)
    msg = str(err.value)
    assert str(tmp_path / file) in msg and "DKBENCH_DATA" in msg and "To obtain it" in msg


def _fake_npz(path: Path, ids: list[str], rgb: bool = False) -> None:
    n = len(ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (n, 128, 128, 3) if rgb else (n, 128, 128)
    np.savez(
        path,
        images=np.zeros(shape, np.uint8),
        masks=np.zeros((n, 128, 128), np.uint8),
        labels=np.arange(n) % 3,
        ids=np.array(ids),
        captions=np.array(["x"] * n),
    )


@pytest.mark.parametrize("name, file, rgb", [("busi", "busi/busi_128.npz", False),
                                             ("kvasir_seg", "kvasir_seg/kvasir_seg_128.npz", True)])
def test_split_mismatch_error_names_both_files(name, file, rgb, tmp_path):
    _fake_npz(tmp_path / file, [*load_split(SPLIT_OF[name])["test"][:2], "not-in-split"], rgb)
    with pytest.raises(SplitMismatchError) as err:
        load_dataset(config(name), tmp_path)
    msg = str(err.value)
    assert str(tmp_path / file) in msg and f"{SPLIT_OF[name]}.json" in msg
    assert "scripts/make_splits.py" in msg
    assert "1 id(s) of the data file are in no split" in msg and "not in the data file" in msg


def test_split_mismatch_when_npz_lacks_ids(tmp_path):
    """All npz ids are in the split, but most of the split's ids are missing from the npz."""
    ids = load_split("busi")["train"][:5]
    _fake_npz(tmp_path / "busi/busi_128.npz", ids)
    with pytest.raises(SplitMismatchError, match=r"id\(s\) of the split file are not in the data file"):
        load_dataset(config("busi"), tmp_path)


def test_excluded_ids_belong_to_no_split():
    """An id under 'excluded' matches the data file but is in no split; an id in neither fails."""
    from dkbench.data.saved_splits import split_indices

    doc = {"dataset": "x", "train": ["a", "b"], "val": ["c"], "test": ["d"], "excluded": ["e"]}
    idx = split_indices(np.array(["e", "d", "c", "b", "a"]), doc, data_path="x.npz")
    assert {k: v.tolist() for k, v in idx.items()} == {"train": [3, 4], "val": [2], "test": [1]}
    with pytest.raises(SplitMismatchError, match="1 id\\(s\\) of the data file are in no split"):
        split_indices(np.array(["a", "b", "c", "d", "e", "f"]), doc, data_path="x.npz")


def test_non_binary_masks_rejected(tmp_path):
    path = tmp_path / "kvasir_seg/kvasir_seg_128.npz"
    _fake_npz(path, ["a"], rgb=True)
    z = dict(np.load(path))
    z["masks"] = np.full((1, 128, 128), 255, np.uint8)
    np.savez(path, **z)
    with pytest.raises(ValueError, match="not binary"):
        load_dataset(config("kvasir_seg"), tmp_path)


def test_configs_match_schema():
    for name in ("busi", "busi_binary", "busi_seg", "kvasir_seg"):
        cfg = config(name)
        assert cfg["name"] == cfg["reader"] == name and cfg["size"] == 128
        spec = spec_from_config(cfg)
        assert len(spec.class_names) == spec.num_classes
        assert spec.source == ("kvasir_seg" if name == "kvasir_seg" else "busi")
    assert config("busi")["options"] == {"include_normal": True}
    assert config("busi_seg")["options"] == {"include_normal": False}
    assert json.loads(split_path("busi").read_text())["dataset"] == "busi"
