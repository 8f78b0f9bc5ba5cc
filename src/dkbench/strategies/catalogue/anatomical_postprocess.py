"""`anatomical_postprocess`: clean predictions up the way anatomy says they must look — one
connected lesion/organ per class, no holes — before they are scored (SURVEY.md family G).

After the post-processing steps of Kamnitsas K. et al., "Efficient multi-scale 3D CNN with fully
connected CRF for accurate brain lesion segmentation", Medical Image Analysis 36:61-78, 2017
(DeepMedic + a fully connected CRF for spatial coherence) and of nnU-Net (Isensee F., Jaeger P.F.,
Kohl S.A.A., Petersen J., Maier-Hein K.H., "nnU-Net: a self-configuring method for deep
learning-based biomedical image segmentation", Nature Methods 18:203-211, 2021), which keeps the
largest connected component of each foreground class when that helps on validation.

Training is the baseline's (plain task loss, model selected on the raw validation Dice): the
strategy is `post_hoc`, so its run evaluates the baseline run's weights (same dataset, backbone,
seed and settings; trained once, by whichever of the two runs first) and the clean-up changes only
the test outputs. At test `postprocess` takes the argmax label map and, per image and foreground
class (2D or 3D):

- ``largest_component`` (default true): keeps the largest connected component (``connectivity``:
  ``full`` = 8-neighbour in 2D / 26 in 3D, as MONAI's KeepLargestConnectedComponent; ``face`` =
  4 / 6); the removed pixels become background;
- ``fill_holes`` (default true): fills the class's holes, i.e. background regions it encloses
  (background connectivity is the dual of ``connectivity``); pixels of another class inside it
  are left alone (a ring around another structure is anatomy, not a hole);
- ``crf`` (default false): first refines the softmax with MONAI's CRF-as-RNN
  (`monai.networks.blocks.CRF`, ``crf_iterations`` mean-field steps, the normalised image as
  the bilateral reference). It needs MONAI's compiled extension (``monai._C``); where that is
  missing, the strategy refuses the run with a reason naming the option.

The scores of the cleaned map are the run's Dice/IoU/HD95; `extra_metrics` also reports the scores
of the raw argmax (``dice_raw``, ``iou_raw``, ``hd95_raw``) and the fraction of pixels the clean-up
changed (``changed_fraction``), so the leaderboard shows what post-processing did. Like ``hd95``,
``hd95_raw`` is computed only where the stage scores HD95 (`StepContext.hd95`: test time, and
validation with ``model.val_hd95``).

The largest component is found on the label map's device by `dkbench.geometry.components`
(exact: iterated to its fixed point; ties go to the first component in raster order, as with
scipy's `ndimage.label`). Hole filling is a different operation (a flood fill of the background
from the image border) that the project has no torch version of: it stays with scipy on the CPU,
one transfer there and back and one `binary_fill_holes` call per class for the whole batch
(images are kept apart by the structuring element).

Simplified: no validation-driven decision whether to apply each step (nnU-Net decides per class
on cross-validation); the steps are options. Until 2026-11-28 the clean-up was applied at
validation too, so checkpoint selection saw cleaned maps and the run trained a network of its own
(docs/results/segmentation.md says which numbers changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage

from dkbench.data.spec import DatasetSpec
from dkbench.geometry.components import largest_component as largest_component_of
from dkbench.metrics.segmentation import per_image_scores, predicted_labels
from dkbench.strategies.base import SEGMENTATION_TASKS, StepContext, Strategy
from dkbench.strategies.options import Count, StrategyOptions
from dkbench.strategies.registry import register_strategy


@lru_cache(maxsize=1)
def crf_unavailable() -> str | None:
    """None if MONAI's CRF can run here, else why not."""
    try:
        import monai._C  # noqa: F401  (the compiled permutohedral-lattice filter the CRF calls)
    except ImportError as err:
        return f"MONAI's compiled extension monai._C is not available ({err})"
    return None


def make_crf(iterations: int) -> torch.nn.Module:
    from monai.networks.blocks import CRF

    return CRF(iterations=iterations)


def _batch_structure(ndim: int, connectivity: int) -> np.ndarray:
    """A scipy structuring element for (B, *spatial) arrays: `connectivity` within an image,
    none along the batch axis, so one `ndimage` call treats every image separately."""
    inner = ndimage.generate_binary_structure(ndim, connectivity)
    out = np.zeros((3,) + inner.shape, bool)
    out[1] = inner
    return out


