"""HAM10000 reader (src/dkbench/data/readers/ham10000.py): the official Dataverse layout on a tiny
synthetic fixture written here, the shared `.npz` layout built from the same fixture, the subset
rule, the codings, the label-derived `dx_type`, options and missing files.

Tests marked `data` read the real shared file under DKBENCH_DATA and skip when it is absent; no
HAM10000 pixel or row is part of this file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dkbench.data.loading import load_dataset, spec_from_config
from dkbench.data.readers import ham10000
from dkbench.data.registry import MissingDataError, check_data_files
from dkbench.data.saved_splits import SplitMismatchError, load_split, masks_to_bbox
from dkbench.data.spec import SPLITS
from dkbench.errors import InvalidDataError, RunConfigError
from tests.conftest import require_file

REPO = Path(__file__).resolve().parents[2]
SIZE = 32  # fixture grid (the YAML's 128 px is the shared file's)
HEADER = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
DX_TYPES = ("histo", "follow_up", "consensus", "confocal")


def config(**options) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / "dataset" / "ham10000.yaml").read_text())
    cfg["size"] = SIZE
    cfg["options"] = {**cfg["options"], **options}
    return cfg


# ----------------------------------------------------------------------------- the fixture
def fixture_rows() -> list[dict[str, str]]:
    """Three lesions per class; lesion 0 of each class has a second, later image (one image per
    lesion keeps the earlier). Row 0 has every metadata field missing or unknown; dx_type
    cycles so that it varies within classes (a fixed dx_type per class would equal the label)."""
    rows, n = [], 0
    for c, dx in enumerate(ham10000.CLASS_NAMES):
        for k in range(3):
            for extra in range(2 if k == 0 else 1):
                rows.append({
                    "lesion_id": f"HAM_{c}{k:06d}", "image_id": f"ISIC_{9000000 + 10 * n + 5 * extra:07d}", "dx": dx,
                    "dx_type": DX_TYPES[(n // 2) % 4], "age": f"{20 + 5 * (n % 12)}.0",
                    "sex": ("male", "female")[n % 2],
                    "localization": ham10000.LOCALIZATIONS[n % 3], "dataset": "vidir_modern",
                })
            n += 1
    rows[0].update(age="", sex="unknown", localization="unknown")
    return rows


def kept(rows: list[dict[str, str]], per_class: int) -> list[dict[str, str]]:
    """The README's rule spelled out independently of the reader."""
    first: dict[str, dict] = {}
    for r in rows:
        if r["lesion_id"] not in first or r["image_id"] < first[r["lesion_id"]]["image_id"]:
            first[r["lesion_id"]] = r
    out = []
    for dx in ham10000.CLASS_NAMES:
        lesions = sorted((r for r in first.values() if r["dx"] == dx),
                         key=lambda r: hashlib.sha1(r["lesion_id"].encode()).hexdigest())
        out += lesions[:per_class]
    return sorted(out, key=lambda r: r["image_id"])


def split_doc(rows: list[dict[str, str]]) -> dict:
    """A saved-split document for the kept rows: per class, the first image to train, the second
    to val (even classes) or test (odd classes), so every split holds several classes."""
    doc: dict = {"dataset": "ham10000", "source_sha256": "", "method": "fixture.", "seed": 0, "groups": [],
                 "excluded": [], "cross_label_groups": [], "train": [], "val": [], "test": [], "_path": "fixture.json"}
    seen: dict[str, int] = {}
    for r in rows:
        c = ham10000.CLASS_NAMES.index(r["dx"])
        order = seen[r["dx"]] = seen.get(r["dx"], -1) + 1
        doc["train" if order == 0 else ("val" if c % 2 == 0 else "test")].append(r["image_id"])
    return doc


