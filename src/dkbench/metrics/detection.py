"""Detection metrics the field reports: COCO-style AP and FROC sensitivities, plus per-image rows.

- **mAP@IoU 0.5 and 0.1** (`map50`, `map10`): MONAI's `COCOMetric` (101-point interpolated
  precision, at most `max_detections` = 100 boxes per image, mean over classes) on MONAI's
  `matching_batch` (greedy by score, one detection per lesion). IoU 0.1 is the lenient criterion
  used for small lesions (MONAI's LUNA16 detection tutorial validates at 0.1).
- **FROC** (`froc_fp1_8` … `froc_fp8`, `froc_mean`): the lesion-level sensitivity at 1/8, 1/4, 1/2,
  1, 2, 4 and 8 false positives per image and their mean, as LUNA16 (Setio et al., MedIA 42:1-13,
  2017) and DeepLesion (Yan et al., J. Med. Imaging 5(3):036501, 2018) report it; the curve and
  the interpolated sensitivities come from MONAI's `compute_froc_curve_data` /
  `compute_froc_score`. A detection hits a lesion when `matching_batch` pairs them at IoU ≥
  `froc_iou` (default 0.5, DeepLesion's criterion; LUNA16 uses a centre-distance rule instead);
  every unpaired detection, duplicates on one lesion included, is a false positive, so the FROC
  and the AP count the same hits. False positives per image are over ALL test images, negatives
  included.

Conventions, stated because detection benchmarks silently differ on them:
- MONAI's FROC curve (from CAMELYON16's code) starts at the second-lowest score, because there a
  missed lesion is a 0 among the hit scores; a 0 is added to the false-positive scores here, so
  every real detection score is a threshold and a 0 never counts (scores must be > 0, which the
  detector's score threshold ensures).
- No lesion in the evaluated set: AP, FROC and recall are NaN (undefined), never 0 or -1.
- No detection at all: AP 0 and every FROC sensitivity 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

FROC_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MAX_DETECTIONS = 100


def froc_key(rate: float) -> str:
    """`froc_fp1_8` … `froc_fp8`: the sensitivity at `rate` false positives per image (no dot in
    the name, so it stays one token in Hydra overrides and CSV headers)."""
    from fractions import Fraction

    f = Fraction(rate).limit_denominator(64)
    return f"froc_fp{f.numerator}" if f.denominator == 1 else f"froc_fp{f.numerator}_{f.denominator}"


#: what validation and test log (as <stage>/<name>), in this order
DETECTION_METRICS: tuple[str, ...] = ("map50", "map10", *(froc_key(r) for r in FROC_RATES), "froc_mean")


@lru_cache(maxsize=8)
def _coco(classes: tuple[str, ...], iou_list: tuple[float, ...]):
    from monai.apps.detection.metrics.coco import COCOMetric

    return COCOMetric(classes=list(classes), iou_list=list(iou_list), iou_range=(0.1, 0.5, 0.05),
                      max_detection=(MAX_DETECTIONS,), per_class=False, verbose=False)


def _iou_list(froc_iou: float) -> tuple[float, ...]:
    return tuple(sorted({0.1, 0.5, float(froc_iou)}))


def matching_thresholds(froc_iou: float = 0.5) -> list[float]:
    """The IoU thresholds `detection_metrics` matches at (COCOMetric's 0.1:0.05:0.5 range, 0.1,
    0.5 and `froc_iou`): the thresholds `per_image_rows` needs with its matching."""
    return list(_coco(("lesion",), _iou_list(froc_iou)).iou_thresholds)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from monai.data.box_utils import box_iou

    return box_iou(a, b)


def match(preds: Sequence[dict], gts: Sequence[dict], iou_thresholds: Sequence[float]) -> list[dict]:
    """MONAI's `matching_batch` on numpy copies; `preds` have boxes / scores / labels, `gts` boxes /
    labels (dkbench order; IoU does not depend on the axis order as long as both agree)."""
    from monai.apps.detection.metrics.matching import matching_batch

    return matching_batch(
        iou_fn=_iou, iou_thresholds=list(iou_thresholds), max_detections=MAX_DETECTIONS,
        pred_boxes=[np.asarray(p["boxes"], np.float32).reshape(-1, 4) for p in preds],
        pred_classes=[np.asarray(p["labels"]).reshape(-1) for p in preds],
        pred_scores=[np.asarray(p["scores"], np.float32).reshape(-1) for p in preds],
        gt_boxes=[np.asarray(g["boxes"], np.float32).reshape(-1, 4) for g in gts],
        gt_classes=[np.asarray(g["labels"]).reshape(-1) for g in gts],
    )


def _threshold_index(thresholds: Sequence[float], iou: float) -> int:
    found = np.flatnonzero(np.isclose(np.asarray(thresholds), iou))
    if not len(found):
        raise ValueError(f"IoU {iou} is not among the matched thresholds {list(thresholds)}")
    return int(found[0])


def _hits(matched: list[dict], t: int) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Per image: scores of detections paired with a lesion, of unpaired detections, and the
    number of lesions missed, at threshold index `t` (all classes together)."""
    tp, fp, missed = [], [], []
    for image in matched:
        tps, fps, miss = [], [], 0
        for result in image.values():
            scores = result["dtScores"]
            paired = result["dtMatches"][t].astype(bool) if scores.size else np.zeros(0, bool)
            ignored = result["dtIgnore"][t].astype(bool) if scores.size else np.zeros(0, bool)
            tps.append(scores[paired & ~ignored])
            fps.append(scores[~paired & ~ignored])
            gt_ignore = np.asarray(result["gtIgnore"]).astype(bool)
            if gt_ignore.size:
                miss += int((~result["gtMatches"][t].astype(bool) & ~gt_ignore).sum())
        tp.append(np.concatenate(tps) if tps else np.zeros(0))
        fp.append(np.concatenate(fps) if fps else np.zeros(0))
        missed.append(miss)
    return tp, fp, missed


