"""Kvasir-SEG colonoscopy polyp segmentation (1000 images, 128×128 RGB) with the committed,
duplicate-aware split `dkbench/data/splits/kvasir_seg.json`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dkbench.data.registry import check_data_files, data_files, register_dataset
from dkbench.data.saved_splits import (
    check_masks,
    load_split,
    masks_to_bbox,
    sha256_file,
    split_indices,
    split_notes,
)
from dkbench.data.spec import DatasetArrays, DatasetSpec, SplitArrays
from dkbench.errors import InvalidDataError, RunConfigError

FILE = Path("kvasir_seg") / "kvasir_seg_128.npz"

HOW = (
    "copy kvasir_seg/kvasir_seg_128.npz from the project's shared dataset folder "
    "(../shared/datasets, see its README.md and kvasir_seg/README.md for how it was built). "
    "The public source is Kvasir-SEG (Jha et al., MMM 2020; datasets.simula.no/kvasir-seg, "
    "research and education use); kvasir_seg/README.md gives the preprocessing."
)


@data_files("kvasir_seg")
def kvasir_files(data_dir: Path, spec: DatasetSpec | None, options: dict) -> list:
    return [(Path(data_dir) / FILE, "Kvasir-SEG file kvasir_seg/kvasir_seg_128.npz", HOW)]


@register_dataset("kvasir_seg")
def read_kvasir_seg(data_dir: Path, spec: DatasetSpec, **options) -> DatasetArrays:
    """Polyp segmentation: image (N, 3, H, W) uint8, label = mask (N, 1, H, W) uint8 in {0, 1}."""
    if options:
        raise RunConfigError(f"dataset '{spec.name}': unknown option(s) {sorted(options)}; it takes none")
    path = Path(data_dir) / FILE
    check_data_files("kvasir_seg", data_dir, spec, options)
    with np.load(path, allow_pickle=False) as z:
        missing = {"images", "masks", "ids"} - set(z.files)
        if missing:
            raise InvalidDataError(f"{path}: lacks arrays {sorted(missing)}; expected the file in kvasir_seg/README.md")
        images, masks, ids = z["images"], z["masks"], z["ids"]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InvalidDataError(f"{path}: images have shape {images.shape} dtype {images.dtype}; expected (N, H, W, 3) uint8")
    check_masks(masks, images, path)
    if images.shape[1:3] != (spec.size, spec.size):
        raise InvalidDataError(
            f"dataset '{spec.name}': {path} holds {images.shape[1]}×{images.shape[2]} images but the "
            f"config says size {spec.size}"
        )

    doc = load_split("kvasir_seg")
    checksum = sha256_file(path)
    splits = {}
    for split, idx in split_indices(ids, doc, data_path=path).items():
        mask = np.ascontiguousarray(masks[idx][:, None])  # (N, 1, H, W) uint8
        extras = {"mask": mask, "bbox": masks_to_bbox(mask)}
        splits[split] = SplitArrays(
            image=np.ascontiguousarray(images[idx].transpose(0, 3, 1, 2)),  # (N, 3, H, W) uint8
            label=mask,
            ids=ids[idx],
            extras={k: v for k, v in extras.items() if k in spec.provides},
        )
    notes = split_notes(doc, checksum)
    notes["data_file"] = str(FILE)
    notes["warnings"].append(  # type: ignore[union-attr]
        "Kvasir-SEG pixels come from a 256×256 JPEG re-export, not the original release "
        "(see kvasir_seg/README.md)."
    )
    return DatasetArrays(spec=spec, splits=splits, checksum=checksum, notes=notes)
