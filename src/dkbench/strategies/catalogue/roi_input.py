"""`roi_input`: only the expert region reaches the network (SURVEY.md family D, survey §3.5).

Doctors read the lesion, not the rest of the frame; the survey (Xie et al., MedIA 69:101985,
2021, §3.5 "areas doctors focus on") lists methods that feed the classifier the region a
doctor (or a detector) marks instead of the whole image. Here every batch is reduced to that
region before the forward pass (`transform_batch`):

- ``mode: mask`` — pixels outside the (dilated) lesion mask, or outside the box when
  ``region: bbox``, are replaced by a fill value: ``zero`` (0 after normalisation, i.e. the
  dataset's mean grey level) or ``roi_mean`` (the mean of the image *inside* the region, so
  nothing outside the region leaks through the fill);
- ``mode: crop`` — the lesion's box, enlarged by ``margin`` (fraction of its longer side), is
  cut out (pixels outside it set to the fill value) and a window with the input's aspect
  ratio centred on it (side at least ``min_crop`` of the image) is resampled to the input size
  with one batched `affine_grid` / `grid_sample` (bilinear). The aspect ratio is kept, so
  shape descriptors such as "taller-than-wide" survive; absolute lesion size does not (every
  lesion is zoomed to fill the window).

Either way a pixel outside the region cannot change the network's input, hence its output
(the mechanism test perturbs such pixels). In crop mode the batch's ``mask`` (and ``bbox``)
are resampled with the same window (nearest), so `attention_overlap` is measured in the
coordinates the network sees.

Which ROI at val/test time (``test_roi``) is a different claim, recorded by `metadata()`:

- ``given``: the ground-truth mask / box of each test image (an upper bound: a doctor's
  outline is assumed at test time);
- ``predicted``: a small fully convolutional lesion segmenter (`ROIPredictor`, ≈ 0.1 M
  parameters) trained in `build_net` on the *training* split's masks (BCE + soft Dice, Adam),
  cached under ``<paths.cache_dir>/roi_input/<key>.pt`` keyed by the dataset checksum, seed,
  input normalisation and predictor options (trained on the run's device, `BuildContext.device`;
  the cached weights are CPU tensors; parallel cells wait on a file lock and train it once). It
  is a frozen submodule of the strategy, so it moves to the run's device with the network and is
  saved in its checkpoints. Its probability map is thresholded at 0.5 and the
  largest connected component kept (batched on the device, `dkbench.geometry.components`;
  if nothing passes, the pixels above half the image's
  maximum probability); that component is the region (mask mode) or gives the box (crop
  mode). Its validation Dice is recorded in the metadata and `roi_coverage` (the fraction of the
  true lesion inside the region the network saw) is logged as ``val/`` and ``test/roi_coverage``.

Training always uses the ground-truth region (``given``), whatever ``test_roi`` says.

Simplified relative to the two-stage systems the survey cites (detector → classifier of the
crop): one binary lesion mask per image (every lesion in one region, one box around all of it);
the ROI predictor is a tiny FCN, not a detector, and is not fine-tuned with the classifier;
images whose mask is empty (no lesion) keep their whole image as the region, which, with a
given ROI, tells the network the image has no lesion (on datasets with a normal class
that is label information: use ``test_roi: predicted`` there). 2-D images only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dkbench.data.spec import DatasetSpec
from dkbench.geometry.boxes import box_from_mask, or_whole_image
from dkbench.geometry.components import largest_component
from dkbench.metrics.segmentation import per_image_scores, soft_dice
from dkbench.seeding import seeded_module
from dkbench.storage import atomic_file, content_key, file_lock, load_cached_tensors
from dkbench.strategies.base import CLASSIFICATION_TASKS, BuildContext, StepContext, Strategy
from dkbench.strategies.options import Count, Fraction, NonNegative, NonNegativeInt, Positive, StrategyOptions
from dkbench.strategies.registry import register_strategy

log = logging.getLogger("dkbench")

PREDICTOR_VERSION = 1


# --- regions ---------------------------------------------------------------------------
def box_region(bbox: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(B,4) boxes (x0, y0, x1, y1; pixel-edge coordinates, max exclusive) → (B,1,H,W) float
    {0,1}: pixels whose centre lies in the box. A NaN box gives an empty region."""
    h, w = shape
    b = bbox.float()
    xs = torch.arange(w, device=b.device, dtype=torch.float32) + 0.5
    ys = torch.arange(h, device=b.device, dtype=torch.float32) + 0.5
    inx = (xs[None] >= b[:, 0:1]) & (xs[None] < b[:, 2:3])  # (B,W), False where NaN
    iny = (ys[None] >= b[:, 1:2]) & (ys[None] < b[:, 3:4])  # (B,H)
    return (iny[:, :, None] & inx[:, None, :]).float()[:, None]