def write_official(root: Path, rows: list[dict[str, str]], *, masks: bool = True, delimiter: str = ",") -> Path:
    """The Dataverse layout: metadata table, images split over the two part folders, masks."""
    folder = root / "ham10000"
    subs = ["HAM10000_images_part_1", "HAM10000_images_part_2"] + ["HAM10000_segmentations_lesion_tschandl"] * masks
    for sub in subs:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    lines = [delimiter.join(HEADER)] + [delimiter.join(r[h] for h in HEADER) for r in rows]
    name = "HAM10000_metadata.csv" if delimiter == "," else "HAM10000_metadata.tab"
    (folder / name).write_text("\n".join(lines) + "\n")
    yy, xx = np.mgrid[:45, :60]
    for i, r in enumerate(rows):
        pixels = np.stack([(xx * 4 + i * 13) % 256, (yy * 5 + i * 29) % 256, np.full_like(xx, 40 + 7 * i)], -1)
        part = "HAM10000_images_part_1" if i % 2 == 0 else "HAM10000_images_part_2"
        Image.fromarray(pixels.astype(np.uint8)).save(folder / part / f"{r['image_id']}.jpg", quality=90)
        if masks:  # an ellipse that moves with i, 600×450 scaled down to 60×45
            inside = ((xx - 20 - i % 20) / (8 + i % 5)) ** 2 + ((yy - 22) / 9) ** 2 <= 1
            Image.fromarray((inside * 255).astype(np.uint8)).save(
                folder / "HAM10000_segmentations_lesion_tschandl" / f"{r['image_id']}_segmentation.png")
    return folder


def write_shared(root: Path, rows: list[dict[str, str]], official: Path) -> Path:
    """The shared npz for the kept rows, made from the official fixture files as the README says
    (RGB → Lanczos; masks > 127 → bilinear → ≥ 128; sex 0 f / 1 m / -1, localization index / -1)."""
    images, masks = [], []
    for r in rows:
        part = next(p for p in official.glob(f"HAM10000_images_part_*/{r['image_id']}.jpg"))
        with Image.open(part) as im:
            images.append(np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)))
        with Image.open(official / "HAM10000_segmentations_lesion_tschandl" / f"{r['image_id']}_segmentation.png") as m:
            binary = Image.fromarray(((np.asarray(m.convert("L")) > 127) * 255).astype(np.uint8))
            masks.append((np.asarray(binary.resize((SIZE, SIZE), Image.Resampling.BILINEAR)) >= 128).astype(np.uint8))
    loc = list(ham10000.LOCALIZATIONS)
    arrays = {
        "images": np.stack(images), "masks": np.stack(masks),
        "labels": np.array([ham10000.CLASS_NAMES.index(r["dx"]) for r in rows], np.int64),
        "class_names": np.array(ham10000.CLASS_NAMES), "ids": np.array([r["image_id"] for r in rows]),
        "lesion_id": np.array([r["lesion_id"] for r in rows]),
        "age": np.array([float(r["age"]) if r["age"] else np.nan for r in rows], np.float32),
        "sex": np.array([{"female": 0, "male": 1}.get(r["sex"], -1) for r in rows], np.int64),
        "localization": np.array([loc.index(r["localization"]) if r["localization"] in loc else -1 for r in rows]),
        "localization_names": np.array(loc),
        "dx_type": np.array([DX_TYPES.index(r["dx_type"]) for r in rows], np.int64),
        "dx_type_names": np.array(DX_TYPES),
    }
    path = root / "ham10000" / "ham10000_128.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


PER_CLASS = 2  # the fixture's cap (3 lesions per class: the cap drops one)


@pytest.fixture
def official(tmp_path, monkeypatch):
    """(data_dir, all rows, kept rows) with the reader pointed at the fixture's split and cap."""
    rows = fixture_rows()
    keep = kept(rows, PER_CLASS)
    monkeypatch.setattr(ham10000, "PER_CLASS", PER_CLASS)
    monkeypatch.setattr(ham10000, "load_split", lambda name: split_doc(keep))
    write_official(tmp_path, rows)
    return tmp_path, rows, keep


def all_of(arrays, key: str) -> np.ndarray:
    return np.concatenate([getattr(arrays.splits[s], key) if key in ("image", "label", "ids")
                           else arrays.splits[s].extras[key] for s in SPLITS])


