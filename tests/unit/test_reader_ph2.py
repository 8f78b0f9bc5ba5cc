"""PH² reader (Mendonça et al., EMBC 2013): the official release layout on a tiny synthetic
fixture written here (BMPs, an .xlsx written with the standard library, the `||` .txt), the
shared .npz layout, the codings, the label-derived `histology`, options and one-line errors.

Tests marked `data` read the real shared file under DKBENCH_DATA and skip when it is absent; the
others use no real PH² data.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
import yaml

from dkbench.data.loading import load_dataset
from dkbench.data.readers import ph2
from dkbench.data.registry import MissingDataError, check_data_files
from dkbench.data.saved_splits import load_split, masks_to_bbox, sha256_file
from dkbench.data.spec import SPLITS
from dkbench.data.tabular import read_image, read_mask
from dkbench.errors import InvalidDataError, RunConfigError
from tests.conftest import require_file

REPO = Path(__file__).resolve().parents[2]
SIZE = 32  # the fixture is read at 32 px: the rules do not depend on the size, the test's speed does

# id, clinical class (0 common nevus, 1 atypical nevus, 2 melanoma), histology, asymmetry, pigment
# network, dots/globules, streaks, regression areas, blue-whitish veil, colour codes (1 white,
# 2 red, 3 light brown, 4 dark brown, 5 blue-gray, 6 black). Written out of id order on purpose.
CASES = [
    ("IMD417", 2, "Melanoma", "2", "AT", "AT", "A", "P", "P", (1, 3, 4, 5)),
    ("IMD003", 0, "", "0", "T", "A", "A", "A", "A", (4,)),
    ("IMD146", 0, "", "1", "T", "A", "P", "A", "A", (2, 3, 4)),
    ("IMD048", 1, "Dysplastic Nevus", "0", "AT", "T", "A", "A", "A", (3,)),
    ("IMD020", 1, "Dysplastic Nevus", "2", "T", "AT", "A", "P", "P", (3, 4, 6)),
    ("IMD242", 2, "Lentigo Maligna", "2", "AT", "A", "A", "A", "A", (3, 4, 6)),
    ("IMD101", 0, "", "0", "T", "T", "A", "A", "A", (3, 4)),
]
IDS = sorted(c[0] for c in CASES)
#: expected attribute rows (criteria codes, then colour flags) by id
EXPECTED = {
    "IMD003": [0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
    "IMD020": [2, 1, 2, 0, 1, 1, 0, 0, 1, 1, 0, 1],
    "IMD048": [0, 2, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0],
    "IMD101": [0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0],
    "IMD146": [1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0, 0],
    "IMD242": [2, 2, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1],
    "IMD417": [2, 2, 2, 0, 1, 1, 1, 0, 1, 1, 1, 0],
}
LABEL = {c[0]: c[1] for c in CASES}
HISTOLOGY = {c[0]: c[2] for c in CASES}
# every split holds two classes at least (loading.validate)
SPLIT = {"train": ["IMD003", "IMD048", "IMD417"], "val": ["IMD146", "IMD242"], "test": ["IMD020", "IMD101"]}


# --- fixture writers ----------------------------------------------------------------------------
def _xlsx(path: Path, rows: dict[int, dict[str, object]]) -> None:
    """A minimal .xlsx (one sheet "Folha1"): str → shared string, int → number, ("inline", s) →
    inline string, as Excel writes them."""
    strings: list[str] = []
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    xml_rows = []
    for r, cells in sorted(rows.items()):
        xml_cells = []
        for col, value in cells.items():
            ref = f"{col}{r}"
            if isinstance(value, tuple):
                xml_cells.append(f'<c r="{ref}" t="inlineStr"><is><t>{escape(value[1])}</t></is></c>')
            elif isinstance(value, int):
                xml_cells.append(f'<c r="{ref}"><v>{value}</v></c>')
            else:
                strings.append(value)
                xml_cells.append(f'<c r="{ref}" t="s"><v>{len(strings) - 1}</v></c>')
        xml_rows.append(f'<row r="{r}">{"".join(xml_cells)}</row>')
    shared = "".join(f"<si><t>{escape(s)}</t></si>" for s in strings)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("xl/workbook.xml", f'<workbook {ns} xmlns:r="{rel}"><sheets>'
                                      f'<sheet name="Folha1" sheetId="2" r:id="rId1"/></sheets></workbook>')
        z.writestr("xl/_rels/workbook.xml.rels",
                   '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                   f'<Relationship Id="rId1" Type="{rel}/worksheet" Target="worksheets/sheet1.xml"/></Relationships>')
        z.writestr("xl/sharedStrings.xml", f'<sst {ns} count="{len(strings)}">{shared}</sst>')
        z.writestr("xl/worksheets/sheet1.xml", f'<worksheet {ns}><sheetData>{"".join(xml_rows)}</sheetData></worksheet>')


HEADER = ["Image Name", "Histological Diagnosis", "Common Nevus", "Atypical Nevus", "Melanoma",
          "Asymmetry\n(0/1/2)", "Pigment Network\n(AT/T)", "Dots/Globules\n(A/AT/T)", "Streaks\n(A/P)",
          "Regression Areas\n(A/P)", "Blue-Whitish Veil\n(A/P)", "White", "Red", "Light-Brown",
          "Dark-Brown", "Blue-Gray", "Black"]
COLS = "ABCDEFGHIJKLMNOPQ"


def write_xlsx(path: Path, cases=CASES) -> None:
    """The release's sheet: a legend block, a group-header row, the header row "Image Name" (13),
    one row per image with "X" marks for the diagnosis and the colours."""
    rows: dict[int, dict[str, object]] = {2: {"F": "Legends"}, 3: {"F": "Asymmetry", "G": 0, "H": "Fully Simmetric"},
                                          6: {"G": "AT", "H": "Atypical"}, 8: {"G": "A", "H": "Absent"},
                                          12: {"C": "Clinical Diagnosis", "L": "Colors"},
                                          13: dict(zip(COLS, HEADER))}
    for r, (image_id, label, histology, asym, *criteria, colours) in enumerate(cases, start=14):
        cells: dict[str, object] = {"A": image_id, "CDE"[label]: "X", "F": int(asym)}
        if histology:  # one inline string, as some writers store it
            cells["B"] = ("inline", histology) if histology == "Melanoma" else histology
        cells.update(dict(zip("GHIJK", criteria)))
        cells.update({"LMNOPQ"[c - 1]: "X" for c in colours})
        rows[r] = cells
    _xlsx(path, rows)


def write_txt(path: Path, cases=CASES) -> None:
    """The release's text table: `||`-separated, criteria `|`-separated, colours spaced codes,
    an empty histology field kept, legend lines after the rows."""
    header = ("||   Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry | Pigment Network | "
              "Dots/Globules | Streaks | Regression Areas | Blue-Whitish Veil ||           Colors ||")
    lines = [header]
    for image_id, label, histology, *criteria, colours in cases:
        lines.append(f"|| {image_id} || {histology:>22} || {label:>18} || "
                     + " | ".join(f"{v:>9}" for v in criteria) + f" || {'  '.join(map(str, colours)):>16} ||")
    lines += ["", "Legends:", "Clinical Diagnosis: 0 - Common Nevus; 1 - Atypical Nevus; 2 - Melanoma."]
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")


def write_images(root: Path) -> None:
    """Random RGB BMPs (H 30 × W 40, like the release's landscape frames) and elliptic lesion
    masks, one of them a 1-bit BMP as some release masks are."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for k, image_id in enumerate(IDS):
        image_path, mask_path = ph2.image_paths(root, image_id)
        image_path.parent.mkdir(parents=True)
        mask_path.parent.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(image_path)
        mask = Image.new("L", (40, 30))
        ImageDraw.Draw(mask).ellipse((5 + k, 4, 25 + k, 22), fill=255)
        (mask.convert("1") if k == 0 else mask).save(mask_path)


@pytest.fixture
def release(tmp_path, monkeypatch) -> Path:
    """<tmp>/ph2 in the official layout (both tables) and a split file for the fixture's ids."""
    root = tmp_path / "ph2"
    write_images(root)
    write_xlsx(root / ph2.XLSX)
    write_txt(root / ph2.TXT)
    doc = {"dataset": "ph2", "source_sha256": "", "method": "fixture", "seed": 0, "groups": [], **SPLIT}
    split_file = tmp_path / "ph2_split.json"
    split_file.write_text(json.dumps(doc))
    monkeypatch.setattr(ph2, "load_split", lambda name, path=None: load_split(name, split_file))
    return tmp_path


def config(**options) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / "dataset" / "ph2.yaml").read_text())
    cfg["size"] = SIZE
    cfg["options"] = {**cfg["options"], **options}
    return cfg


