"""The detection LightningModule: lesion boxes with MONAI's RetinaNet (`dkbench.models.detector`).

Targets are 0..n boxes per image (`dkbench.data.detection`: NaN-padded box rows, images without a
lesion are negatives). The loss is the detector's per-image classification (BCE on the hard-
negative sampler's anchors) + box-regression (smooth L1 on the ATSS-matched anchors) loss, so
strategies can weight images as for the other tasks. Validation and test score the post-processed
detections of the whole split (`dkbench.metrics.detection`): mAP at IoU 0.5 and 0.1 (MONAI's
COCOMetric) and FROC sensitivities at 1/8 … 8 false positives per image with their mean (MONAI's
FROC functions); model selection reads `val/map50`. The test writes one row per image to
predictions.csv (lesions, detections, hits and false positives at IoU 0.1 and 0.5, recall, the
image's highest score, the best IoU) for paired per-image tests, and every kept box with its
score to `test_boxes.npz`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from dkbench.data.detection import unpad_boxes
from dkbench.data.spec import DatasetSpec
from dkbench.errors import RunConfigError
from dkbench.metrics.detection import DETECTION_METRICS, detection_metrics, matching_thresholds, per_image_rows
from dkbench.models.base import TaskModule
from dkbench.models.detector import detection_loss
from dkbench.strategies.base import Strategy


class DetectionModule(TaskModule):
    def __init__(self, net: nn.Module, spec: DatasetSpec, strategy: Strategy, froc_iou: float = 0.5, **kwargs: Any):
        if spec.task != "detection":
            raise RunConfigError(
                f"the detection model got dataset '{spec.name}', a {spec.task} task without boxes; detection "
                f"needs a dataset with boxes (busi_det, kvasir_det, probe_det), or drop the model=detection override")
        if not hasattr(net, "per_image_loss"):
            raise RunConfigError(f"strategy '{strategy.name}' built a {type(net).__name__}, not a detector; it cannot "
                                 f"serve detection (declare its tasks without 'detection')")
        if not 0 < float(froc_iou) <= 1:
            raise RunConfigError(f"model.froc_iou={froc_iou}: the IoU at which a detection hits a lesion, in (0, 1]")
        super().__init__(net, spec, strategy, **kwargs)
        self.froc_iou = float(froc_iou)
        self.classes = tuple(spec.class_names) or tuple(f"class_{k}" for k in range(spec.num_classes))
        self._seen: dict[str, dict[str, list]] = {}

    # --- loss ------------------------------------------------------------------------------
    def task_loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        loss, parts = detection_loss(self.net, outputs, batch["label"])
        outputs["loss_parts"] = {name: part.detach().mean() for name, part in parts.items()}
        return loss

    def extra_logs(self, outputs: dict, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        return dict(outputs.get("loss_parts") or {})

    # --- scoring ---------------------------------------------------------------------------
    def _detections(self, outputs: dict, batch: dict) -> list[dict[str, torch.Tensor]]:
        found = outputs.get("detections")
        if found is None:  # a strategy that replaced the outputs without detecting: decode now
            found = self.net.detect(outputs, tuple(batch["image"].shape[2:]))
        return found

    def score(self, outputs: dict, batch: dict, stage: str) -> None:
        seen = self._seen.setdefault(stage, {"preds": [], "gts": [], "ids": []})
        boxes, classes = unpad_boxes(batch["label"])
        for found, b, c in zip(self._detections(outputs, batch), boxes, classes):
            seen["preds"].append({k: v.detach().float().cpu().numpy() if k != "labels" else v.cpu().numpy()
                                  for k, v in found.items()})
            seen["gts"].append({"boxes": b.cpu().numpy(), "labels": c.cpu().numpy()})
        seen["ids"].extend(np.asarray(batch["id"]).tolist())

    def _log_scores(self, stage: str) -> tuple[dict[str, float], list[dict]] | None:
        seen = self._seen.pop(stage, None)
        if not seen or not seen["gts"]:
            return None
        scores, matched = detection_metrics(seen["preds"], seen["gts"], self.classes, self.froc_iou)
        for name in DETECTION_METRICS:
            self.log(f"{stage}/{name}", float(scores[name]), prog_bar=(stage == "val" and name == "map50"))
        return scores, matched

    def on_validation_epoch_start(self) -> None:
        self._seen.pop("val", None)

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_start(self) -> None:
        self._seen.pop("test", None)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        seen = self._seen.get("test")
        logged = self._log_scores("test")
        if logged is None or seen is None:
            return
        _, matched = logged
        ids = np.asarray(seen["ids"]).astype(str)
        rows = per_image_rows(seen["preds"], seen["gts"], matched, matching_thresholds(self.froc_iou))
        self.test_predictions = pd.DataFrame({"id": ids, **rows})
        self.test_arrays = {"test_boxes": _padded_detections(ids, seen["preds"])}

    def run_metadata(self) -> dict[str, Any]:
        """What metadata.json records about the detector (anchor plan, settings)."""
        plan = getattr(self.net, "plan", None)
        settings = getattr(self.net, "settings", None)
        encoder = getattr(getattr(self.net, "pyramid", None), "encoder", None)
        from dataclasses import asdict

        return {"detector": {"anchors": plan.as_dict() if plan is not None else None,
                             "settings": asdict(settings) if settings is not None else None,
                             "pyramid": {"stages": list(getattr(encoder, "stage_names", ())),
                                         "strides": list(getattr(self.net, "strides", ()))},
                             "froc_iou": self.froc_iou, "box_order": "x_lo, y_lo, x_hi, y_hi (x = column)"}}


def _padded_detections(ids: np.ndarray, preds: list[dict]) -> dict[str, np.ndarray]:
    """Every image's kept boxes as padded arrays (NaN / -1 padding) for test_boxes.npz."""
    d = max([len(p["scores"]) for p in preds] + [1])
    boxes = np.full((len(preds), d, 4), np.nan, np.float32)
    scores = np.full((len(preds), d), np.nan, np.float32)
    labels = np.full((len(preds), d), -1, np.int64)
    for i, p in enumerate(preds):
        n = min(len(p["scores"]), d)
        boxes[i, :n], scores[i, :n], labels[i, :n] = p["boxes"][:n], p["scores"][:n], p["labels"][:n]
    return {"id": ids, "boxes": boxes, "scores": scores, "labels": labels}