# ----------------------------------------------------------------------------- official layout
def test_official_layout_round_trip(official):
    data_dir, rows, keep = official
    arrays = load_dataset(config(layout="official"), data_dir)
    doc = split_doc(keep)
    by_id = {r["image_id"]: r for r in keep}
    assert arrays.notes["layout"] == "official" and arrays.notes["label_derived"] == ["dx_type"]
    for split in SPLITS:
        s = arrays.splits[split]
        assert s.ids.tolist() == sorted(doc[split])  # data-file order = image_id order
        assert s.label.dtype == np.int64
        assert s.label.tolist() == [ham10000.CLASS_NAMES.index(by_id[i]["dx"]) for i in s.ids]
        assert s.image.shape == (len(s.ids), 3, SIZE, SIZE) and s.image.dtype == np.uint8
        assert set(s.extras) == {"mask", "bbox", "metadata"}
        assert s.extras["mask"].shape == (len(s.ids), 1, SIZE, SIZE) and set(np.unique(s.extras["mask"])) <= {0, 1}
        np.testing.assert_array_equal(s.extras["bbox"], masks_to_bbox(s.extras["mask"]))
        assert s.extras["metadata"].shape == (len(s.ids), 18) and s.extras["metadata"].dtype == np.float32
    # one image per lesion (the earlier one), PER_CLASS lesions per class
    ids = all_of(arrays, "ids").tolist()
    lesions = [by_id[i]["lesion_id"] for i in ids]
    assert len(set(lesions)) == len(lesions) == PER_CLASS * len(ham10000.CLASS_NAMES)
    assert np.bincount(all_of(arrays, "label")).tolist() == [PER_CLASS] * 7
    later = {r["image_id"] for r in rows if r["image_id"][-1] == "5"}
    assert later and not later & set(ids)


def test_metadata_coding(official):
    data_dir, _, keep = official
    arrays = load_dataset(config(layout="official"), data_dir)
    names = arrays.notes["metadata_names"]
    assert names == arrays.notes["metadata_columns"]
    assert names[:4] == ["age", "age_missing", "sex=female", "sex=male"]
    assert names[4:] == [f"localization={site}" for site in ham10000.LOCALIZATIONS]
    meta = dict(zip(all_of(arrays, "ids").tolist(), all_of(arrays, "metadata")))
    for r in keep:
        row = meta[r["image_id"]]
        if r["age"]:
            assert row[0] == float(r["age"]) and row[1] == 0
        else:  # missing age: NaN value (the fusion strategy imputes the train mean) + indicator
            assert np.isnan(row[0]) and row[1] == 1
        assert row[2:4].tolist() == [float(r["sex"] == "female"), float(r["sex"] == "male")]
        sites = [float(r["localization"] == site) for site in ham10000.LOCALIZATIONS]
        assert row[4:].tolist() == sites  # 'unknown' → all zero
    assert "unknown" in {r["sex"] for r in keep}, "the fixture must exercise the unknown codes"


def test_both_layouts_give_identical_arrays(official):
    data_dir, _, keep = official
    write_shared(data_dir, keep, data_dir / "ham10000")
    shared = load_dataset(config(layout="shared"), data_dir)
    from_official = load_dataset(config(layout="official"), data_dir)
    assert shared.notes["layout"] == "shared" and from_official.notes["layout"] == "official"
    for split in SPLITS:
        a, b = shared.splits[split], from_official.splits[split]
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.image, b.image)
        assert set(a.extras) == set(b.extras)
        for key in a.extras:
            np.testing.assert_array_equal(a.extras[key], b.extras[key])
    assert load_dataset(config(), data_dir).notes["layout"] == "shared"  # auto prefers the shared file


def test_auto_layout_falls_back_to_the_official_release(official):
    data_dir, _, _ = official
    assert load_dataset(config(), data_dir).notes["layout"] == "official"


def test_metadata_only_needs_no_masks(tmp_path, monkeypatch):
    rows = fixture_rows()
    monkeypatch.setattr(ham10000, "PER_CLASS", PER_CLASS)
    monkeypatch.setattr(ham10000, "load_split", lambda name: split_doc(kept(rows, PER_CLASS)))
    write_official(tmp_path, rows, masks=False)
    with pytest.raises(InvalidDataError, match="HAM10000_segmentations_lesion_tschandl") as err:
        load_dataset(config(layout="official"), tmp_path)
    assert "\n" not in str(err.value)
    cfg = {**config(layout="official"), "provides": ["metadata"]}
    arrays = load_dataset(cfg, tmp_path)
    assert set(arrays.splits["train"].extras) == {"metadata"}