def write_shared(data_dir: Path) -> Path:
    """A shared-layout file made from the fixture's release, rows shuffled (the reader sorts)."""
    root = data_dir / "ph2"
    order = [IDS[i] for i in (3, 0, 6, 2, 5, 1, 4)]
    paths = [ph2.image_paths(root, i) for i in order]
    path = data_dir / ph2.SHARED_FILE
    np.savez(path, images=np.stack([read_image(p, SIZE) for p, _ in paths]),
             masks=np.stack([read_mask(m, SIZE) for _, m in paths]),
             labels=np.array([LABEL[i] for i in order], np.int64), ids=np.array(order),
             attributes=np.array([EXPECTED[i][:6] for i in order], np.int64),
             colors=np.array([EXPECTED[i][6:] for i in order], np.int64),
             histology=np.array([HISTOLOGY[i] for i in order]))
    return path


def assert_same(a, b) -> None:
    for split in SPLITS:
        x, y = a.splits[split], b.splits[split]
        assert x.ids.tolist() == y.ids.tolist()
        assert np.array_equal(x.image, y.image) and np.array_equal(x.label, y.label)
        assert x.extras.keys() == y.extras.keys()
        for key in x.extras:
            assert np.array_equal(x.extras[key], y.extras[key], equal_nan=True), key