def fill_class_holes(labels: np.ndarray, num_classes: int, connectivity: str = "full") -> np.ndarray:
    """(B, *spatial) integer label maps → copy with every foreground class's holes filled: the
    background it encloses becomes that class (background connectivity dual to `connectivity`:
    8-connected objects enclose 4-connected holes). One scipy call per class for the whole
    batch: dilating the outside inwards never crosses the batch axis, which the element does
    not reach."""
    out = labels.copy()
    ndim = labels.ndim - 1
    bg_structure = _batch_structure(ndim, 1 if connectivity == "full" else ndim)
    for k in range(1, max(int(num_classes), 2)):
        mask = out == k
        if mask.any():
            holes = ndimage.binary_fill_holes(mask, structure=bg_structure) & ~mask & (out == 0)
            out[holes] = k
    return out


def clean_label_maps(labels: torch.Tensor, num_classes: int, largest_component: bool = True,
                     fill_holes: bool = True, connectivity: str = "full") -> torch.Tensor:
    """A batch of (B, *spatial) integer label maps → cleaned copy (same shape, device and dtype).

    Largest component: per class on the maps' device (`dkbench.geometry.components`, exact),
    the removed pixels become background; then hole filling per class with scipy on the host
    (`fill_class_holes`), one transfer there and back for the batch."""
    out = labels.clone()
    if largest_component:
        for k in range(1, max(int(num_classes), 2)):
            mask = (out == k).unsqueeze(1)
            keep, _ = largest_component_of(mask, connectivity, exact=True)
            out.masked_fill_((mask & ~keep).squeeze(1), 0)
    if fill_holes:
        host = out.to(torch.uint8 if num_classes <= 256 else torch.long).cpu().numpy()
        out = torch.from_numpy(fill_class_holes(host, num_classes, connectivity)).to(device=labels.device,
                                                                                      dtype=labels.dtype)
    return out


@register_strategy("anatomical_postprocess")
class AnatomicalPostprocess(Strategy):
    name = "anatomical_postprocess"
    family = "G"
    knowledge = "one component per class, no holes (test outputs)"
    requires = frozenset()  # the segmentation label is the mask
    tasks = SEGMENTATION_TASKS
    post_hoc = True  # evaluates the baseline run's network; only the test outputs change
    citation = ("Kamnitsas K. et al., Efficient multi-scale 3D CNN with fully connected CRF for accurate brain "
                "lesion segmentation, Medical Image Analysis 36:61-78 (2017); Isensee F. et al., nnU-Net: a "
                "self-configuring method for deep learning-based biomedical image segmentation, Nature Methods "
                "18:203-211 (2021) (largest connected component)")

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: keep only the largest connected component of each foreground class
        largest_component: bool = True
        #: fill background enclosed by a class
        fill_holes: bool = True
        #: full: 8-neighbour (2D) / 26 (3D); face: 4 / 6
        connectivity: Literal["full", "face"] = "full"
        #: MONAI CRF-as-RNN refinement first (needs MONAI's compiled extension monai._C)
        crf: bool = False
        #: mean-field iterations when crf is true
        crf_iterations: Count = 5

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if self.options.crf:
            why = crf_unavailable()
            if why:
                return (f"strategy '{self.name}': option crf=true needs MONAI's CRF (monai.networks.blocks.CRF), "
                        f"which cannot run here: {why}. Set strategy.options.crf=false")
        return None

    def postprocess(self, outputs: dict, batch: dict, step: StepContext) -> dict:
        logits = outputs["logits"]
        if self.options.crf:
            why = crf_unavailable()
            if why:
                raise RuntimeError(f"anatomical_postprocess: option crf=true, but {why}; "
                                   f"set strategy.options.crf=false")
            crf = make_crf(self.options.crf_iterations).to(logits.device)
            with torch.no_grad():
                refined = crf(logits.float(), batch["image"].float())
            labels = refined.argmax(1)
        else:
            labels = predicted_labels(logits)
        cleaned = clean_label_maps(labels.detach().long(), step.spec.num_classes,
                                   largest_component=self.options.largest_component,
                                   fill_holes=self.options.fill_holes, connectivity=self.options.connectivity)
        return {**outputs, "pred": cleaned}

    def extra_metrics(self, outputs: dict, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        if step.training or "pred" not in outputs:
            return {}
        raw = predicted_labels(outputs["logits"])
        # hd95_raw follows the module's rule for hd95 (test time, or validation with val_hd95)
        scores = per_image_scores(raw, batch["label"], step.spec.num_classes, hd95=step.hd95)
        metrics = {f"{name}_raw": values.mean() for name, values in scores.items()}
        metrics["changed_fraction"] = (outputs["pred"] != raw).float().mean()
        return metrics

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "training": "the baseline run's (post-hoc: its weights, raw-output selection)",
                "raw_metrics": "dice_raw / iou_raw / hd95_raw: scores of the argmax before clean-up"}