def test_table_spellings_and_bad_content(tmp_path):
    rows = fixture_rows()
    folder = write_official(tmp_path, rows, masks=False)
    csv_table = ham10000.read_metadata_table(folder / "HAM10000_metadata.csv")
    assert csv_table.label.tolist() == [ham10000.CLASS_NAMES.index(r["dx"]) for r in rows]
    assert csv_table.sex[0] == csv_table.localization[0] == ham10000.UNKNOWN and np.isnan(csv_table.age[0])
    # Dataverse's ingested .tab: tab-separated, quoted strings, same content
    quoted = ["\t".join(f'"{h}"' for h in HEADER)] + ["\t".join(f'"{r[h]}"' for h in HEADER) for r in rows]
    (folder / "HAM10000_metadata.tab").write_text("\n".join(quoted) + "\n")
    tab_table = ham10000.read_metadata_table(folder / "HAM10000_metadata.tab")
    for key in ("image_id", "lesion_id", "label", "sex", "localization"):
        np.testing.assert_array_equal(getattr(tab_table, key), getattr(csv_table, key))
    np.testing.assert_array_equal(tab_table.age, csv_table.age)

    bad = folder / "bad.csv"
    bad.write_text("lesion_id,image_id,dx,age,sex,localization\nHAM_1,ISIC_1,mel,50,divers,back\n")
    with pytest.raises(InvalidDataError, match=r"bad\.csv.*sex.*divers"):
        ham10000.read_metadata_table(bad)
    bad.write_text("lesion_id,image_id,age,sex,localization\nHAM_1,ISIC_1,50,male,back\n")
    with pytest.raises(InvalidDataError, match=r"bad\.csv.*\['dx'\]"):
        ham10000.read_metadata_table(bad)
    bad.write_text("lesion_id,image_id,dx,age,sex,localization\nHAM_1,ISIC_1,mel,fifty,male,back\n")
    with pytest.raises(InvalidDataError, match=r"bad\.csv.*age"):
        ham10000.read_metadata_table(bad)


def test_benchmark_subset_rule():
    """Smallest image_id per lesion, then per class the first lesions by sha1(lesion_id), rows in
    image_id order — the rule that makes the official release give the shared file's ids."""
    lesions = [f"HAM_{i:07d}" for i in range(12)]  # class 0: lesions 0-7, class 1: lesions 8-11

    def by_sha1(group: list[str]) -> list[str]:
        return sorted(group, key=lambda x: hashlib.sha1(x.encode()).hexdigest())
    image_ids, lesion_ids, labels = [], [], []
    for i, lesion in enumerate(lesions):
        for extra in (3, 1):  # two images per lesion, the later-listed one has the smaller id
            image_ids.append(f"ISIC_{100 * (11 - i) + extra:07d}")  # image order reverses lesion order
            lesion_ids.append(lesion)
            labels.append(0 if i < 8 else 1)
    keep = ham10000.benchmark_subset(image_ids, lesion_ids, labels, per_class=3)
    chosen = [image_ids[i] for i in keep]
    assert chosen == sorted(chosen)
    assert all(c.endswith("1") for c in chosen)  # the smaller image id of each lesion
    assert sorted(lesion_ids[i] for i in keep if labels[i] == 0) == sorted(by_sha1(lesions[:8])[:3])
    assert sorted(lesion_ids[i] for i in keep if labels[i] == 1) == sorted(by_sha1(lesions[8:])[:3])
    assert by_sha1(lesions[:8])[:3] != lesions[:3], "sha1 order must differ from id order to test it"


def test_partial_table_does_not_match_the_split(official):
    data_dir, rows, keep = official
    dropped = keep[0]["lesion_id"]
    write_official(data_dir, [r for r in rows if r["lesion_id"] != dropped])
    with pytest.raises(SplitMismatchError, match="complete HAM10000 metadata table"):
        load_dataset(config(layout="official"), data_dir)