def froc(tp: list[np.ndarray], fp: list[np.ndarray], missed: list[int],
         rates: Sequence[float] = FROC_RATES) -> dict[str, float]:
    """Sensitivity at each false-positive rate per image and their mean (MONAI's FROC functions)."""
    from monai.metrics import compute_froc_curve_data, compute_froc_score

    tp_probs = np.concatenate([*tp, np.zeros(int(sum(missed)))]).astype(np.float64)
    targets = len(tp_probs)
    if targets == 0:
        return {**{froc_key(r): float("nan") for r in rates}, "froc_mean": float("nan")}
    # the 0 sentinel: see the module docstring (MONAI's curve starts at the second-lowest score)
    fp_probs = np.concatenate([*fp, np.zeros(1)]).astype(np.float64)
    fps_per_image, sensitivity = compute_froc_curve_data(fp_probs, tp_probs, targets, len(tp))
    out = {froc_key(r): float(compute_froc_score(fps_per_image, sensitivity, (r,))) for r in rates}
    out["froc_mean"] = float(compute_froc_score(fps_per_image, sensitivity, tuple(rates)))
    return out


def detection_metrics(preds: Sequence[dict], gts: Sequence[dict], classes: Sequence[str],
                      froc_iou: float = 0.5) -> tuple[dict[str, float], list[dict]]:
    """Scores of a whole evaluation set (`DETECTION_METRICS`) and the matching (for per-image rows).

    `preds[i]` = {boxes (n, 4), scores (n,), labels (n,)} and `gts[i]` = {boxes (m, 4), labels (m,)}
    for image i, numpy or tensors on the host, class indices 0..len(classes)-1."""
    coco = _coco(tuple(classes), _iou_list(froc_iou))
    thresholds = list(coco.iou_thresholds)
    matched = match(preds, gts, thresholds)
    n_lesions = sum(len(np.asarray(g["labels"]).reshape(-1)) for g in gts)
    scores: dict[str, float] = {}
    if n_lesions == 0:
        scores["map50"] = scores["map10"] = float("nan")
    else:
        coco_scores, _ = coco(matched)
        scores["map50"] = float(coco_scores[f"AP_IoU_0.50_MaxDet_{MAX_DETECTIONS}"])
        scores["map10"] = float(coco_scores[f"AP_IoU_0.10_MaxDet_{MAX_DETECTIONS}"])
    tp, fp, missed = _hits(matched, _threshold_index(thresholds, froc_iou))
    scores.update(froc(tp, fp, missed))
    return scores, matched


def per_image_rows(preds: Sequence[dict], gts: Sequence[dict], matched: list[dict],
                   iou_thresholds: Sequence[float], ious: Sequence[float] = (0.1, 0.5)) -> dict[str, np.ndarray]:
    """Per-image columns for predictions.csv (paired tests image by image):

    n_lesions, n_detections; per IoU in `ious` (column suffix 10 / 50): tp (lesions hit), fp
    (unpaired detections) and recall (tp / n_lesions, NaN for a negative image); max_score (the
    image's highest detection score: an image-level suspicion, 0 without detections) and best_iou
    (the best IoU of any detection with any lesion, NaN for a negative image, 0 when nothing was
    detected)."""
    n_gt = np.array([len(np.asarray(g["labels"]).reshape(-1)) for g in gts])
    out: dict[str, np.ndarray] = {
        "n_lesions": n_gt,
        "n_detections": np.array([len(np.asarray(p["scores"]).reshape(-1)) for p in preds]),
    }
    for iou in ious:
        tp, fp, missed = _hits(matched, _threshold_index(iou_thresholds, iou))
        suffix = f"{round(iou * 100):d}"
        hits = np.array([len(t) for t in tp])
        out[f"tp{suffix}"] = hits
        out[f"fp{suffix}"] = np.array([len(f) for f in fp])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"recall{suffix}"] = np.where(n_gt > 0, hits / np.maximum(n_gt, 1), np.nan)
    out["max_score"] = np.array([float(np.max(p["scores"])) if len(np.asarray(p["scores"]).reshape(-1)) else 0.0
                                 for p in preds])
    best = []
    for p, g in zip(preds, gts):
        pb, gb = np.asarray(p["boxes"], np.float32).reshape(-1, 4), np.asarray(g["boxes"], np.float32).reshape(-1, 4)
        best.append(np.nan if len(gb) == 0 else (float(_iou(pb, gb).max()) if len(pb) else 0.0))
    out["best_iou"] = np.array(best)
    return out
