"""Lesion detection datasets: BUSI, Kvasir-SEG and the knowledge probe with boxes.

None of the three ships boxes: every box is DERIVED from the lesion masks, one box per
8-connected component of the mask at the file's resolution (`dkbench.data.detection.
boxes_from_masks`), so two touching lesions are one box and a lesion drawn in two pieces is two.
Each reader is its segmentation reader (same file, same committed split, same duplicate
grouping) with the mask turned into box rows, so the detection and segmentation variants never
disagree on which image is in which split.

* ``busi_det``: BUSI (Al-Dhabyani et al., Data in Brief 28:104863, 2020). With
  ``include_normal`` (default true) the 133 normal images are kept as negatives (no box):
  false positives on normal tissue then count, as in a screening reading. 15 of the 647 lesion
  images have two components at 128 px.
* ``kvasir_det``: Kvasir-SEG polyps (Jha et al., MMM 2020); every image has a polyp (no
  negatives); 48 of the 1000 images have several components (up to 10).
* ``probe_det``: the synthetic probe (`readers/probe.py`). Here the boxes are KNOWN, not
  derived from components: the generator renders one lesion per image, so its box is the
  lesion's bounding box (the reader's `bbox`), even where a thin spicule leaves a few pixels
  disconnected from the body of the lesion at 64 px (5 of the 799 lesions of the default splits:
  components would count them as extra lesions). The faint distractor blobs are not lesions (false
  positives are possible) and ``normal_class: true`` adds images without a lesion as negatives.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dkbench.data.detection import box_counts, boxes_from_masks, pad_boxes
from dkbench.data.readers.busi import FILE as BUSI_FILE
from dkbench.data.readers.busi import HOW as BUSI_HOW
from dkbench.data.readers.busi import _check_options, _flag, read_busi_seg
from dkbench.data.readers.kvasir import FILE as KVASIR_FILE
from dkbench.data.readers.kvasir import HOW as KVASIR_HOW
from dkbench.data.readers.kvasir import read_kvasir_seg
from dkbench.data.readers.probe import DIFFICULTY_FORMULA, GENERATOR_VERSION, generate_split, options_checksum, \
    resolve_options
from dkbench.data.registry import data_files, register_dataset
from dkbench.data.spec import SPLITS, DatasetArrays, DatasetSpec, SplitArrays
from dkbench.errors import RunConfigError

BOXES_NOTE = ("boxes DERIVED from the lesion masks: one box per 8-connected mask component at the file's "
              "resolution (dkbench.data.detection.boxes_from_masks), scaled with dataset.resize; no reader "
              "annotation of boxes exists")


def _check_detection_spec(spec: DatasetSpec) -> None:
    if spec.task != "detection" or spec.num_classes != 1:
        raise RunConfigError(f"dataset '{spec.name}': a lesion detection dataset has task: detection and "
                             f"num_classes: 1 (foreground classes: lesion); the config says task={spec.task}, "
                             f"num_classes={spec.num_classes}")


def _as_detection(seg: DatasetArrays, spec: DatasetSpec, source: str, labels: dict | None = None,
                  boxes_note: str = BOXES_NOTE) -> DatasetArrays:
    """A segmentation dataset's arrays with each mask label turned into box rows (or `labels`,
    split → box rows, when the boxes are known otherwise)."""
    splits = {name: SplitArrays(image=split.image, ids=split.ids, extras=split.extras,
                                label=boxes_from_masks(split.label) if labels is None else labels[name])
              for name, split in seg.splits.items()}
    counts = {name: {"images": len(split), "negatives": int((box_counts(split.label) == 0).sum()),
                     "boxes": int(box_counts(split.label).sum())} for name, split in splits.items()}
    notes = {**seg.notes, "boxes": boxes_note, "box_source": source, "box_counts": counts}
    return DatasetArrays(spec=spec, splits=splits, checksum=seg.checksum, notes=notes)


def _segmentation_spec(spec: DatasetSpec) -> DatasetSpec:
    return replace(spec, task="segmentation", num_classes=2, class_names=("background", *spec.class_names))


# --- BUSI ------------------------------------------------------------------------------
@data_files("busi_det")
def busi_det_files(data_dir: Path, spec: DatasetSpec | None, options: dict) -> list:
    _check_options(spec.name if spec else "busi_det", options, {"include_normal"})
    return [(Path(data_dir) / BUSI_FILE, "BUSI file busi/busi_128.npz", BUSI_HOW)]


@register_dataset("busi_det")
def read_busi_det(data_dir: Path, spec: DatasetSpec, **options: Any) -> DatasetArrays:
    """BUSI lesion detection; option `include_normal` (default true: normal images as negatives)."""
    _check_options(spec.name, options, {"include_normal"})
    _check_detection_spec(spec)
    include_normal = _flag(spec.name, options, "include_normal", True)
    seg = read_busi_seg(data_dir, _segmentation_spec(spec), include_normal=include_normal)
    arrays = _as_detection(seg, spec, "busi_seg masks (merged mask files of each image)")
    arrays.notes["include_normal"] = include_normal
    return arrays


# --- Kvasir-SEG ------------------------------------------------------------------------
@data_files("kvasir_det")
def kvasir_det_files(data_dir: Path, spec: DatasetSpec | None, options: dict) -> list:
    return [(Path(data_dir) / KVASIR_FILE, "Kvasir-SEG file kvasir_seg/kvasir_seg_128.npz", KVASIR_HOW)]


@register_dataset("kvasir_det")
def read_kvasir_det(data_dir: Path, spec: DatasetSpec, **options: Any) -> DatasetArrays:
    """Kvasir-SEG polyp detection (every image holds at least one polyp)."""
    _check_detection_spec(spec)
    return _as_detection(read_kvasir_seg(data_dir, _segmentation_spec(spec), **options), spec, "kvasir_seg masks")


# --- the probe -------------------------------------------------------------------------
#: extras of the probe: aligned with its boxes (mask, bbox), per image (difficulty), and the second view, which
#: re-renders the same lesion elsewhere (no box correspondence: a detector can only read it as global context,
#: strategy multiview)
PROBE_DET_EXTRAS = ("mask", "bbox", "difficulty", "views")


@data_files("probe_det")
def probe_det_files(data_dir: Path, spec: DatasetSpec | None, options: dict) -> list:
    resolve_options(options)  # no file; bad options are refused before a run folder exists
    return []


@register_dataset("probe_det")
def read_probe_det(data_dir: Path, spec: DatasetSpec, **options: Any) -> DatasetArrays:
    """The probe as lesion detection: one box per lesion, none for `normal_class` images."""
    opts = resolve_options(options)
    _check_detection_spec(spec)
    if spec.in_chans != 1 or spec.spatial_dims != 2 or spec.size < 32:
        raise RunConfigError(f"dataset '{spec.name}': the probe is 2-D grey-level (in_chans 1, spatial_dims 2, "
                             f"size >= 32)")
    unknown = set(spec.provides) - set(PROBE_DET_EXTRAS)
    if unknown:
        raise RunConfigError(f"dataset '{spec.name}': probe_det can provide {list(PROBE_DET_EXTRAS)}, "
                             f"not {sorted(unknown)}")
    splits, labels = {}, {}
    for split in SPLITS:
        arr = generate_split(opts[f"n_{split}"], size=spec.size, split=split, options=opts)
        splits[split] = SplitArrays(image=arr.image, label=arr.extras["mask"], ids=arr.ids,
                                    extras={k: arr.extras[k] for k in spec.provides})
        bbox = arr.extras["bbox"]  # one lesion per image (NaN: a normal image)
        labels[split] = pad_boxes([b[None] if np.isfinite(b).all() else np.zeros((0, 4), np.float32) for b in bbox])
    seg = DatasetArrays(spec=spec, splits=splits, checksum=options_checksum(opts, spec.size),
                        notes={"generator": f"dkbench probe v{GENERATOR_VERSION}", "options": opts,
                               "difficulty_formula": DIFFICULTY_FORMULA})
    return _as_detection(seg, spec, "the generator's lesions: one lesion per image, its bounding box", labels,
                         "boxes KNOWN from the generator: the rendered lesion's bounding box (one per lesion image), "
                         "scaled with dataset.resize")