# ----------------------------------------------------------------------------- label-derived
def assert_no_dx_type(arrays, dx_type: dict[str, int]) -> None:
    """dx_type is in no extra and no metadata column name; over all images, no metadata column
    equals (or complements) one of its one-hot indicators and no extra array holds its codes."""
    names = arrays.notes["metadata_names"]
    assert not [n for n in names if "dx_type" in n or n.split("=")[-1] in DX_TYPES]
    assert not any("dx_type" in s.extras for s in arrays.splits.values())
    codes = np.array([dx_type[i] for i in all_of(arrays, "ids").tolist()])
    meta = all_of(arrays, "metadata")
    for k in np.unique(codes):
        indicator = (codes == k).astype(np.float32)
        for col in meta.T:
            assert not np.array_equal(col, indicator) and not np.array_equal(col, 1 - indicator)
    for key in arrays.splits["train"].extras:
        value = all_of(arrays, key)
        assert value.reshape(len(value), -1).shape[1] != 1 or not np.array_equal(value.ravel(), codes), key


def test_dx_type_never_reaches_a_strategy(official):
    data_dir, _, keep = official
    yaml_cfg = config()
    assert "dx_type" in yaml_cfg["label_derived"] and "dx_type" in spec_from_config(yaml_cfg).label_derived
    dx_type = {r["image_id"]: DX_TYPES.index(r["dx_type"]) for r in keep}
    arrays = load_dataset(config(layout="official"), data_dir)
    assert_no_dx_type(arrays, dx_type)
    write_shared(data_dir, keep, data_dir / "ham10000")  # holds dx_type, like the real file
    assert_no_dx_type(load_dataset(config(layout="shared"), data_dir), dx_type)
    # the check has teeth: a metadata column that is dx_type's follow_up indicator is caught
    for s in arrays.splits.values():
        follow_up = np.array([dx_type[i] == 1 for i in s.ids.tolist()], np.float32)[:, None]
        s.extras["metadata"] = np.concatenate([s.extras["metadata"], follow_up], axis=1)
    with pytest.raises(AssertionError):
        assert_no_dx_type(arrays, dx_type)


# ----------------------------------------------------------------------------- options and files
def test_unknown_and_bad_options_are_refused(tmp_path):
    spec = spec_from_config(config())
    with pytest.raises(RunConfigError, match=r"unknown option.*'colour'.*valid options: \['layout', 'subset'\]"):
        check_data_files("ham10000", tmp_path, spec, {"colour": True})  # the pre-flight
    with pytest.raises(RunConfigError, match="layout='dicom'.*'official'"):
        load_dataset(config(layout="dicom"), tmp_path)
    with pytest.raises(RunConfigError, match="subset=all.*benchmark subset .1171 images. only"):
        load_dataset(config(subset="all"), tmp_path)


def test_missing_files_are_one_line_errors(tmp_path, official):
    spec = spec_from_config(config())
    with pytest.raises(MissingDataError) as err:  # nothing there: the shared file, both ways to get it
        check_data_files("ham10000", tmp_path / "empty", spec, {})
    msg = str(err.value)
    assert "\n" not in msg and "ham10000_128.npz" in msg and "10.7910/DVN/DBW86T" in msg
    with pytest.raises(MissingDataError, match=r"HAM10000_metadata\.csv.*10\.7910/DVN/DBW86T") as err:
        check_data_files("ham10000", tmp_path / "empty", spec, {"layout": "official"})
    assert "\n" not in str(err.value)

    data_dir, _, keep = official
    images = data_dir / "ham10000" / "HAM10000_images_part_1"
    kept_ids = {r["image_id"] for r in keep}
    victim = next(p for p in sorted(images.glob("*.jpg")) if p.stem in kept_ids)
    victim.unlink()
    with pytest.raises(MissingDataError, match=victim.name) as err:
        load_dataset(config(layout="official"), data_dir)
    assert "\n" not in str(err.value)
    for part in (images, data_dir / "ham10000" / "HAM10000_images_part_2"):
        for p in part.glob("*.jpg"):
            p.unlink()
        part.rmdir()
    with pytest.raises(MissingDataError, match="HAM10000_images_part_1"):
        check_data_files("ham10000", data_dir, spec, {"layout": "official"})