# --- the annotation table -----------------------------------------------------------------------
def test_xlsx_and_txt_tables_agree_and_follow_the_legend(release):
    root = release / "ph2"
    xlsx, txt = ph2.read_table(root / ph2.XLSX), ph2.read_table(root / ph2.TXT)
    assert xlsx.ids.tolist() == IDS  # sorted by id
    for field in ("ids", "labels", "criteria", "colors", "histology"):
        assert np.array_equal(getattr(xlsx, field), getattr(txt, field)), field
    assert xlsx.labels.tolist() == [LABEL[i] for i in IDS]
    assert np.array_equal(np.concatenate([xlsx.criteria, xlsx.colors], 1), [EXPECTED[i] for i in IDS])
    # the empty histology field does not shift the later columns, the inline string is read
    assert xlsx.histology.tolist() == [HISTOLOGY[i] for i in IDS]


def test_xlsx_cells_reads_shared_inline_and_numeric_cells(tmp_path):
    path = tmp_path / "t.xlsx"
    _xlsx(path, {1: {"A": "Image Name", "B": "Asymmetry\n(0/1/2)"}, 3: {"A": ("inline", "IMD001"), "B": 2, "AB": "X"}})
    assert ph2.xlsx_cells(path) == {1: {"A": "Image Name", "B": "Asymmetry\n(0/1/2)"},
                                    3: {"A": "IMD001", "B": "2", "AB": "X"}}


# --- the official layout ------------------------------------------------------------------------
def test_official_layout_round_trip(release):
    arrays = load_dataset(config(layout="official"), release)
    root = release / "ph2"
    assert arrays.notes["data_layout"] == "official" and arrays.notes["data_file"] == "ph2/PH2_dataset.xlsx"
    assert arrays.notes["attribute_names"] == [*ph2.CRITERIA, *ph2.COLORS]
    assert arrays.notes["attribute_coding"]["pigment_network"] == ["absent (A)", "typical (T)", "atypical (AT)"]
    for split in SPLITS:
        s = arrays.splits[split]
        ids = s.ids.tolist()
        assert ids == sorted(SPLIT[split])
        assert s.label.dtype == np.int64 and s.label.tolist() == [LABEL[i] for i in ids]
        assert s.image.shape == (len(ids), 3, SIZE, SIZE) and s.image.dtype == np.uint8
        images = np.stack([read_image(ph2.image_paths(root, i)[0], SIZE) for i in ids]).transpose(0, 3, 1, 2)
        assert np.array_equal(s.image, images)
        mask = s.extras["mask"]
        assert mask.shape == (len(ids), 1, SIZE, SIZE) and set(np.unique(mask)) == {0, 1}
        assert np.array_equal(mask[:, 0], np.stack([read_mask(ph2.image_paths(root, i)[1], SIZE) for i in ids]))
        assert np.array_equal(s.extras["bbox"], masks_to_bbox(mask))
        assert s.extras["attributes"].dtype == np.int64
        assert s.extras["attributes"].tolist() == [EXPECTED[i] for i in ids]
    assert len(arrays.checksum) == 64


def test_txt_alone_and_the_unpacked_archive_folder_give_the_same_arrays(release):
    reference = load_dataset(config(layout="official"), release)
    (release / "ph2" / ph2.XLSX).unlink()
    from_txt = load_dataset(config(layout="official"), release)
    assert from_txt.notes["data_file"] == "ph2/PH2_dataset.txt"
    assert_same(reference, from_txt)
    # the archive unpacks to PH2Dataset/: accepted inside <data_dir>/ph2/
    shutil.move(release / "ph2", release / "PH2Dataset")
    (release / "ph2").mkdir()
    shutil.move(release / "PH2Dataset", release / "ph2" / "PH2Dataset")
    assert_same(reference, load_dataset(config(layout="auto"), release))


