"""Make the committed, deterministic, duplicate-aware splits in src/dkbench/data/splits/.

Run: `.venv/bin/python scripts/make_splits.py --data-dir /work/shared/datasets`
(optionally `--out-dir DIR`, `--only busi`). Re-running on the same data gives byte-identical
JSON files. Each file lists sample ids (the npz `ids`) per split, the duplicate groups that
were kept on one side, the npz's SHA-256 and a one-sentence method.

Duplicates: near-identical images (same frame exported twice, consecutive frames of one
patient) are merged into groups with union-find, and whole groups are assigned to splits, so
no near-copy of a test image is seen in training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

SEED = 0
SPLIT_NAMES = ("train", "val", "test")
OUT_DIR = Path(__file__).resolve().parents[1] / "src/dkbench/data/splits"
CORR_THRESHOLD = 0.99  # Pearson r on 32x32 area-downsampled greyscale images

# Listed in /work/shared/datasets/busi/README.md: byte-identical across classes, and the pairs
# with mean absolute difference < 3 grey levels at 128².
BUSI_KNOWN_PAIRS = [
    ("benign (433)", "malignant (145)"),
    ("normal (51)", "normal (54)"),
    ("normal (55)", "normal (68)"),
    ("benign (233)", "benign (299)"),
    ("benign (284)", "benign (285)"),
    ("malignant (4)", "malignant (5)"),
    ("malignant (18)", "malignant (116)"),
]
# Listed in kvasir_seg/README.md: mean absolute difference < 1 grey level at 128².
KVASIR_KNOWN_PAIRS = [
    ("cju30bmab08bi0835mvlr6e0r", "cju77k828z46w0871r0avuoo9"),
    ("cju76lsehyia10987u54vn8rb", "cju772304yw5t0818vbw8kkjf"),
    ("cju886ryxnsl50801r93jai7q", "cju8amfdtqi4x09871tygrgqe"),
]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- duplicates
def correlated_pairs(images: np.ndarray, threshold: float = CORR_THRESHOLD) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose 32x32 area-downsampled greyscale images have Pearson r > threshold."""
    x = images.astype(np.float64)
    if x.ndim == 4:  # (N, H, W, 3) → grey by channel mean
        x = x.mean(axis=-1)
    n, h, w = x.shape
    x = x.reshape(n, 32, h // 32, 32, w // 32).mean(axis=(2, 4)).reshape(n, -1)
    x -= x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.where(norm > 0, norm, 1.0)
    corr = x @ x.T
    i, j = np.nonzero(np.triu(corr > threshold, k=1))
    return list(zip(i.tolist(), j.tolist()))


def close_pairs(images: np.ndarray, max_mad: float) -> list[tuple[int, int]]:
    """Index pairs (i < j) with mean absolute difference < max_mad grey levels at full size.

    An 8x8 block mean is a lower bound for the MAD (|mean(a-b)| <= mean|a-b|), so it prunes
    exactly; only the survivors are compared at full resolution.
    """
    n, h, w = images.shape[:3]
    rest = images.shape[3:]
    small = images.reshape(n, h // 8, 8, w // 8, 8, *rest).mean(axis=(2, 4)).reshape(n, -1).astype(np.float32)
    full = images.reshape(n, -1).astype(np.int16)
    out = []
    for i in range(n - 1):
        bound = np.abs(small[i + 1 :] - small[i]).mean(axis=1)
        for k in np.nonzero(bound < max_mad)[0]:
            j = i + 1 + int(k)
            if np.abs(full[i] - full[j]).mean() < max_mad:
                out.append((i, j))
    return out


def union_find_groups(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of the pair graph, each sorted, ordered by first member."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for a in range(n):
        comps.setdefault(find(a), []).append(a)
    return sorted(comps.values(), key=lambda g: g[0])


# ----------------------------------------------------------------------------- assignment
def assign_groups(
    groups: list[list[int]], labels: np.ndarray, fractions: tuple[float, ...], seed: int = SEED
) -> np.ndarray:
    """Split index (0..len(fractions)-1) per sample; whole groups go to one split.

    Per-class targets are `fraction * class count`. Multi-member groups are placed first
    (largest first, ties in seeded random order), then singletons in seeded random order; each
    goes to the split whose fill relative to its targets, after adding the group, is lowest for
    the group's classes. This keeps every class close to its target in every split.
    """
    classes = np.unique(labels)
    counts = np.array([(labels == c).sum() for c in classes], dtype=np.float64)
    target = np.outer(np.asarray(fractions), counts)  # (S, C)
    filled = np.zeros_like(target)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(groups))
    order = sorted(order.tolist(), key=lambda g: -len(groups[g]) if len(groups[g]) > 1 else 0)
    assignment = np.full(len(labels), -1, dtype=np.int64)
    for g in order:
        members = groups[g]
        gc = np.array([(labels[members] == c).sum() for c in classes], dtype=np.float64)
        cost = ((filled + gc) / target * gc).sum(axis=1)  # class-weighted relative fill after adding
        s = int(np.argmin(cost))
        filled[s] += gc
        assignment[members] = s
    assert (assignment >= 0).all()
    return assignment


def _split_doc(
    dataset: str,
    npz_path: Path,
    method: str,
    ids: np.ndarray,
    groups: list[list[int]],
    assignment: np.ndarray,
) -> dict:
    ids = ids.astype(str)
    doc = {
        "dataset": dataset,
        "source_sha256": sha256_file(npz_path),
        "method": method,
        "seed": SEED,
        "groups": [[str(ids[i]) for i in g] for g in groups if len(g) > 1],
    }
    for s, name in enumerate(SPLIT_NAMES):
        doc[name] = [str(x) for x in ids[assignment == s]]
    return doc


def _pairs_by_id(ids: np.ndarray, pairs: list[tuple[str, str]], where: str) -> list[tuple[int, int]]:
    pos = {sid: i for i, sid in enumerate(ids.astype(str).tolist())}
    missing = [p for p in pairs if p[0] not in pos or p[1] not in pos]
    if missing:
        raise ValueError(f"{where}: README duplicate pairs {missing} are not in the file's ids")
    return [(pos[a], pos[b]) for a, b in pairs]


# ----------------------------------------------------------------------------- datasets
def busi_split(data_dir: Path) -> dict:
    path = Path(data_dir) / "busi" / "busi_128.npz"
    with np.load(path) as z:
        images, labels, ids = z["images"], z["labels"], z["ids"]
    pairs = _pairs_by_id(ids, BUSI_KNOWN_PAIRS, str(path)) + correlated_pairs(images)
    groups = union_find_groups(len(ids), pairs)
    assignment = assign_groups(groups, labels, (0.7, 0.1, 0.2))
    method = (
        "Class-stratified 70/10/20 split (seed 0) of whole duplicate groups, the union-find "
        "components of the README's byte-identical and near-identical pairs plus every pair "
        f"with Pearson r > {CORR_THRESHOLD} on 32x32 area-downsampled images, assigned greedily "
        "(largest groups first, then seed-shuffled singletons) to the split least filled "
        "relative to its per-class targets."
    )
    return _split_doc("busi", path, method, ids, groups, assignment)


def kvasir_split(data_dir: Path) -> dict:
    path = Path(data_dir) / "kvasir_seg" / "kvasir_seg_128.npz"
    with np.load(path) as z:
        images, ids = z["images"], z["ids"]
    pairs = (
        _pairs_by_id(ids, KVASIR_KNOWN_PAIRS, str(path))
        + close_pairs(images, max_mad=1.0)
        + correlated_pairs(images)
    )
    groups = union_find_groups(len(ids), pairs)
    assignment = assign_groups(groups, np.zeros(len(ids), dtype=np.int64), (0.8, 0.1, 0.1))
    method = (
        "Random 80/10/10 split (seed 0) of whole duplicate groups, the union-find components of "
        "the README's near-duplicate pairs plus every pair with mean absolute difference < 1 "
        f"grey level at 128x128 or Pearson r > {CORR_THRESHOLD} on 32x32 area-downsampled grey "
        "images, assigned greedily (largest groups first, then seed-shuffled singletons) to the "
        "split least filled relative to its target."
    )
    return _split_doc("kvasir_seg", path, method, ids, groups, assignment)


MAKERS = {"busi": busi_split, "kvasir_seg": kvasir_split}


def to_json(doc: dict) -> str:
    """JSON with one group and one id per line: small, stable diffs."""
    d = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
    lines = ["{"]
    for key in ("dataset", "source_sha256", "method", "seed"):
        lines.append(f" {d(key)}: {d(doc[key])},")
    for key in ("groups", *SPLIT_NAMES):
        items = [d(v) for v in doc[key]]
        body = ",\n".join(f"  {v}" for v in items)
        comma = "," if key != SPLIT_NAMES[-1] else ""
        lines.append(f" {d(key)}: [\n{body}\n ]{comma}" if items else f" {d(key)}: []{comma}")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == doc
    return text


def write_splits(data_dir: Path, out_dir: Path = OUT_DIR, only: list[str] | None = None) -> dict[str, Path]:
    """Make and write `<out_dir>/<name>.json` for each dataset; returns name → path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in only or list(MAKERS):
        doc = MAKERS[name](Path(data_dir))
        path = out_dir / f"{name}.json"
        path.write_text(to_json(doc))
        written[name] = path
    return written


def summary(name: str, doc: dict, data_dir: Path) -> str:
    lines = [f"{name}: {len(doc['groups'])} groups ({sum(map(len, doc['groups']))} images)"]
    if name == "busi":
        with np.load(Path(data_dir) / "busi" / "busi_128.npz") as z:
            label = dict(zip(z["ids"].astype(str).tolist(), z["labels"].tolist()))
        names = ("normal", "benign", "malignant")
        total = np.bincount(list(label.values()), minlength=3)
        for s in SPLIT_NAMES:
            c = np.bincount([label[i] for i in doc[s]], minlength=3)
            pct = ", ".join(f"{n} {k} ({100 * k / c.sum():.1f}% vs {100 * t / total.sum():.1f}%)"
                            for n, k, t in zip(names, c, total))
            lines.append(f"  {s:5s} n={c.sum():4d}: {pct}")
    else:
        for s in SPLIT_NAMES:
            lines.append(f"  {s:5s} n={len(doc[s])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="data root holding busi/ and kvasir_seg/")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR, help=f"where to write (default {OUT_DIR})")
    ap.add_argument("--only", nargs="*", choices=sorted(MAKERS), help="datasets to make (default all)")
    args = ap.parse_args(argv)
    for name, path in write_splits(args.data_dir, args.out_dir, args.only).items():
        doc = json.loads(path.read_text())
        print(f"wrote {path}")
        print(summary(name, doc, args.data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
