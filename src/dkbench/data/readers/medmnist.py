"""MedMNIST v2 (Yang et al., Scientific Data 10:41, 2023): 12 2D and 6 3D flags, official splits.

Files are read from `<data_dir>/medmnist/<flag>[_<size>].npz` with the official names and
keys (`{train,val,test}_{images,labels}`), without the `medmnist` package: its dataset classes
assert the official split sizes and its install pulls torchvision (see STACK.md). The URL and
MD5 table is vendored from `medmnist.INFO` (scripts/vendor_medmnist_info.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.request
from functools import cache
from pathlib import Path

import numpy as np

from dkbench.data.registry import (
    MissingDataError,
    check_data_files,
    data_files,
    register_dataset,
)
from dkbench.data.spec import SPLITS, DatasetArrays, DatasetSpec, SplitArrays
from dkbench.errors import InvalidDataError, RunConfigError

SIZES_2D = (28, 64, 128, 224)
SIZES_3D = (28, 64)
#: MedMNIST task strings → dkbench tasks. Ordinal regression (RetinaMNIST) is evaluated as
#: multi-class by the official evaluator, so it is trained and scored as such here.
TASK_MAP = {
    "binary-class": "binary",
    "multi-class": "multiclass",
    "ordinal-regression": "multiclass",
    "multi-label, binary-class": "multilabel",
}


@cache
def medmnist_info() -> dict[str, dict]:
    return json.loads((Path(__file__).parents[1] / "medmnist_info.json").read_text())


def is_3d(flag: str) -> bool:
    return flag.endswith("3d")


def file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def url_and_md5(flag: str, size: int) -> tuple[str, str]:
    info = medmnist_info()[flag]
    suffix = "" if size == 28 else f"_{size}"
    return info[f"url{suffix}"], info[f"MD5{suffix}"]


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(flag: str, size: int, dest: Path, timeout: float = 60.0) -> Path:
    """Fetch the official file, verify its MD5 and move it into place atomically."""
    url, md5 = url_and_md5(flag, size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
        got = md5sum(tmp)
        if got != md5:
            raise OSError(f"MD5 mismatch for {url}: expected {md5}, got {got}; try again")
        tmp.replace(dest)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise MissingDataError(
            f"could not download MedMNIST '{flag}' ({size}px) from {url}: {err}.\n"
            f"  Without internet, copy the official file to {dest} by hand."
        ) from err
    return dest


def _file_and_source(data_dir: Path, flag: str, size: int) -> tuple[Path, str, str]:
    info = medmnist_info()
    if flag not in info:
        raise RunConfigError(f"dataset.options.flag={flag!r} is not a MedMNIST flag; valid flags: "
                             f"{', '.join(sorted(info))}")
    sizes = SIZES_3D if is_3d(flag) else SIZES_2D
    if size not in sizes:
        raise RunConfigError(f"dataset.size={size}: MedMNIST '{flag}' comes in sizes {sizes}; set dataset.size to one")
    url, md5 = url_and_md5(flag, size)
    return Path(data_dir) / "medmnist" / file_name(flag, size), url, md5


@data_files("medmnist")
def medmnist_files(data_dir: Path, spec: DatasetSpec, options: dict) -> list:
    """The official file for (flag, size); none needed up front when the reader may download it."""
    unknown = sorted(set(options) - {"flag", "download"})
    if unknown:
        raise RunConfigError(f"dataset '{spec.name}': unknown option(s) {unknown}; MedMNIST takes "
                             "dataset.options.flag and dataset.options.download")
    path, url, md5 = _file_and_source(data_dir, str(options.get("flag")), int(spec.size))
    if options.get("download"):
        return []
    how = (f"on a machine with internet add `dataset.options.download=true` (fetches {url}, MD5 {md5}), "
           "or download it yourself to that path.")
    return [(path, f"MedMNIST file for '{options.get('flag')}' at {spec.size}px", how)]


def resolve_file(data_dir: Path, spec: DatasetSpec, flag: str, allow_download: bool) -> Path:
    path, _, _ = _file_and_source(data_dir, flag, int(spec.size))
    if not path.exists() and allow_download:
        return download(flag, int(spec.size), path)
    check_data_files("medmnist", data_dir, spec, {"flag": flag, "download": False})
    return path


def to_channels_first(images: np.ndarray, spatial_dims: int) -> np.ndarray:
    """(N,H,W) → (N,1,H,W); (N,H,W,3) → (N,3,H,W); (N,D,H,W) 3D → (N,1,D,H,W)."""
    if images.ndim == spatial_dims + 1:
        return images[:, None]
    return np.ascontiguousarray(np.moveaxis(images, -1, 1))


def _labels(raw: np.ndarray, task: str, where: str) -> np.ndarray:
    """Integer class indices (multilabel: 0/1 rows); a non-integral value is refused, never
    truncated by the cast."""
    if not np.array_equal(raw, np.round(raw)):
        raise InvalidDataError(f"{where}: labels hold non-integral values (e.g. {raw[raw != np.round(raw)].flat[0]!r}); "
                               "class indices must be whole numbers: fix the file's labels")
    if task == "multilabel":
        return raw.astype(np.int64)
    return raw.reshape(len(raw), -1)[:, 0].astype(np.int64)


@register_dataset("medmnist")
def read_medmnist(data_dir: Path, spec: DatasetSpec, flag: str, download: bool = False, **unknown) -> DatasetArrays:
    if unknown:
        medmnist_files(data_dir, spec, {"flag": flag, **unknown})  # raises, naming them
    path = resolve_file(Path(data_dir), spec, flag, download)
    info = medmnist_info()[flag]
    task = TASK_MAP[info["task"]]
    if task != spec.task or len(info["label"]) != spec.num_classes:
        raise ValueError(
            f"configs/dataset/{spec.name}.yaml says task={spec.task}, num_classes={spec.num_classes}; "
            f"the official INFO says {task}, {len(info['label'])}. Fix the YAML."
        )
    with np.load(path, allow_pickle=False) as npz:
        missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in npz]
        if missing:
            raise InvalidDataError(f"{path} lacks the official keys {missing}; is it a MedMNIST file?")
        for s in SPLITS:
            n_images, n_labels = len(npz[f"{s}_images"]), len(npz[f"{s}_labels"])
            if n_images != n_labels:
                raise InvalidDataError(f"{path}, split {s}: {n_labels} labels for {n_images} images; every "
                                       f"image needs exactly one label row (keys {s}_images / {s}_labels)")
        splits = {
            s: SplitArrays(
                image=to_channels_first(npz[f"{s}_images"], spec.spatial_dims),
                label=_labels(npz[f"{s}_labels"], task, f"{path}, key {s}_labels"),
                ids=np.array([f"{flag}-{s}-{i:06d}" for i in range(len(npz[f"{s}_labels"]))]),
            )
            for s in SPLITS
        }
    official = info["n_samples"]
    sizes = {s: len(a) for s, a in splits.items()}
    notes = {"file": str(path), "official_split": True}
    if sizes != official:  # tests use small files; say so in the metadata, never fail
        notes["warning"] = f"split sizes {sizes} differ from the official {official}"
    return DatasetArrays(spec=spec, splits=splits, checksum=sha256sum(path), notes=notes)