def test_shared_and_official_layouts_give_identical_arrays(release):
    official = load_dataset(config(layout="auto"), release)  # no shared file: auto reads the release
    assert official.notes["data_layout"] == "official"
    write_shared(release)
    shared = load_dataset(config(layout="auto"), release)  # the shared file wins when present
    assert shared.notes["data_layout"] == "shared" and shared.notes["data_file"] == "ph2/ph2_128.npz"
    assert_same(shared, official)
    assert_same(shared, load_dataset(config(layout="official"), release))


def test_include_colors_false_keeps_the_six_criteria(release):
    arrays = load_dataset(config(layout="official", include_colors=False), release)
    assert arrays.notes["attribute_names"] == list(ph2.CRITERIA)
    for s in arrays.splits.values():
        assert s.extras["attributes"].tolist() == [EXPECTED[i][:6] for i in s.ids.tolist()]


# --- label-derived: histology -------------------------------------------------------------------
def assert_histology_absent(arrays, histology: dict[str, str]) -> None:
    """`histology` reaches no extra, attribute or metadata column, under any name or encoding."""
    assert "histology" in arrays.spec.label_derived and "histology" not in arrays.spec.provides
    assert "histology" not in arrays.notes["attribute_names"]
    for split in arrays.splits.values():
        assert set(split.extras) == {"mask", "bbox", "attributes"}  # no metadata, no text
        assert not any(v.dtype.kind in "US" for v in split.extras.values())
    ids = np.concatenate([s.ids for s in arrays.splits.values()]).tolist()
    attributes = np.concatenate([s.extras["attributes"] for s in arrays.splits.values()])
    given = np.array([histology[i] for i in ids])
    for j, column in enumerate(attributes.T):  # neither the string (its one-hot) nor "given or not"
        assert not same_partition(column, given), f"attribute column {j} encodes histology"
        assert not same_partition(column, given != ""), f"attribute column {j} encodes whether histology is given"


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether `a` and `b` group the samples identically (each is a relabelling of the other)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_histology_never_reaches_a_strategy(release):
    cfg = yaml.safe_load((REPO / "configs" / "dataset" / "ph2.yaml").read_text())
    assert cfg["label_derived"] == ["histology"] and "metadata" not in cfg["provides"]
    write_shared(release)  # the shared file carries `histology`: it must not be read either
    for layout in ("official", "shared"):
        assert_histology_absent(load_dataset(config(layout=layout), release), HISTOLOGY)


# --- options and errors -------------------------------------------------------------------------
@pytest.mark.parametrize("options, match", [({"colours": True}, "valid options: \\['include_colors', 'layout'\\]"),
                                            ({"layout": "raw"}, "valid layouts"),
                                            ({"include_colors": "yes"}, "true or false")])
def test_bad_options_are_refused_before_reading(release, options, match):
    cfg = config(**options)
    with pytest.raises(RunConfigError, match=match):
        check_data_files("ph2", release, None, cfg["options"])  # the pre-flight
    with pytest.raises(RunConfigError, match=match):
        load_dataset(cfg, release)


def test_missing_files_are_refused_in_one_line(release, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(MissingDataError) as err:
        load_dataset(config(), empty)
    msg = str(err.value)
    assert "\n" not in msg and "ph2/ph2_128.npz" in msg and ph2.OFFICIAL_URL in msg
    with pytest.raises(MissingDataError, match="PH2_dataset.xlsx"):
        check_data_files("ph2", empty, None, {"layout": "official"})
    mask = ph2.image_paths(release / "ph2", "IMD146")[1]
    mask.unlink()
    with pytest.raises(MissingDataError) as err:
        check_data_files("ph2", release, None, {"layout": "official"})  # pre-flight: before any image is read
    assert str(mask) in str(err.value) and "\n" not in str(err.value) and ph2.OFFICIAL_URL in str(err.value)


def test_bad_table_content_names_the_file_and_the_fix(release):
    root = release / "ph2"
    bad = [list(c) for c in CASES]
    bad[1][6] = "Q"  # IMD003 streaks
    write_txt(root / ph2.TXT, [tuple(c) for c in bad])
    with pytest.raises(InvalidDataError, match=r"PH2_dataset.txt: IMD003 has streaks='Q'.*\['A', 'P'\]"):
        ph2.read_table(root / ph2.TXT)
    two = [list(c) for c in CASES]
    write_xlsx(root / ph2.XLSX, [tuple(c) for c in two])
    with zipfile.ZipFile(root / ph2.XLSX) as z:  # mark IMD417 also as a common nevus
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
        strings = z.read("xl/sharedStrings.xml").decode()
    x_index = strings.split("<si>").index("<t>X</t></si>") - 1
    sheet = sheet.replace('<c r="A14"', f'<c r="C14" t="s"><v>{x_index}</v></c><c r="A14"')
    _rewrite(root / ph2.XLSX, "xl/worksheets/sheet1.xml", sheet)
    with pytest.raises(InvalidDataError, match="IMD417 has 2 clinical diagnosis columns marked"):
        load_dataset(config(layout="official"), release)
    (root / ph2.XLSX).write_bytes(b"not a zip")
    with pytest.raises(InvalidDataError, match="not a readable .xlsx"):
        ph2.read_table(root / ph2.XLSX)


def _rewrite(path: Path, member: str, text: str) -> None:
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[member] = text.encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def test_bad_shared_file_is_refused(release):
    path = write_shared(release)
    with pytest.raises(InvalidDataError, match="config says size 64"):
        load_dataset({**config(layout="shared"), "size": 64}, release)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "colors"}
    np.savez(path, **arrays)
    with pytest.raises(InvalidDataError, match=r"lacks arrays \['colors'\]"):
        load_dataset(config(layout="shared"), release)


