"""`anatomical_postprocess`: clean predictions up the way anatomy says they must look — one
connected lesion/organ per class, no holes — before they are scored (SURVEY.md family G).

After the post-processing steps of Kamnitsas K. et al., "Efficient multi-scale 3D CNN with fully
connected CRF for accurate brain lesion segmentation", Medical Image Analysis 36:61-78, 2017
(DeepMedic + a fully connected CRF for spatial coherence) and of nnU-Net (Isensee F., Jaeger P.F.,
Kohl S.A.A., Petersen J., Maier-Hein K.H., "nnU-Net: a self-configuring method for deep
learning-based biomedical image segmentation", Nature Methods 18:203-211, 2021), which keeps the
largest connected component of each foreground class when that helps on validation.

Training is unchanged (plain task loss). At val/test `postprocess` takes the argmax label map and,
per image and foreground class (scipy.ndimage, 2D or 3D):

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
``hd95_raw`` is computed at test time only unless ``model.val_hd95`` asks for it at validation.

The clean-up runs on the CPU with scipy, once per batch: one transfer there and back and one
`ndimage` call per class for the whole batch (images are kept apart by the structuring element).

Simplified: no validation-driven decision whether to apply each step (nnU-Net decides per class
on cross-validation); the steps are options.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from dkbench.data.spec import DatasetSpec
from dkbench.metrics.segmentation import per_image_scores, predicted_labels
from dkbench.strategies.base import SEGMENTATION_TASKS, Strategy, StrategyContext
from dkbench.strategies.registry import register_strategy

CONNECTIVITIES = ("full", "face")


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


def clean_label_maps(labels: np.ndarray, num_classes: int, largest_component: bool = True,
                     fill_holes: bool = True, connectivity: str = "full") -> np.ndarray:
    """A batch of (B, *spatial) integer label maps → cleaned copy (same shape and dtype).

    One scipy call per foreground class for the whole batch (the structuring element does not
    connect images), instead of one per image and class. Largest component: labels are numbered
    in raster order of the batch, i.e. image by image and, within an image, in scipy's order for
    that image alone, so the first of equal-sized components still wins. Hole filling: dilating
    the outside inwards never crosses the batch axis, which the element does not reach."""
    out = labels.copy()
    ndim = labels.ndim - 1
    fg_structure = _batch_structure(ndim, ndim if connectivity == "full" else 1)
    # background connectivity dual to the foreground's: 8-connected objects enclose 4-connected holes
    bg_structure = _batch_structure(ndim, 1 if connectivity == "full" else ndim)
    classes = range(1, max(int(num_classes), 2))
    image_of = np.arange(len(labels)).reshape((-1,) + (1,) * ndim)
    if largest_component:
        for k in classes:
            mask = out == k
            components, n = ndimage.label(mask, structure=fg_structure)
            if n > 1:
                flat = components.ravel()
                sizes = np.bincount(flat, minlength=n + 1)
                owner = np.zeros(n + 1, np.int64)
                owner[flat] = np.broadcast_to(image_of, components.shape).ravel()  # component → image
                # per image, the largest component; ties: the lowest label = first in scan order
                order = np.lexsort((np.arange(1, n + 1), -sizes[1:], owner[1:]))
                first = np.ones(n, bool)
                first[1:] = owner[1:][order][1:] != owner[1:][order][:-1]
                keep = np.zeros(n + 1, bool)
                keep[order[first] + 1] = True
                out[mask & ~keep[components]] = 0
    if fill_holes:
        for k in classes:
            mask = out == k
            if mask.any():
                holes = ndimage.binary_fill_holes(mask, structure=bg_structure) & ~mask & (out == 0)
                out[holes] = k
    return out


def clean_label_map(labels: np.ndarray, num_classes: int, largest_component: bool = True,
                    fill_holes: bool = True, connectivity: str = "full") -> np.ndarray:
    """One image's (*spatial) integer label map → cleaned copy (same shape and dtype)."""
    return clean_label_maps(labels[None], num_classes, largest_component, fill_holes, connectivity)[0]


@register_strategy("anatomical_postprocess")
class AnatomicalPostprocess(Strategy):
    name = "anatomical_postprocess"
    requires = frozenset()  # the segmentation label is the mask
    tasks = SEGMENTATION_TASKS
    citation = ("Kamnitsas K. et al., Efficient multi-scale 3D CNN with fully connected CRF for accurate brain "
                "lesion segmentation, Medical Image Analysis 36:61-78 (2017); Isensee F. et al., nnU-Net: a "
                "self-configuring method for deep learning-based biomedical image segmentation, Nature Methods "
                "18:203-211 (2021) (largest connected component)")

    def _opt(self, key: str, default: Any) -> Any:
        return self.options.get(key, default)

    @property
    def connectivity(self) -> str:
        return str(self._opt("connectivity", "full"))

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if self.connectivity not in CONNECTIVITIES:
            return (f"strategy '{self.name}': option connectivity '{self.connectivity}' is not one of "
                    f"{list(CONNECTIVITIES)}")
        if bool(self._opt("crf", False)):
            why = crf_unavailable()
            if why:
                return (f"strategy '{self.name}': option crf=true needs MONAI's CRF (monai.networks.blocks.CRF), "
                        f"which cannot run here: {why}. Set strategy.options.crf=false")
        return None

    def prepare(self, context: StrategyContext) -> None:
        self.check_compatible(context.arrays.spec)  # crf=true without MONAI's extension fails here, clearly
        self.num_classes = int(context.arrays.spec.num_classes)

    def _num_classes(self, logits: torch.Tensor) -> int:
        return getattr(self, "num_classes", max(int(logits.shape[1]), 2))

    def postprocess(self, outputs: dict, batch: dict) -> dict:
        logits = outputs["logits"]
        if bool(self._opt("crf", False)):
            why = crf_unavailable()
            if why:
                raise RuntimeError(f"anatomical_postprocess: option crf=true, but {why}; "
                                   f"set strategy.options.crf=false")
            crf = make_crf(int(self._opt("crf_iterations", 5))).to(logits.device)
            with torch.no_grad():
                refined = crf(logits.float(), batch["image"].float())
            labels = refined.argmax(1)
        else:
            labels = predicted_labels(logits)
        # Connected components and hole filling stay with scipy (exact, C speed, any connectivity
        # in 2D and 3D): the whole batch goes to the CPU once, as uint8, is cleaned with one call
        # per class (`clean_label_maps`), and comes back once. This runs at val/test only.
        host = labels.detach().to(torch.uint8 if self._num_classes(logits) <= 256 else torch.long).cpu().numpy()
        cleaned = clean_label_maps(host, self._num_classes(logits),
                                   largest_component=bool(self._opt("largest_component", True)),
                                   fill_holes=bool(self._opt("fill_holes", True)), connectivity=self.connectivity)
        return {**outputs, "pred": torch.from_numpy(cleaned).to(device=logits.device, dtype=torch.long)}

    def extra_metrics(self, outputs: dict, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        if stage == "train" or "pred" not in outputs:
            return {}
        raw = predicted_labels(outputs["logits"])
        # hd95_raw follows the module's rule for hd95: test time, or validation if asked (val_hd95)
        scores = per_image_scores(raw, batch["label"], self._num_classes(outputs["logits"]),
                                  hd95=stage == "test" or self.val_hd95)
        metrics = {f"{name}_raw": values.mean() for name, values in scores.items()}
        metrics["changed_fraction"] = (outputs["pred"] != raw).float().mean()
        return metrics

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "training": "unchanged (task loss only)",
                "raw_metrics": "dice_raw / iou_raw / hd95_raw: scores of the argmax before clean-up"}
