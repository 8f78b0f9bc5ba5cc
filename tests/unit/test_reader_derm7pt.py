"""Derm7pt reader (Kawahara et al., IEEE JBHI 23(2):538-546, 2019): the official release_v0 layout
on a tiny synthetic fixture written here, the shared .npz layout on a synthetic twin of the same
cases (both must give identical arrays), label-derived fields kept out, refusals; and, marked
`data`, the real shared files under DKBENCH_DATA (skipped when absent).

The fixture follows release_v0 as Kawahara's `derm7pt` package reads it (github:jeremykawahara/derm7pt,
derm7pt/dataset.py and minimal_example.py): meta/meta.csv with the release's 19 columns, meta/
{train,valid,test}_indexes.csv (header `indexes`, 0-based meta.csv rows, unsorted as released) and
images/<folder>/<file> named by the `clinic` and `derm` columns. No real data is written.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dkbench.data.loading import load_dataset, spec_from_config
from dkbench.data.registry import DATASETS, MissingDataError, check_data_files
from dkbench.data.saved_splits import split_path
from dkbench.data.spec import SPLITS
from dkbench.errors import InvalidDataError, RunConfigError
from tests.conftest import require_file

REPO = Path(__file__).resolve().parents[2]
SIZE = 128  # the shared file's size, so that the synthetic twin can be read as the shared layout
LABEL_DERIVED = ["management", "seven_point_score", "level_of_diagnostic_difficulty", "diagnosis", "melanoma"]
CLASSES = ["BCC", "NEV", "MEL", "MISC", "SK"]

# the release's column order (meta.csv header of release_v0)
META_COLUMNS = ["case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
                "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
                "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm",
                "case_id", "notes"]
# codings as derm7pt/README.md and the shared npz's *_coding strings give them (written out here, not
# imported from the reader, so that the test checks the reader's codes)
CRITERIA_CODING = {
    "pigment_network": ["absent", "typical", "atypical"],
    "blue_whitish_veil": ["absent", "present"],
    "vascular_structures": ["absent", "arborizing", "comma", "hairpin", "within regression", "wreath", "dotted",
                            "linear irregular"],
    "pigmentation": ["absent", "diffuse regular", "localized regular", "diffuse irregular", "localized irregular"],
    "streaks": ["absent", "regular", "irregular"],
    "dots_and_globules": ["absent", "regular", "irregular"],
    "regression_structures": ["absent", "blue areas", "white areas", "combinations"],
}
METADATA_CODING = {
    "sex": ["female", "male"],
    "elevation": ["flat", "palpable", "nodular"],
    "location": ["abdomen", "acral", "back", "buttocks", "chest", "genital areas", "head neck", "lower limbs",
                 "upper limbs"],
    "management": ["clinical follow up", "excision", "no further examination"],
    "level_of_diagnostic_difficulty": ["low", "medium", "high"],
}

# 12 synthetic cases: (diagnosis, class, derm, clinic, criteria in CRITERIA_CODING order, sex, elevation,
# location, management, difficulty). "" = an empty cell (missing). Case 5 reuses its dermoscopic
# file as the clinic image, as 9 cases of the release do.
CASES = [
    ("basal cell carcinoma", 0, "NEL/Nel026.jpg", "NEL/NEL025.JPG", [0, 0, 1, 0, 0, 0, 0],
     "female", "nodular", "abdomen", "excision", "medium"),
    ("clark nevus", 1, "NCL/Ncl004.jpg", "NCL/Ncl003.jpg", [1, 0, 0, 1, 1, 1, 0],
     "male", "flat", "back", "clinical follow up", "low"),
    ("melanoma (in situ)", 2, "Fal/Fal010.jpg", "Fal/Fal009.jpg", [2, 1, 6, 3, 2, 2, 1],
     "female", "flat", "back", "excision", "high"),
    ("dermatofibroma", 3, "Ggl/Ggl028.jpg", "Ggl/Ggl027.jpg", [0, 0, 0, 2, 0, 1, 2],
     "male", "palpable", "lower limbs", "no further examination", "low"),
    ("seborrheic keratosis", 4, "Fhl/Fhl018.jpg", "Fhl/Fhl018.jpg", [0, 0, 3, 0, 0, 0, 0],
     "female", "palpable", "chest", "clinical follow up", "medium"),
    ("reed or spitz nevus", 1, "NBL/NBL049.JPG", "NBL/Nbl048.jpg", [1, 0, 2, 4, 1, 2, 0],
     "male", "palpable", "", "excision", "medium"),
    ("melanoma (more than 1.5 mm)", 2, "Gzl/gzl02.jpg", "Gzl/gzl01.jpg", [2, 1, 7, 4, 2, 2, 3],
     "male", "nodular", "upper limbs", "excision", "high"),
    ("vascular lesion", 3, "Adl/Adl379.jpg", "Adl/Adl378.jpg", [0, 0, 5, 0, "", 0, 0],
     "female", "nodular", "head neck", "clinical follow up", "low"),
    ("blue nevus", 1, "A1l/Aal068.jpg", "A1l/Aal067.jpg", [0, 1, 0, 1, 0, 0, 0],
     "male", "flat", "acral", "no further examination", "low"),
    ("melanoma metastasis", 2, "Ael/Ael505.jpg", "Ael/Ael505bis.jpg", [2, 1, 4, 3, 0, 2, 1],
     "female", "palpable", "buttocks", "excision", "medium"),
    ("lentigo", 3, "FAL/Fal096.jpg", "FAL/Fal095.jpg", [1, 0, 0, 2, 0, 0, 0],
     "male", "flat", "genital areas", "clinical follow up", "high"),
    ("basal cell carcinoma", 0, "Fhl/Fhl052.jpg", "Fhl/Fhl051.jpg", [0, 0, 1, 3, 0, 2, 1],
     "female", "nodular", "back", "excision", "high"),
]
# official index files, unsorted as in the release; every split holds >= 2 classes
INDEXES = {"train": [5, 0, 3, 1, 8], "valid": [9, 2, 4], "test": [11, 6, 7, 10]}
SPLIT_OF_FILE = {"train": "train", "valid": "val", "test": "test"}
POINTS = {  # Kawahara's `scores`: only the seven-point score (label-derived) is made from them
    "pigment_network": [0, 0, 2], "blue_whitish_veil": [0, 2], "vascular_structures": [0, 0, 0, 0, 0, 0, 2, 2],
    "pigmentation": [0, 0, 0, 1, 1], "streaks": [0, 0, 1], "dots_and_globules": [0, 0, 1],
    "regression_structures": [0, 1, 1, 1],
}


def config(**options) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / "dataset" / "derm7pt.yaml").read_text())
    cfg["options"] = {**(cfg.get("options") or {}), **options}
    return cfg


def spec(**changes):
    return spec_from_config({**config(), **changes})


def one_hot(codes, k: int) -> np.ndarray:
    codes = np.asarray(codes)
    out = np.zeros((len(codes), k), np.float32)
    out[np.flatnonzero(codes >= 0), codes[codes >= 0]] = 1
    return out


def synthetic_photo(seed: int) -> Image.Image:
    """A 3:2 photograph (48×32, like the release's 768×512) of smooth colour noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((48, 32), Image.Resampling.BILINEAR)


def shared_rule(path: Path) -> np.ndarray:
    """derm7pt/README.md's preprocessing, written out independently of the reader."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS))


def score(criteria) -> int:
    return sum(POINTS[c][v] for c, v in zip(CRITERIA_CODING, criteria) if v != "")


def write_official(data_dir: Path, cases=CASES, indexes=INDEXES) -> Path:
    release = data_dir / "derm7pt" / "release_v0"
    (release / "meta").mkdir(parents=True)
    with open(release / "meta" / "meta.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(META_COLUMNS)
        for i, (diag, _, derm, clinic, crit, sex, elev, loc, mgmt, diff) in enumerate(cases):
            values = dict(zip(CRITERIA_CODING, [CRITERIA_CODING[c][v] if v != "" else "" for c, v in
                                                zip(CRITERIA_CODING, crit)]))
            row = {"case_num": i + 1, "diagnosis": diag, "seven_point_score": score(crit), **values,
                   "level_of_diagnostic_difficulty": diff, "elevation": elev, "location": loc, "sex": sex,
                   "management": mgmt, "clinic": clinic, "derm": derm, "case_id": "", "notes": ""}
            w.writerow([row[c] for c in META_COLUMNS])
    for name, rows in indexes.items():
        (release / "meta" / f"{name}_indexes.csv").write_text("indexes\n" + "".join(f"{r}\n" for r in rows))
    for i, case in enumerate(cases):
        for j, rel in enumerate((case[2], case[3])):
            path = release / "images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                synthetic_photo(100 * i + j).save(path, format="JPEG", quality=95)
    return release


def expected(release: Path) -> dict[str, np.ndarray]:
    """What both layouts must give, per meta.csv row, from the fixture table itself."""
    split = np.full(len(CASES), -1)
    for name, rows in INDEXES.items():
        split[rows] = ["train", "valid", "test"].index(name)
    return {
        "ids": np.array([Path(c[2]).stem for c in CASES]),
        "labels": np.array([c[1] for c in CASES]),
        "criteria": np.array([[-1 if v == "" else v for v in c[4]] for c in CASES]),
        "meta_codes": {m: np.array([METADATA_CODING[m].index(c[k]) if c[k] else -1 for c in CASES])
                       for m, k in (("sex", 5), ("elevation", 6), ("location", 7), ("management", 8),
                                    ("level_of_diagnostic_difficulty", 9))},
        "derm": np.stack([shared_rule(release / "images" / c[2]) for c in CASES]),
        "clinic": np.stack([shared_rule(release / "images" / c[3]) for c in CASES]),
        "split": split,
        "seven_point_score": np.array([score(c[4]) for c in CASES]),
        "diagnosis": np.array([sorted({c[0] for c in CASES}).index(c[0]) for c in CASES]),
    }


def write_shared(data_dir: Path, release: Path) -> None:
    """A synthetic twin of the fixture in the shared layout (keys of derm7pt/README.md), metadata
    matrix with management and difficulty columns as the real file has them."""
    e = expected(release)
    def coding(name, values):
        return f"{name}: " + ", ".join(f"{i}={v}" for i, v in enumerate(values))

    meta_names = list(METADATA_CODING)
    folder = data_dir / "derm7pt"
    folder.mkdir(parents=True, exist_ok=True)
    case_num = np.arange(1, len(CASES) + 1)
    clinic_is_derm = np.array([c[2] == c[3] for c in CASES], np.uint8)
    np.savez(
        folder / "derm7pt_128.npz",
        images=e["derm"], ids=e["ids"], case_num=case_num, labels=e["labels"], label_names=np.array(CLASSES),
        diagnosis=e["diagnosis"], diagnosis_names=np.array(sorted({c[0] for c in CASES})),
        melanoma=(e["labels"] == 2).astype(np.int64),
        criteria=e["criteria"], criteria_names=np.array(list(CRITERIA_CODING)),
        criteria_coding=np.array([coding(k, v) for k, v in CRITERIA_CODING.items()]),
        seven_point_score=e["seven_point_score"],
        metadata=np.stack([e["meta_codes"][m] for m in meta_names], 1), metadata_names=np.array(meta_names),
        metadata_coding=np.array([coding(k, v) for k, v in METADATA_CODING.items()]),
        split=e["split"], split_names=np.array(["train", "valid", "test"]),
        derm_path=np.array([c[2] for c in CASES]), clinic_path=np.array([c[3] for c in CASES]),
        clinic_is_derm=clinic_is_derm,
    )
    np.savez(folder / "derm7pt_clinic_128.npz", images=e["clinic"], ids=e["ids"], case_num=case_num,
             labels=e["labels"], clinic_path=np.array([c[3] for c in CASES]), clinic_is_derm=clinic_is_derm)


@pytest.fixture
def official(tmp_path) -> tuple[Path, Path]:
    return tmp_path, write_official(tmp_path)


def leaked_names(arrays, fields) -> list[str]:
    """Label-derived fields that reach a strategy by name: an extra key, a metadata column name,
    an attribute name."""
    found = [f"extra {k}" for split in arrays.splits.values() for k in split.extras if k in fields]
    for key in ("metadata_names", "metadata_columns", "attribute_names"):
        found += [f"{key}: {n}" for n in arrays.notes.get(key) or [] for f in fields if f in n]
    return sorted(set(found))


def equal_columns(arrays, fields: dict[str, np.ndarray], ids_all: np.ndarray) -> list[str]:
    """Metadata columns (all splits, every row) equal to a field's value or to a column of its
    one-hot, i.e. the field itself fed as an input. (Attributes are not checked: the criteria are
    associated with the diagnosis by design, a training target, never an input.)"""
    position = {i: k for k, i in enumerate(ids_all.tolist())}
    rows = np.array([position[i] for s in SPLITS for i in arrays.splits[s].ids.tolist()])
    metadata = np.concatenate([arrays.splits[s].extras["metadata"] for s in SPLITS]).astype(np.float32)
    found = []
    for field, values in fields.items():
        v = np.asarray(values)[rows]
        targets = [v.astype(np.float32)] + list(one_hot(v, int(np.max(values)) + 1).T)
        found += [f"metadata[{j}] = {field}" for j, col in enumerate(metadata.T)
                  if any(np.array_equal(col, t) for t in targets)]
    return found


# ----------------------------------------------------------------------------- official layout
def test_official_layout_round_trip(official):
    data_dir, release = official
    e = expected(release)
    arrays = load_dataset(config(layout="official"), data_dir)
    assert arrays.notes["layout"] == "official" and "official" in arrays.notes["split_method"]
    assert arrays.notes["split_sizes"] == {"train": 5, "val": 3, "test": 4}
    for name, rows in INDEXES.items():
        split = arrays.splits[SPLIT_OF_FILE[name]]
        rows = sorted(rows)  # meta.csv order within a split, whatever order the index file has
        assert split.ids.tolist() == e["ids"][rows].tolist()
        assert split.image.shape == (len(rows), 3, SIZE, SIZE) and split.image.dtype == np.uint8
        assert np.array_equal(split.image, e["derm"][rows].transpose(0, 3, 1, 2))
        assert split.label.dtype == np.int64 and split.label.tolist() == e["labels"][rows].tolist()
        assert set(split.extras) == {"attributes", "metadata", "views"}
        attrs = split.extras["attributes"]
        assert attrs.dtype == np.int64 and np.array_equal(attrs, e["criteria"][rows])
        meta = split.extras["metadata"]
        assert meta.dtype == np.float32 and meta.shape == (len(rows), 14)
        want = np.concatenate([one_hot(e["meta_codes"][m][rows], len(METADATA_CODING[m]))
                               for m in ("sex", "elevation", "location")], 1)
        assert np.array_equal(meta, want)
        views = split.extras["views"]
        assert views.shape == (len(rows), 2, 3, SIZE, SIZE) and views.dtype == np.uint8
        assert np.array_equal(views[:, 0], split.image)
        assert np.array_equal(views[:, 1], e["clinic"][rows].transpose(0, 3, 1, 2))
    # codings named in the notes; the missing streaks / location give -1 / an all-zero one-hot
    assert arrays.notes["attribute_names"] == list(CRITERIA_CODING)
    assert arrays.notes["attribute_values"] == CRITERIA_CODING
    assert arrays.notes["metadata_names"][:5] == ["sex=female", "sex=male", "elevation=flat", "elevation=palpable",
                                                  "elevation=nodular"]
    assert len(arrays.notes["metadata_names"]) == 14
    test = arrays.splits["test"]
    assert test.extras["attributes"][test.ids.tolist().index("Adl379"), 4] == -1
    train = arrays.splits["train"]
    assert train.extras["metadata"][train.ids.tolist().index("NBL049"), 5:].sum() == 0
    # the case without a clinical photograph: view 1 = view 0, and the notes say so
    val = arrays.splits["val"]
    k = val.ids.tolist().index("Fhl018")
    assert np.array_equal(val.extras["views"][k, 0], val.extras["views"][k, 1])
    assert arrays.notes["views_clinic_replaced_by_derm"] == ["Fhl018"]
    assert arrays.spec.class_names == tuple(CLASSES)


def test_every_release_diagnosis_maps_to_kawahara_group():
    from dkbench.data.readers.derm7pt import CLASS_OF

    release_v0 = {  # the 20 fine-grained diagnoses of release_v0 (derm7pt/README.md) → 5 classes
        "BCC": ["basal cell carcinoma"],
        "NEV": ["blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus", "recurrent nevus",
                "reed or spitz nevus"],
        "MEL": ["melanoma", "melanoma (0.76 to 1.5 mm)", "melanoma (in situ)", "melanoma (less than 0.76 mm)",
                "melanoma (more than 1.5 mm)", "melanoma metastasis"],
        "MISC": ["dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"],
        "SK": ["seborrheic keratosis"],
    }
    for cls, names in release_v0.items():
        for name in names:
            assert CLASS_OF[name] == CLASSES.index(cls), name


def test_shared_and_official_layouts_give_identical_arrays(official):
    data_dir, release = official
    write_shared(data_dir, release)
    got = {layout: load_dataset(config(layout=layout), data_dir) for layout in ("shared", "official", "auto")}
    assert got["auto"].notes["layout"] == "shared"  # the npz wins when both are there
    a, b = got["shared"], got["official"]
    for split in SPLITS:
        x, y = a.splits[split], b.splits[split]
        assert x.ids.tolist() == y.ids.tolist()
        assert np.array_equal(x.image, y.image) and np.array_equal(x.label, y.label)
        assert x.extras.keys() == y.extras.keys()
        for key in x.extras:
            assert x.extras[key].dtype == y.extras[key].dtype and np.array_equal(x.extras[key], y.extras[key]), key
    for key in ("attribute_names", "attribute_values", "metadata_names", "views_clinic_replaced_by_derm",
                "split_sizes", "class_names"):
        assert a.notes[key] == b.notes[key], key


def test_auto_falls_back_to_the_official_layout(official):
    data_dir, _ = official
    arrays = load_dataset(config(), data_dir)
    assert arrays.notes["layout"] == "official"


def test_without_views_the_clinical_images_are_not_needed(official):
    data_dir, release = official
    write_shared(data_dir, release)
    (data_dir / "derm7pt" / "derm7pt_clinic_128.npz").unlink()
    for clinic in {c[3] for c in CASES} - {c[2] for c in CASES}:  # every clinical-only photograph
        (release / "images" / clinic).unlink()
    cfg = config()
    cfg["provides"] = ["attributes", "metadata"]
    for layout in ("shared", "official"):
        arrays = load_dataset({**cfg, "options": {"layout": layout}}, data_dir)
        assert set(arrays.splits["train"].extras) == {"attributes", "metadata"}
    with pytest.raises(MissingDataError, match="derm7pt_clinic_128.npz"):
        load_dataset(config(layout="shared"), data_dir)


# ----------------------------------------------------------------------------- label-derived
#: a diagnosis of the same class for each fixture diagnosis: the label stays, the fine diagnosis moves
SAME_CLASS = {"basal cell carcinoma": "basal cell carcinoma", "clark nevus": "dermal nevus",
              "melanoma (in situ)": "melanoma", "dermatofibroma": "melanosis",
              "seborrheic keratosis": "seborrheic keratosis", "reed or spitz nevus": "congenital nevus",
              "melanoma (more than 1.5 mm)": "melanoma (less than 0.76 mm)", "vascular lesion": "miscellaneous",
              "blue nevus": "recurrent nevus", "melanoma metastasis": "melanoma (0.76 to 1.5 mm)",
              "lentigo": "dermatofibroma"}


def perturb_label_derived(data_dir: Path, release: Path) -> None:
    """Change every label-derived field in both layouts, keeping the label and the inputs."""
    with open(release / "meta" / "meta.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rotate = {"management": METADATA_CODING["management"],
              "level_of_diagnostic_difficulty": METADATA_CODING["level_of_diagnostic_difficulty"]}
    for i, row in enumerate(rows):
        row["diagnosis"] = SAME_CLASS[row["diagnosis"]]
        row["seven_point_score"] = str((int(row["seven_point_score"]) + 3 * i) % 11)
        for column, values in rotate.items():
            row[column] = values[(values.index(row[column]) + 1 + i) % len(values)]
    with open(release / "meta" / "meta.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=META_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    path = data_dir / "derm7pt" / "derm7pt_128.npz"
    with np.load(path) as z:
        a = {k: z[k] for k in z.files}
    a["metadata"][:, 3:] = (a["metadata"][:, 3:] + 1 + np.arange(len(CASES))[:, None]) % 3
    a["seven_point_score"] = (a["seven_point_score"] + 5) % 11
    a["diagnosis"], a["melanoma"] = a["diagnosis"][::-1].copy(), 1 - a["melanoma"]
    np.savez(path, **a)


def test_yaml_lists_the_label_derived_fields():
    cfg = config()
    assert sorted(cfg["label_derived"]) == sorted(LABEL_DERIVED)
    assert cfg["provides"] == ["attributes", "metadata", "views"]
    assert set(cfg["knowledge"]) == set(cfg["provides"])


@pytest.mark.parametrize("layout", ["official", "shared"])
def test_label_derived_fields_never_reach_a_strategy(official, layout):
    data_dir, release = official
    write_shared(data_dir, release)  # its metadata matrix holds management and difficulty columns
    e = expected(release)
    before = load_dataset(config(layout=layout), data_dir)
    assert leaked_names(before, LABEL_DERIVED) == []
    assert before.notes["metadata_names"] == [f"{m}={v}" for m in ("sex", "elevation", "location")
                                              for v in METADATA_CODING[m]]
    # nothing a strategy sees changes when every label-derived field does (the label kept)
    perturb_label_derived(data_dir, release)
    after = load_dataset(config(layout=layout), data_dir)
    for split in SPLITS:
        x, y = before.splits[split], after.splits[split]
        assert x.ids.tolist() == y.ids.tolist() and np.array_equal(x.label, y.label)
        assert np.array_equal(x.image, y.image)
        for key in x.extras:
            assert np.array_equal(x.extras[key], y.extras[key]), key
    # the column check finds a planted leak (management one-hot appended to the metadata)
    fields = {"management": e["meta_codes"]["management"]}
    assert equal_columns(before, fields, e["ids"]) == []
    for split in SPLITS:
        s = before.splits[split]
        rows = [e["ids"].tolist().index(i) for i in s.ids.tolist()]
        s.extras["metadata"] = np.concatenate([s.extras["metadata"], one_hot(fields["management"][rows], 3)], 1)
    assert equal_columns(before, fields, e["ids"]) == [f"metadata[{j}] = management" for j in (14, 15, 16)]


# ----------------------------------------------------------------------------- refusals
def test_unknown_option_is_refused(official):
    data_dir, _ = official
    reader = DATASETS.get("derm7pt")
    with pytest.raises(RunConfigError, match=r"unknown option.*'layuot'.*valid options: \['layout'\]"):
        reader(data_dir, spec(), layuot="official")
    with pytest.raises(RunConfigError, match=r"layout='zip'.*\['auto', 'shared', 'official'\]"):
        reader(data_dir, spec(), layout="zip")
    with pytest.raises(RunConfigError, match="unknown option"):  # the pre-flight refuses it too
        check_data_files("derm7pt", data_dir, spec(), {"crop": 25})
    with pytest.raises(RunConfigError, match="num_classes"):
        reader(data_dir, spec(num_classes=2))


def test_missing_files_are_refused_in_one_line(tmp_path, official):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingDataError) as err:
        load_dataset(config(), empty)
    message = str(err.value)
    assert "\n" not in message and "derm7pt/derm7pt_128.npz" in message and "http://derm.cs.sfu.ca/" in message
    assert "layout=official" in message  # the other way to get the data
    with pytest.raises(MissingDataError, match=r"release_v0/meta/meta.csv.*derm.cs.sfu.ca"):
        check_data_files("derm7pt", empty, spec(), {"layout": "official"})

    data_dir, release = official
    (release / "meta" / "valid_indexes.csv").unlink()
    with pytest.raises(MissingDataError, match="valid_indexes.csv") as err:
        load_dataset(config(), data_dir)
    assert "\n" not in str(err.value)
    (release / "meta" / "valid_indexes.csv").write_text("indexes\n9\n2\n4\n")
    (release / "images" / "Gzl" / "gzl01.jpg").unlink()  # a clinical photograph
    with pytest.raises(MissingDataError, match=r"images/Gzl/gzl01.jpg \(meta.csv column clinic, case_num 7\)") as err:
        check_data_files("derm7pt", data_dir, spec(), {})  # the pre-flight names it before anything runs
    assert "\n" not in str(err.value)


def test_bad_content_is_refused_with_file_and_fix(tmp_path):
    cases = [list(c) for c in CASES]
    cases[3][0] = "dermatofibrosarcoma"
    write_official(tmp_path / "a", cases=[tuple(c) for c in cases])
    with pytest.raises(InvalidDataError, match=r"meta.csv: row 3 \(case_num 4\) has diagnosis='dermatofibrosarcoma'"):
        load_dataset(config(), tmp_path / "a")

    cases = [list(c) for c in CASES]
    cases[0][7] = "elbow"
    write_official(tmp_path / "b", cases=[tuple(c) for c in cases])
    with pytest.raises(InvalidDataError, match=r"location='elbow', not one of"):
        load_dataset(config(), tmp_path / "b")

    write_official(tmp_path / "c", indexes={**INDEXES, "test": [11, 6, 7, 12]})
    with pytest.raises(InvalidDataError, match=r"test_indexes.csv: index 12 is outside meta.csv's 12 rows"):
        load_dataset(config(), tmp_path / "c")

    write_official(tmp_path / "d", indexes={**INDEXES, "test": [11, 6, 7, 0]})
    with pytest.raises(InvalidDataError, match=r"row 0 is already in split train"):
        load_dataset(config(), tmp_path / "d")

    release = write_official(tmp_path / "e")
    write_shared(tmp_path / "e", release)
    path = tmp_path / "e" / "derm7pt" / "derm7pt_128.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["criteria_coding"][2] = "vascular_structures: 0=absent, 1=regular, 2=irregular"  # grouped coding
    np.savez(path, **arrays)
    with pytest.raises(InvalidDataError, match=r"derm7pt_128.npz: criteria_coding is"):
        load_dataset(config(layout="shared"), tmp_path / "e")


# ----------------------------------------------------------------------------- real shared files
SHARED = "derm7pt/derm7pt_128.npz"
_real: dict[str, object] = {}


def real(data_dir: Path):
    """The shared files and load_dataset's result on them, read once per session."""
    require_file(data_dir, SHARED)
    require_file(data_dir, "derm7pt/derm7pt_clinic_128.npz")
    if not _real:
        with np.load(data_dir / SHARED) as z:
            _real["npz"] = {k: z[k] for k in z.files if k != "images"}
        _real["arrays"] = load_dataset(config(layout="shared"), data_dir)
    return _real["npz"], _real["arrays"]


@pytest.mark.data
def test_shared_file_shapes_counts_and_official_split(data_dir):
    z, arrays = real(data_dir)
    counts = {"train": [19, 256, 90, 32, 16], "val": [7, 100, 61, 25, 10], "test": [16, 219, 101, 40, 19]}
    assert {s: len(arrays.splits[s]) for s in SPLITS} == {"train": 413, "val": 203, "test": 395}
    total = np.zeros(5, int)
    for s, split in arrays.splits.items():
        n = len(split)
        assert split.image.shape == (n, 3, 128, 128) and split.image.dtype == np.uint8
        assert np.bincount(split.label, minlength=5).tolist() == counts[s]
        total += np.bincount(split.label, minlength=5)
        assert split.extras["attributes"].shape == (n, 7) and split.extras["attributes"].dtype == np.int64
        assert split.extras["metadata"].shape == (n, 14) and split.extras["metadata"].dtype == np.float32
        assert split.extras["views"].shape == (n, 2, 3, 128, 128)
        assert np.array_equal(split.extras["views"][:, 0], split.image)
        # every case has exactly one sex, elevation and location
        assert np.array_equal(split.extras["metadata"].sum(1), np.full(n, 3.0))
    assert total.tolist() == [42, 575, 252, 97, 45]  # derm7pt/README.md
    # the split is the official one (the npz's `split` key), not a saved split file
    assert not split_path("derm7pt").exists()
    for s, split in enumerate(SPLITS):
        assert arrays.splits[split].ids.tolist() == z["ids"][z["split"] == s].tolist()
    assert "official" in arrays.notes["split_method"]
    assert len(arrays.notes["views_clinic_replaced_by_derm"]) == 9
    assert arrays.notes["views_clinic_replaced_by_derm"] == z["ids"][z["clinic_is_derm"] == 1].tolist()


@pytest.mark.data
def test_shared_file_keeps_label_derived_fields_out(data_dir):
    z, arrays = real(data_dir)
    names = z["metadata_names"].tolist()
    fields = {"management": z["metadata"][:, names.index("management")],
              "level_of_diagnostic_difficulty": z["metadata"][:, names.index("level_of_diagnostic_difficulty")],
              "seven_point_score": z["seven_point_score"], "diagnosis": z["diagnosis"], "melanoma": z["melanoma"]}
    assert leaked_names(arrays, [*fields, "case_id", "notes"]) == []
    assert equal_columns(arrays, {**fields, "label": z["labels"]}, z["ids"]) == []
    # nor is it a linear code of any of them: no field is an exact affine function of the metadata
    x = np.concatenate([arrays.splits[s].extras["metadata"] for s in SPLITS]).astype(np.float64)
    rows = np.concatenate([np.flatnonzero(z["split"] == s) for s in range(3)])
    x = np.c_[x, np.ones(len(x))]
    for field, values in fields.items():
        columns = one_hot(values[rows], int(values.max()) + 1).T.astype(float)
        for target in [values[rows].astype(float), *(c for c in columns if c.any())]:
            residual = target - x @ np.linalg.lstsq(x, target, rcond=None)[0]
            assert np.abs(residual).max() > 0.5, f"{field} is a linear function of the metadata"


@pytest.mark.data
def test_load_dataset_on_the_shared_files_passes_validation(data_dir):
    _, arrays = real(data_dir)  # load_dataset validated it
    assert arrays.spec.name == "derm7pt" and arrays.notes["layout"] == "shared"
    assert len(arrays.checksum) == 64


@pytest.mark.data
@pytest.mark.slow
def test_real_official_release_matches_the_shared_files(data_dir):
    """When the official release_v0 is unpacked beside the npz (not in the shared folder by
    default), reading it gives the shared arrays byte for byte (~10 s: 2022 JPEGs)."""
    require_file(data_dir, "derm7pt/release_v0/meta/meta.csv")
    _, shared = real(data_dir)
    official = load_dataset(config(layout="official"), data_dir)
    for split in SPLITS:
        x, y = shared.splits[split], official.splits[split]
        assert x.ids.tolist() == y.ids.tolist() and np.array_equal(x.label, y.label)
        assert np.array_equal(x.image, y.image)
        for key in x.extras:
            assert np.array_equal(x.extras[key], y.extras[key]), key