# --- the shared file (real data) ----------------------------------------------------------------
SHARED = "ph2/ph2_128.npz"
_loaded: dict[str, object] = {}


def shared(data_dir: Path):
    require_file(data_dir, SHARED)
    if "arrays" not in _loaded:
        cfg = yaml.safe_load((REPO / "configs" / "dataset" / "ph2.yaml").read_text())
        _loaded["arrays"] = load_dataset({**cfg, "options": {**cfg["options"], "layout": "shared"}}, data_dir)
    return _loaded["arrays"]


@pytest.mark.data
def test_shared_file_shapes_counts_and_split(data_dir):
    arrays = shared(data_dir)  # load_dataset has validated it
    doc = load_split("ph2")
    assert doc["source_sha256"] == sha256_file(data_dir / SHARED) == arrays.checksum
    assert not arrays.notes["warnings"][:-1]  # only the leakage warning: the split's file is this one
    counts = {"train": [48, 48, 24], "val": [16, 16, 8], "test": [16, 16, 8]}  # 80 / 80 / 40 in all
    for split in SPLITS:
        s = arrays.splits[split]
        assert sorted(s.ids.tolist()) == sorted(doc[split]) and s.ids.tolist() == sorted(s.ids.tolist())
        assert np.bincount(s.label, minlength=3).tolist() == counts[split]
        n = len(s)
        assert s.image.shape == (n, 3, 128, 128) and s.extras["mask"].shape == (n, 1, 128, 128)
        assert s.extras["bbox"].shape == (n, 4) and not np.isnan(s.extras["bbox"]).any()
        assert s.extras["attributes"].shape == (n, 12) and (s.extras["attributes"] >= 0).all()
    together = [split for split in SPLITS if {"IMD199", "IMD200"} & set(arrays.splits[split].ids.tolist())]
    assert len(together) == 1
    # pigment network is never absent, and atypical in no common nevus (the documented caveat)
    attrs = np.concatenate([s.extras["attributes"] for s in arrays.splits.values()])
    labels = np.concatenate([s.label for s in arrays.splits.values()])
    assert (attrs[:, 1] != 0).all() and not ((attrs[:, 1] == 2) & (labels == 0)).any()


@pytest.mark.data
def test_shared_histology_never_reaches_a_strategy(data_dir):
    arrays = shared(data_dir)
    with np.load(data_dir / SHARED) as z:
        histology = dict(zip(z["ids"].tolist(), z["histology"].tolist()))
    assert sum(bool(v) for v in histology.values()) == 41
    assert_histology_absent(arrays, histology)


@pytest.mark.data
def test_official_release_matches_the_shared_file(data_dir):
    """Where the release is unpacked next to the shared file, both layouts give the same arrays."""
    require_file(data_dir, SHARED)
    root = ph2.official_root(data_dir)
    if ph2._table_in(root) is None or ph2._table_in(root).suffix != ".xlsx":
        pytest.skip(f"the PH² release (with {ph2.XLSX}) is not unpacked under {data_dir / 'ph2'}")
    cfg = yaml.safe_load((REPO / "configs" / "dataset" / "ph2.yaml").read_text())
    official = load_dataset({**cfg, "options": {**cfg["options"], "layout": "official"}}, data_dir)
    assert_same(shared(data_dir), official)