def dilate(region: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation by a (2r+1)-wide square (max-pooling); works for 2-D and 3-D maps."""
    if radius <= 0:
        return region
    pool = F.max_pool2d if region.ndim == 4 else F.max_pool3d
    return pool(region, kernel_size=2 * radius + 1, stride=1, padding=radius)


def dilation_px(fraction: float, shape: tuple[int, ...]) -> int:
    """Dilation radius in pixels: a fraction of the mean image side."""
    return round(float(fraction) * float(np.mean(shape)))


Region = Literal["mask", "bbox"]
Fill = Literal["zero", "roi_mean"]


def expert_region(batch: dict, region: Region = "mask", dilate_fraction: float = 0.0) -> torch.Tensor:
    """The expert's region of each image, (B,1,*spatial) float {0,1}, dilated by
    `dilate_fraction` of the image side: the lesion mask, or its box (``region="bbox"``:
    the dataset's box, filled). Empty for images without a lesion."""
    shape = tuple(batch["image"].shape[2:])
    if region == "mask":
        r = (batch["mask"] > 0).float()
    elif region == "bbox":
        r = box_region(batch["bbox"], shape)  # type: ignore[arg-type]
    else:
        raise ValueError(f"region must be 'mask' or 'bbox', got {region!r}")
    return dilate(r, dilation_px(dilate_fraction, shape))


# --- input reduction -------------------------------------------------------------------
def fill_values(image: torch.Tensor, region: torch.Tensor, fill: Fill) -> torch.Tensor:
    """(B,C,1,1) fill: 0 (dataset mean grey after normalisation) or the mean inside the region."""
    zeros = image.new_zeros(image.shape[:2] + (1,) * (image.ndim - 2))
    if fill == "zero":
        return zeros
    if fill == "roi_mean":
        dims = tuple(range(2, image.ndim))
        area = region.sum(dims, keepdim=True)
        mean = (image * region).sum(dims, keepdim=True) / area.clamp_min(1)
        return torch.where(area > 0, mean, zeros)
    raise ValueError(f"fill must be 'zero' or 'roi_mean', got {fill!r}")


def mask_input(image: torch.Tensor, region: torch.Tensor, fill: Fill = "zero") -> torch.Tensor:
    """Pixels outside `region` → fill; an empty region keeps the whole image."""
    dims = tuple(range(1, region.ndim))
    region = torch.where(region.sum(dims, keepdim=True) > 0, region, torch.ones_like(region))
    value = fill_values(image, region, fill)
    return value + (image - value) * region


def crop_boxes(bbox: torch.Tensor, shape: tuple[int, int], margin: float) -> torch.Tensor:
    """Boxes enlarged by `margin` x their longer side on every side; NaN boxes → whole image."""
    b = bbox.float()
    side = torch.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    pad = (margin * side)[:, None]
    return or_whole_image(torch.cat([b[:, :2] - pad, b[:, 2:] + pad], 1), shape)


def crop_theta(boxes: torch.Tensor, shape: tuple[int, int], min_crop: float) -> torch.Tensor:
    """(B,2,3) affine maps from the output grid to a window with the input's aspect ratio,
    centred on each box, at least `min_crop` of the image wide (align_corners=False).

    The same map as `dkbench.geometry.boxes.box_theta` of that window, but computed from its
    centre and width: box_theta's (lo + hi) / side − 1 from the window's corners rounds
    differently (by up to 2.4e-7 in float32, at image sides that are not powers of two), which
    would change crop-mode inputs by rounding and so the results of crop-mode runs."""
    h, w = shape
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    win_w = torch.maximum(torch.maximum(bw, bh * w / h), torch.full_like(bw, min_crop * w))
    win_h = win_w * h / w
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    theta = boxes.new_zeros(len(boxes), 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = win_w / w, 2 * cx / w - 1
    theta[:, 1, 1], theta[:, 1, 2] = win_h / h, 2 * cy / h - 1
    return theta


def crop_input(image: torch.Tensor, boxes: torch.Tensor, fill: Fill = "zero", min_crop: float = 0.25,
               extra: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Fill outside `boxes` (already enlarged), then resample a window around each box to the
    input size. `extra` maps (B,1,H,W) maps (masks) resampled with the same window (nearest)."""
    shape = (image.shape[-2], image.shape[-1])
    visible = box_region(boxes, shape)
    value = fill_values(image, visible, fill)
    theta = crop_theta(boxes, shape, min_crop)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    out = F.grid_sample((image - value) * visible, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False) + value
    moved = {}
    for key, t in (extra or {}).items():
        g = F.grid_sample(t.float() * visible, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        moved[key] = g.to(t.dtype)
    return out, moved


# --- ROI predictor (test_roi: predicted) ----------------------------------------------
def _block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ROIPredictor(nn.Module):
    """A tiny FCN lesion segmenter: strides 1-2-2-2, two dilated blocks, 1x1 logit, bilinear
    back to the input size. Output (B,1,H,W) logits."""

    def __init__(self, in_chans: int = 1, width: int = 16):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _block(in_chans, w), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 2),
            _block(4 * w, 4 * w, dilation=2), _block(4 * w, 4 * w, dilation=4))
        self.out = nn.Conv2d(4 * w, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.out(self.body(image)), size=image.shape[2:], mode="bilinear", align_corners=False)


def _seg_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    dice = soft_dice(torch.sigmoid(logits), mask, smooth=1.0)  # (B, 1)
    return F.binary_cross_entropy_with_logits(logits, mask) + (1 - dice).mean()


def predicted_region(prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B,1,H,W) probabilities → (B,1,H,W) float {0,1}: the largest connected component above
    `threshold` (8-connectivity; equal sizes: the first in raster order, as scipy's labelling);
    if nothing passes, the pixels at or above half the image's maximum. Batched on the
    probabilities' device (`dkbench.geometry.components`), no per-image loop; used at
    val/test time and in the pre-stage, where the exact search's host checks are acceptable."""
    p = prob.detach().float()
    fg = p > threshold
    dims = tuple(range(1, p.ndim))
    fallback = p >= 0.5 * p.amax(dims, keepdim=True)
    fg = torch.where(fg.any(dims, keepdim=True), fg, fallback)
    keep, _ = largest_component(fg, "full", exact=True)
    return keep.float()


def train_roi_predictor(images: np.ndarray, masks: np.ndarray, *, mean: float, std: float, seed: int,
                        epochs: int = 15, batch_size: int = 32, lr: float = 2e-3, width: int = 16,
                        device: torch.device | str = "cpu") -> ROIPredictor:
    """Fits `ROIPredictor` on uint8 images (N,C,H,W) and {0,1} masks (N,1,H,W) on `device` (the
    run's); returns it on the CPU in eval mode. The initial weights and the batch order come from
    CPU generators seeded with `seed`, so they do not depend on the device (the trained weights
    then differ between devices by floating-point rounding only)."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    # initial weights from a generator of its own: the run's global stream is the same whether
    # the predictor is trained now or read from its cache
    net = seeded_module(lambda: ROIPredictor(images.shape[1], width), seed).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    # the whole (small, uint8) training split moves once; batches are gathered on the device
    x_all = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    m_all = torch.from_numpy(np.ascontiguousarray(masks)).to(device).float().clamp_(0, 1)
    n = len(x_all)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).to(device).split(batch_size):
            x = (x_all[idx].float() / 255.0 - mean) / std
            loss = _seg_loss(net(x), m_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.cpu().eval()


@torch.no_grad()
def evaluate_predictor(net: ROIPredictor, images: np.ndarray, masks: np.ndarray, *, mean: float, std: float,
                       device: torch.device | str = "cpu") -> dict:
    """Mean Dice and mean lesion coverage of the predicted region on a split, computed on
    `device` (the network is moved there; move it back if needed)."""
    device = torch.device(device)
    net = net.to(device)
    dices, cover = [], []
    for s in range(0, len(images), 128):
        x = (torch.from_numpy(np.ascontiguousarray(images[s:s + 128])).to(device).float() / 255.0 - mean) / std
        m = torch.from_numpy(np.ascontiguousarray(masks[s:s + 128])).to(device).float().clamp(0, 1)
        r = predicted_region(torch.sigmoid(net(x)))
        dices.append(per_image_scores(r, m, num_classes=2, hd95=False)["dice"])  # both empty: 1
        cover.append((r * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1))
    return {"dice": float(torch.cat(dices).mean()), "coverage": float(torch.cat(cover).mean())}


# --- the strategy ----------------------------------------------------------------------
@register_strategy("roi_input")
class ROIInput(Strategy):
    name = "roi_input"
    family = "D"
    knowledge = "expert masks (train + **test**)"

    def knowledge_used(self) -> str:
        if self.options.test_roi == "predicted":
            return "expert masks (training; the test ROI is predicted)"
        return self.knowledge
    requires = frozenset({"mask"})
    tasks = CLASSIFICATION_TASKS
    citation = ("Xie et al., A survey on incorporating domain knowledge into deep learning for medical "
                "image analysis, Medical Image Analysis 69:101985 (2021), section 3.5 (ROI input)")

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: mask: fill outside the dilated region | crop: cut the box (+ margin), resize to the input
        mode: Literal["mask", "crop"] = "mask"
        #: ROI at val/test time: the ground-truth mask/box | a tiny FCN trained on the train masks
        test_roi: Literal["given", "predicted"] = "given"
        #: mask: the lesion mask (its box in crop mode) | bbox: the dataset's box
        region: Region = "mask"
        #: value outside the ROI: 0 after normalisation | the image's mean inside the ROI
        fill: Fill = "zero"
        #: mask mode: region dilation radius as a fraction of the image side
        dilate: NonNegative = 0.04
        #: crop mode: box enlarged by this fraction of its longer side on every side
        margin: NonNegative = 0.1
        #: crop mode: smallest crop window, as a fraction of the image side
        min_crop: Fraction = 0.25
        #: test_roi=predicted: ROI predictor training epochs, base width, Adam lr, batch size
        predictor_epochs: NonNegativeInt = 15
        predictor_width: Count = 16
        predictor_lr: Positive = 2e-3
        predictor_batch_size: Count = 32

    #: test_roi=predicted: the frozen ROI predictor, a submodule registered by `build_net`
    predictor: ROIPredictor

    def __init__(self, **options: Any):
        super().__init__(**options)
        #: the predictor's validation Dice / coverage and cache file (metadata.json)
        self.predictor_stats: dict[str, Any] = {}

    # --- compatibility
    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if spec.spatial_dims != 2:
            return f"strategy 'roi_input' handles 2-D images only; dataset '{spec.name}' is {spec.spatial_dims}-D"
        if self.options.region == "bbox" and "bbox" not in spec.provides:
            return (f"strategy 'roi_input' with region=bbox needs boxes; dataset '{spec.name}' provides "
                    f"{sorted(spec.provides)}")
        return None

    # --- pre-stage: the ROI predictor
    def prestage_artefacts(self, run: Any) -> dict[str, dict[str, Any]]:
        if self.options.test_roi != "predicted":
            return {}
        from omegaconf import OmegaConf

        o = self.options
        return {"roi_predictor": {
            "dataset": OmegaConf.to_container(run.dataset, resolve=True), "seed": int(run.seed),
            "mean": OmegaConf.select(run, "data.mean"), "std": OmegaConf.select(run, "data.std"),
            "epochs": o.predictor_epochs, "width": o.predictor_width, "lr": o.predictor_lr,
            "batch_size": o.predictor_batch_size}}

    def build_prestage(self, role: str, ctx: BuildContext) -> None:
        if role != "roi_predictor":
            super().build_prestage(role, ctx)
        self._load_or_train_predictor(ctx)

    def _cache_path(self, ctx: BuildContext, mean: float, std: float) -> Path:
        o, spec = self.options, ctx.spec
        key = content_key(spec.name, {
            "version": PREDICTOR_VERSION, "dataset": spec.name, "checksum": ctx.arrays.checksum,
            "seed": int(ctx.seed), "mean": mean, "std": std, "epochs": o.predictor_epochs,
            "width": o.predictor_width, "lr": o.predictor_lr, "batch_size": o.predictor_batch_size,
        })
        return Path(ctx.cache_dir) / "roi_input" / f"{key}.pt"

    def _load_or_train_predictor(self, ctx: BuildContext) -> tuple[ROIPredictor, dict[str, Any]]:
        """The ROI predictor (on the CPU, eval mode) and its stats, from the cache or trained on
        `ctx.device` (then cached as CPU tensors)."""
        data = ctx.config.get("data") or {}
        mean, std = float(data.get("mean", 0.5)), float(data.get("std", 0.5))
        o = self.options
        path = self._cache_path(ctx, mean, std)
        train, val = ctx.arrays.splits["train"], ctx.arrays.splits["val"]
        with file_lock(path.with_suffix(".lock")):
            saved = load_cached_tensors(path) if path.exists() else None  # unreadable: retrained below
            if saved is not None:
                net = ROIPredictor(train.image.shape[1], o.predictor_width)
                net.load_state_dict(saved["state_dict"])
                log.info("roi_input: ROI predictor loaded from %s (val Dice %.3f)", path, saved["stats"]["val_dice"])
                return net.eval(), saved["stats"]
            net = train_roi_predictor(
                train.image, train.extras["mask"], mean=mean, std=std, seed=int(ctx.seed),
                epochs=o.predictor_epochs, batch_size=o.predictor_batch_size, lr=o.predictor_lr,
                width=o.predictor_width, device=ctx.device)
            ev = evaluate_predictor(net, val.image, val.extras["mask"], mean=mean, std=std, device=ctx.device)
            net = net.cpu()  # the cache holds CPU tensors (evaluation may have moved it)
            stats = {"val_dice": ev["dice"], "val_coverage": ev["coverage"], "cache": str(path),
                     "trained_on": "train split masks"}
            with atomic_file(path, "wb") as fh:
                torch.save({"state_dict": net.state_dict(), "stats": stats}, fh)
            log.info("roi_input: ROI predictor trained (val Dice %.3f), cached at %s", ev["dice"], path)
            return net, stats

    def build_net(self, ctx: BuildContext) -> nn.Module:
        if self.options.test_roi == "predicted":
            # before the backbone, as the random stream of earlier runs has it; frozen: trained
            # in its pre-stage only (the optimizer takes the network's parameters anyway)
            predictor, self.predictor_stats = self._load_or_train_predictor(ctx)
            self.predictor = predictor.requires_grad_(False)
        return super().build_net(ctx)

    def train(self, mode: bool = True) -> ROIInput:
        """The frozen predictor stays in eval mode (BatchNorm with its trained running statistics)
        whatever mode the model around it is switched to."""
        super().train(mode)
        predictor = getattr(self, "predictor", None)
        if predictor is not None:
            predictor.eval()
        return self

    # --- the ROI of a batch
    def roi(self, batch: dict, step: StepContext) -> torch.Tensor:
        """(B,1,H,W) float {0,1} region the network may see (before dilation for crop mode)."""
        o = self.options
        if not step.training and o.test_roi == "predicted":
            image = batch["image"]
            with torch.no_grad():
                region = predicted_region(torch.sigmoid(self.predictor(image.float())))
            if o.region == "bbox":  # the box of the predicted region, filled
                region = box_region(box_from_mask(region), tuple(image.shape[2:]))
            return region
        return expert_region(batch, o.region, 0.0)

    def transform_batch(self, batch: dict, step: StepContext) -> dict:
        o = self.options
        image = batch["image"]
        shape = tuple(image.shape[2:])
        region = self.roi(batch, step)
        out = dict(batch)
        if "mask" in batch:  # how much of the true lesion the network gets to see
            truth = (batch["mask"] > 0).float()
            seen = dilate(region, dilation_px(o.dilate, shape)) if o.mode == "mask" else \
                box_region(crop_boxes(box_from_mask(region), shape, o.margin), shape)
            area = truth.flatten(1).sum(1)
            out["roi_coverage"] = torch.where(area > 0, (seen * truth).flatten(1).sum(1) / area.clamp_min(1),
                                              torch.full_like(area, float("nan")))
        if o.mode == "mask":
            out["image"] = mask_input(image, dilate(region, dilation_px(o.dilate, shape)), o.fill)
            return out
        boxes = crop_boxes(box_from_mask(region), shape, o.margin)
        extra = {"mask": batch["mask"]} if "mask" in batch else {}
        out["image"], moved = crop_input(image, boxes, o.fill, o.min_crop, extra)
        out.update(moved)
        if "bbox" in batch and "mask" in moved:
            out["bbox"] = box_from_mask(moved["mask"])
        return out

    def extra_metrics(self, outputs: dict, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        cov = batch.get("roi_coverage")
        if step.training or cov is None:
            return {}
        valid = ~torch.isnan(cov)
        return {"roi_coverage": cov[valid].mean()} if valid.any() else {}

    def metadata(self) -> dict[str, Any]:
        o = self.options
        claim = ("ground-truth ROI (the dataset's lesion mask/box) at val/test time: assumes an expert "
                 "outline of every test image" if o.test_roi == "given" else
                 "predicted ROI at val/test time: a tiny FCN trained on the training split's masks")
        return {
            **super().metadata(),
            "test_roi": o.test_roi,
            "train_roi": "given",
            "roi_claim": claim,
            "mode": o.mode,
            "roi_predictor": dict(self.predictor_stats) if o.test_roi == "predicted" else None,
        }
