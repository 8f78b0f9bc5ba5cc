"""Per-image segmentation scores: Dice, IoU and HD95, with empty masks defined.

Every score is computed per image and per foreground class, then averaged over the foreground
classes, so one image = one number per metric. Those per-image values are saved with the test
predictions, which lets the leaderboard pair images across strategies. Dice and IoU are plain
torch reductions on the tensors' device (the same values as MONAI's `compute_dice` /
`compute_iou` with ``ignore_empty=False``, which the tests check); HD95 is MONAI's
`compute_hausdorff_distance(percentile=95)`, a distance transform on the CPU, so it is the
costly one: the segmentation module computes it at test time and, unless asked
(``model.val_hd95``), not at validation, which selects on Dice.

MONAI is imported inside the functions that use it (≈ 1.5 s, and `import monai` loads all its
submodules): importing this module, hence any strategy, does not import it.

Empty masks are where segmentation benchmarks silently disagree, so the rules are stated:

- Dice / IoU: ground truth and prediction both empty → 1.0 (nothing to find, nothing found);
  exactly one empty → 0.0 (MONAI's ``ignore_empty=False``).
- HD95 (pixels): both empty → 0.0; exactly one empty → the image diagonal, the largest
  distance possible on the grid (MONAI would return inf / nan, which breaks means). The
  leaderboard's HD95 is therefore finite and penalises a missed or hallucinated lesion by the
  worst possible boundary error instead of dropping the image.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F

SEGMENTATION_METRICS = ("dice", "iou", "hd95")
#: what validation computes unless ``model.val_hd95`` asks for HD95 as well
VALIDATION_METRICS = ("dice", "iou")


@lru_cache(maxsize=1)
def _dice_loss() -> torch.nn.Module:
    from monai.losses import DiceLoss  # lazy: see the module docstring

    # reduction="none" keeps (B, K-1, 1, 1): one Dice loss per image and foreground class
    return DiceLoss(include_background=False, to_onehot_y=True, softmax=True, reduction="none")


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0) -> torch.Tensor:
    """(B,) per-image DiceCE: foreground soft Dice loss (background excluded, as nnU-Net does;
    MONAI `DiceLoss(softmax=True, to_onehot_y=True)`) + pixel-mean cross-entropy over all classes.
    `logits` (B, K, *spatial), `target` (B, 1, *spatial) integer labels."""
    logits = logits.float()
    if target.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"segmentation target {tuple(target.shape)} and network output {tuple(logits.shape)} differ "
            f"spatially; the backbone must return full-resolution maps"
        )
    dice = _dice_loss()(logits, target).flatten(1).mean(1)
    ce = F.cross_entropy(logits, target[:, 0].long(), reduction="none").flatten(1).mean(1)
    return lambda_dice * dice + lambda_ce * ce


def soft_dice(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """(B, C) soft Dice coefficient per image and channel of probabilities vs {0,1} targets,
    both (B, C, *spatial): (2·Σpt + smooth) / (Σp + Σt + smooth). Equals 1 − MONAI's
    ``DiceLoss(include_background=True, smooth_nr=smooth, smooth_dr=smooth, reduction="none")``
    (tested); plain torch so that a classification run's auxiliary Dice does not import MONAI."""
    p, t = prob.flatten(2), target.flatten(2).to(prob.dtype)
    inter = (p * t).sum(-1)
    return (2 * inter + smooth) / (p.sum(-1) + t.sum(-1) + smooth)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, *spatial) or (B, 1, *spatial) integer labels → (B, K, *spatial) float one-hot."""
    if labels.ndim >= 3 and labels.shape[1] == 1:
        labels = labels[:, 0]
    k = max(int(num_classes), 2)
    oh = F.one_hot(labels.long().clamp_min(0), k)  # (B, *spatial, K)
    return oh.movedim(-1, 1).float()


def predicted_labels(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, *spatial) logits → (B, *spatial) labels (argmax; K = 1 means a sigmoid output)."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(1)


def overlap_scores(p: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K-1) Dice and IoU of one-hot maps (B, K, *spatial), background excluded, on their
    device: both empty → 1, exactly one empty → 0 (MONAI's ``ignore_empty=False``)."""
    p, t = p[:, 1:].flatten(2), t[:, 1:].flatten(2)
    inter = (p * t).sum(-1)
    total = p.sum(-1) + t.sum(-1)
    union = total - inter
    one = torch.ones_like(total)
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), one)
    iou = torch.where(union > 0, inter / union.clamp_min(1), one)
    return dice, iou


def per_image_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     hd95: bool = True) -> dict[str, torch.Tensor]:
    """Per-image Dice, IoU and (with ``hd95``) HD95 in pixels, each a (B,) float tensor averaged
    over foreground classes. `pred` and `target` are integer label maps, (B, *spatial) or
    (B, 1, *spatial). Dice and IoU stay on the inputs' device; HD95 is computed on the CPU and
    returned on the inputs' device too (one transfer each way)."""
    p = one_hot(pred.detach(), num_classes)
    t = one_hot(target.detach(), num_classes).to(p.device)
    if p.shape != t.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    dice, iou = overlap_scores(p, t)  # (B, K-1)
    scores = {"dice": dice.mean(1), "iou": iou.mean(1)}
    if hd95:
        scores["hd95"] = _hd95(p.cpu(), t.cpu()).mean(1).to(p.device)
    return scores


def _hd95(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    from monai.metrics import compute_hausdorff_distance  # lazy: see the module docstring

    pred_any = p[:, 1:].flatten(2).any(-1)
    true_any = t[:, 1:].flatten(2).any(-1)
    diagonal = math.sqrt(sum(s * s for s in p.shape[2:]))
    out = torch.where(pred_any == true_any, 0.0, diagonal)  # both empty: 0; one empty: diagonal
    both = pred_any & true_any
    if both.any():
        with warnings.catch_warnings():  # MONAI warns on the empty pairs we replace anyway
            warnings.simplefilter("ignore")
            hd = compute_hausdorff_distance(p, t, include_background=False, percentile=95)
        out = torch.where(both, hd.float().nan_to_num(diagonal, diagonal, diagonal), out)
    return out.float()