# ----------------------------------------------------------------------------- the shared file
SHARED = "ham10000/ham10000_128.npz"
#: class counts per split (akiec, bcc, bkl, df, mel, nv, vasc): README totals 200/200/200/73/200/200/98
COUNTS = {"train": [120, 120, 120, 44, 120, 120, 60], "val": [40, 40, 40, 15, 40, 40, 19],
          "test": [40, 40, 40, 14, 40, 40, 19]}


@pytest.fixture(scope="module")
def shared_arrays(data_dir):
    require_file(data_dir, SHARED)
    cfg = yaml.safe_load((REPO / "configs" / "dataset" / "ham10000.yaml").read_text())
    return load_dataset({**cfg, "options": {**cfg["options"], "layout": "shared"}}, data_dir)


@pytest.mark.data
def test_shared_file_shapes_counts_and_split(shared_arrays, data_dir):
    doc = load_split("ham10000")
    assert [len(shared_arrays.splits[s]) for s in SPLITS] == [704, 234, 233]
    for split in SPLITS:
        s = shared_arrays.splits[split]
        assert sorted(s.ids.tolist()) == sorted(doc[split])
        assert np.bincount(s.label, minlength=7).tolist() == COUNTS[split]
        assert s.image.shape == (len(s), 3, 128, 128) and s.image.dtype == np.uint8
        assert s.extras["mask"].shape == (len(s), 1, 128, 128) and s.extras["mask"].reshape(len(s), -1).any(1).all()
        assert s.extras["metadata"].shape == (len(s), 18) and not np.isnan(s.extras["bbox"]).any()
    assert shared_arrays.checksum == doc["source_sha256"]
    assert not any("differs from the one split file" in w for w in shared_arrays.notes["warnings"])


@pytest.mark.data
def test_shared_file_metadata_and_dx_type(shared_arrays, data_dir):
    with np.load(data_dir / SHARED) as z:
        ids, dx_type, lesion, age = z["ids"].astype(str), z["dx_type"], z["lesion_id"], z["age"]
        labels = z["labels"]
    assert len(np.unique(lesion)) == len(lesion)  # one image per lesion
    assert_no_dx_type(shared_arrays, dict(zip(ids.tolist(), dx_type.tolist())))
    meta = dict(zip(all_of(shared_arrays, "ids").tolist(), all_of(shared_arrays, "metadata")))
    got = np.array([meta[i][0] for i in ids.tolist()])
    np.testing.assert_array_equal(got, age)  # NaN where missing (6 images)
    assert int(np.isnan(got).sum()) == 6
    assert set(np.unique(dx_type[labels == 4])) == {0}  # mel all histo: the leak the exclusion guards


@pytest.mark.data
def test_official_release_matches_the_shared_file(shared_arrays, data_dir):
    """Runs where DKBENCH_DATA also holds the official release beside the shared file: the same
    ids, labels, metadata and masks; the same pixels when the JPEGs are the 200×150 copies the
    shared file was made from (the Dataverse originals are sharper)."""
    table = ham10000.metadata_path(data_dir / "ham10000")
    require_file(data_dir, str(table.relative_to(data_dir)))
    cfg = yaml.safe_load((REPO / "configs" / "dataset" / "ham10000.yaml").read_text())
    official = load_dataset({**cfg, "options": {"layout": "official"}}, data_dir)
    first = next(iter(ham10000._image_files(data_dir / "ham10000").values()))
    with Image.open(first) as im:
        same_pixels = im.size == (200, 150)
    for split in SPLITS:
        a, b = shared_arrays.splits[split], official.splits[split]
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.label, b.label)
        for key in a.extras:
            np.testing.assert_array_equal(a.extras[key], b.extras[key])
        if same_pixels:
            np.testing.assert_array_equal(a.image, b.image)
