"""`shape_prior`: a shape autoencoder learned on the training masks regularises the segmentation
network in its latent space (SURVEY.md family G).

After ACNN, Oktay O. et al., "Anatomically Constrained Neural Networks (ACNNs): application to
cardiac image enhancement and segmentation", IEEE TMI 37(2):384-395, 2018. ACNN first trains a
convolutional autoencoder on ground-truth label maps alone (its "T-L network"), then trains the
segmentation network with an extra term λ‖f(φ(x)) − f(y)‖² between the codes f(·) that the
frozen encoder gives the prediction φ(x) and the ground truth y: predictions whose global shape
the prior cannot tell from real anatomy cost nothing, implausible ones are pushed back.

How it is done here:

- `build_net` trains the autoencoder on the TRAIN split's masks only (one channel per foreground
  class, resized to ``ae_size``; Adam, BCE + soft Dice reconstruction, ``ae_steps`` steps of
  ``ae_batch_size`` masks whatever the split's size), on the run's device, from generators of
  its own seeded by the run's seed (`dkbench.seeding.seeded_module`), so the main run's random stream is
  the same whether the prior was trained now or loaded. The weights are cached in ``<cache_dir>/shape_prior/<key>.pt``; the key
  (`dkbench.storage.content_key`) is a SHA-256 over the dataset name, the reader's checksum, a
  digest of the train masks, the AE config and the seed, so every later run with the same data,
  AE config and seed (any backbone, any number of epochs) loads the file; an exclusive lock
  (`file_lock`) on ``<key>.lock`` makes parallel sweep cells wait for the first, and the file is
  written atomically (`atomic_file`, never half-read). `pretrain_count()` counts this process's
  cache misses for tests. The frozen autoencoder is a submodule of the strategy and σ a buffer,
  so both follow the network to the run's device and are saved in its checkpoints.
- `loss_terms` adds ``weight`` × mean over latent dimensions of ((E(p) − E(y)) / σ)², with p the
  softmax foreground probabilities, y the one-hot target, E the frozen encoder (no gradient
  reaches its weights; the prediction receives the gradient through it) and σ the spread of
  the training masks' codes (below).

Simplified relative to ACNN: a small 2D/3D conv autoencoder (three stride-2 convolutions and a
linear bottleneck) trained on resized masks instead of ACNN's full-resolution 3D T-L network,
and no weight decay term (the run's optimizer decides). The latent difference is divided by σ,
the root-mean-square over dimensions of the per-dimension standard deviation of the training
masks' codes (our choice): the encoder's code scale is arbitrary, and this makes ``weight`` mean
the same on every dataset — the term is ≈ 2 for two unrelated training shapes, 0 for the right
shape, and of order 10 for an untrained network's near-uniform probability maps (hence the
default ``weight`` 0.1, which keeps it comparable with the DiceCE task loss from the start).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dkbench.data.spec import DatasetArrays, DatasetSpec
from dkbench.losses import foreground_probabilities, foreground_targets
from dkbench.metrics.segmentation import soft_dice
from dkbench.seeding import seeded_module
from dkbench.storage import atomic_file, content_key, file_lock, load_cached_tensors
from dkbench.strategies.base import SEGMENTATION_TASKS, BuildContext, StepContext, Strategy
from dkbench.strategies.options import Count, NonNegative, OptionError, Positive, StrategyOptions
from dkbench.strategies.registry import register_strategy

log = logging.getLogger("dkbench.shape_prior")

#: Bump when the autoencoder's code changes, so old cache files miss.
AE_VERSION = 1

_PRETRAINS = 0


def pretrain_count() -> int:
    """Autoencoder trainings (cache misses) performed by this process so far."""
    return _PRETRAINS


@dataclass(frozen=True)
class ShapeAEConfig:
    """Everything that changes the trained autoencoder (part of the cache key)."""

    in_channels: int = 1  # foreground classes (K - 1)
    spatial_dims: int = 2
    size: int = 64  # masks are resized to size^N (a multiple of 2^len(channels))
    channels: tuple[int, ...] = (8, 16, 32)
    latent_dim: int = 64
    steps: int = 600  # optimiser steps, not epochs: a small train split must not mean an untrained prior
    batch_size: int = 32
    lr: float = 1e-3

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "channels": list(self.channels), "version": AE_VERSION}


class ShapeAutoencoder(nn.Module):
    """Strided conv encoder → linear latent code → transposed-conv decoder (2D or 3D)."""

    def __init__(self, cfg: ShapeAEConfig):
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[cfg.spatial_dims]
        deconv = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[cfg.spatial_dims]
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in = cfg.in_channels
        for c in cfg.channels:
            layers += [conv(c_in, c, 3, stride=2, padding=1), nn.LeakyReLU(0.1)]
            c_in = c
        self.bottom = (cfg.channels[-1],) + (cfg.size // 2 ** len(cfg.channels),) * cfg.spatial_dims
        self.features = nn.Sequential(*layers)
        self.to_code = nn.Linear(math.prod(self.bottom), cfg.latent_dim)
        self.from_code = nn.Linear(cfg.latent_dim, math.prod(self.bottom))
        up: list[nn.Module] = []
        widths = [*cfg.channels[::-1], cfg.in_channels]
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            up.append(deconv(a, b, 4, stride=2, padding=1))
            if i < len(widths) - 2:
                up.append(nn.LeakyReLU(0.1))
        self.decoder = nn.Sequential(*up)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.features(x).flatten(1))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits."""
        h = F.leaky_relu(self.from_code(code), 0.1).view(-1, *self.bottom)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def resize_maps(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, *spatial) maps → (B, C, size^N): area averaging when shrinking (keeps partial
    coverage as a fraction), (bi/tri)linear when enlarging; differentiable either way."""
    dims = x.ndim - 2
    target = (size,) * dims
    if tuple(x.shape[2:]) == target:
        return x
    if all(s >= size for s in x.shape[2:]):
        return F.interpolate(x, size=target, mode="area")
    return F.interpolate(x, size=target, mode={2: "bilinear", 3: "trilinear"}[dims], align_corners=False)


def masks_to_input(masks: np.ndarray | torch.Tensor, num_classes: int, size: int) -> torch.Tensor:
    """(N, 1, *spatial) integer masks → (N, K-1, size^N) float foreground maps."""
    labels = torch.as_tensor(np.asarray(masks)).long()
    return resize_maps(foreground_targets(labels, num_classes), size)


def train_autoencoder(inputs: torch.Tensor, cfg: ShapeAEConfig, seed: int,
                      device: torch.device | str = "cpu") -> tuple[ShapeAutoencoder, dict]:
    """Train on (N, C, size^N) maps on `device` (the run's); deterministic given ``seed`` (own
    CPU generator for shuffling, weights initialised on the CPU, so both are device-independent).
    Returns the model on the CPU (eval mode) and CPU statistics, ready to be cached."""
    device = torch.device(device)
    model = seeded_module(lambda: ShapeAutoencoder(cfg), seed).to(device)  # the run's global stream untouched
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    inputs = inputs.to(device)  # the resized train masks are small: moved once, batches gathered there
    n = len(inputs)
    model.train()
    step = 0
    while step < cfg.steps:  # reshuffled passes over the masks until the step budget is spent
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, cfg.batch_size):
            if step >= cfg.steps:
                break
            x = inputs[order[start:start + cfg.batch_size]]
            logits = model(x)
            loss = (F.binary_cross_entropy_with_logits(logits, x)
                    + (1 - soft_dice(torch.sigmoid(logits), x).mean(1)).mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    opt.zero_grad(set_to_none=True)  # the trained-now model must equal the cached one: no stale grads
    model.eval()
    with torch.no_grad():
        codes = torch.cat([model.encode(inputs[i:i + 256]) for i in range(0, n, 256)])
        recon = torch.cat([(torch.sigmoid(model(inputs[i:i + 256])) > 0.5).float() for i in range(0, n, 256)])
        train_dice = float(soft_dice(recon, (inputs > 0.5).float()).mean(1).mean())
    # one scale for all dimensions, the RMS of the per-dimension standard deviations: a per-dimension
    # scale would blow up a dimension the training shapes barely use, where soft predictions can go
    code_std = codes.var(0, unbiased=False).mean().sqrt().cpu() if n > 1 else torch.tensor(1.0)
    if float(code_std) < 1e-6:  # identical training masks: no spread to measure, keep raw units
        code_std = torch.tensor(1.0)
    return model.cpu(), {"code_std": code_std, "train_dice": train_dice}


def train_masks_digest(arrays: DatasetArrays) -> str:
    train = arrays.splits["train"]
    h = hashlib.sha256()
    h.update(f"{train.label.shape}|{train.label.dtype}|".encode())
    h.update(np.ascontiguousarray(train.label).tobytes())
    return h.hexdigest()


def cache_key(arrays: DatasetArrays, cfg: ShapeAEConfig, seed: int) -> str:
    return content_key(arrays.spec.name, {"dataset": arrays.spec.name, "checksum": arrays.checksum,
                                          "train_masks": train_masks_digest(arrays), "ae": cfg.as_dict(),
                                          "seed": int(seed)})


@dataclass(frozen=True)
class PriorFile:
    """Where the trained prior is cached and how this run obtained it (for metadata.json)."""

    key: str
    path: Path
    computed: bool  # True: trained by this call; False: loaded from the cache
    seconds: float  # training time (stored in the file)
    train_dice: float  # reconstruction Dice on the training masks (stored in the file)


def _load(path: Path, cfg: ShapeAEConfig, key: str) -> tuple[ShapeAutoencoder, torch.Tensor, PriorFile] | None:
    blob = load_cached_tensors(path)
    if blob is None:
        return None
    try:
        if blob["config"] != cfg.as_dict():
            raise ValueError("stored config differs")
        model = ShapeAutoencoder(cfg)
        model.load_state_dict(blob["state_dict"])
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as err:
        log.warning("shape prior cache %s unreadable (%s): retraining", path, err)
        return None
    record = PriorFile(key, path, computed=False, seconds=float(blob["seconds"]), train_dice=float(blob["train_dice"]))
    return model.eval(), blob["code_std"].float(), record


def load_or_train(arrays: DatasetArrays, cfg: ShapeAEConfig, seed: int, cache_dir: str | Path,
                  device: torch.device | str = "cpu") -> tuple[ShapeAutoencoder, torch.Tensor, PriorFile]:
    """The shape autoencoder of the dataset's train masks and its code scale σ, from the cache or
    trained on `device` (and cached as CPU tensors: the cache key does not name a device, and
    need not). Both are returned on the CPU, with where they came from."""
    global _PRETRAINS
    key = cache_key(arrays, cfg, seed)
    folder = Path(cache_dir) / "shape_prior"
    path = folder / f"{key}.pt"
    with file_lock(folder / f"{key}.lock"):
        if path.exists():
            cached = _load(path, cfg, key)
            if cached is not None:
                log.info("shape prior loaded from %s", path)
                return cached
        started = time.perf_counter()
        inputs = masks_to_input(arrays.splits["train"].label, arrays.spec.num_classes, cfg.size)
        model, stats = train_autoencoder(inputs, cfg, seed, device)
        seconds = time.perf_counter() - started
        _PRETRAINS += 1
        with atomic_file(path, "wb") as fh:
            torch.save({"state_dict": model.state_dict(), "config": cfg.as_dict(), "code_std": stats["code_std"],
                        "seconds": seconds, "train_dice": stats["train_dice"]}, fh)
        log.info("shape prior: AE on %d train masks in %.1f s (train Dice %.3f) -> %s",
                 len(inputs), seconds, stats["train_dice"], path)
        if stats["train_dice"] < 0.7:
            log.warning("shape prior: the autoencoder reconstructs its own training masks with Dice %.3f only; "
                        "raise strategy.options.ae_steps", stats["train_dice"])
        return model, stats["code_std"], PriorFile(key, path, computed=True, seconds=seconds,
                                                   train_dice=stats["train_dice"])


@register_strategy("shape_prior")
class ShapePriorStrategy(Strategy):
    name = "shape_prior"
    family = "G"
    knowledge = "shapes of the training masks (training)"
    requires = frozenset()  # the segmentation label is the mask
    tasks = SEGMENTATION_TASKS
    citation = ("ACNN: Oktay O., Ferrante E., Kamnitsas K., Heinrich M., Bai W., Caballero J., Cook S.A., "
                "de Marvao A., Dawes T., O'Regan D.P., Kainz B., Glocker B., Rueckert D., Anatomically "
                "Constrained Neural Networks (ACNNs): application to cardiac image enhancement and "
                "segmentation, IEEE TMI 37(2):384-395 (2018)")

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: weight of the shape term: mean over latent dims of ((E(pred) - E(gt)) / sigma)^2
        weight: NonNegative = 0.1
        #: masks (and predictions) are resized to this side before the autoencoder
        ae_size: int = 64
        #: encoder widths, one stride-2 conv each (ae_size must be a multiple of 2^len)
        ae_channels: tuple[Count, ...] = (8, 16, 32)
        #: length of the shape code
        latent_dim: Count = 64
        #: autoencoder optimiser steps over the train masks
        ae_steps: Count = 600
        ae_batch_size: Count = 32
        #: Adam learning rate of the autoencoder
        ae_lr: Positive = 1e-3

        def __post_init__(self) -> None:
            super().__post_init__()
            if not self.ae_channels:  # each width's range (>= 1) is declared on the field
                raise OptionError("ae_channels", "must be a non-empty list of positive widths, got []")
            down = 2 ** len(self.ae_channels)
            if self.ae_size % down or self.ae_size < down:
                raise OptionError("ae_size", f"must be a positive multiple of {down} (one halving per entry of "
                                             f"ae_channels {list(self.ae_channels)}), got {self.ae_size}")

    def ae_config(self, spec: DatasetSpec) -> ShapeAEConfig:
        o = self.options
        return ShapeAEConfig(in_channels=max(int(spec.num_classes), 2) - 1, spatial_dims=int(spec.spatial_dims),
                             size=o.ae_size, channels=o.ae_channels, latent_dim=o.latent_dim, steps=o.ae_steps,
                             batch_size=o.ae_batch_size, lr=o.ae_lr)

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if spec.spatial_dims not in (2, 3):
            return f"strategy '{self.name}' supports 2D and 3D masks; dataset '{spec.name}' is {spec.spatial_dims}D"
        return None

    def prestage_artefacts(self, run: Any) -> dict[str, dict[str, Any]]:
        from omegaconf import OmegaConf

        o = self.options
        return {"shape_autoencoder": {
            "dataset": OmegaConf.to_container(run.dataset, resolve=True), "seed": int(run.seed),
            "ae": [o.ae_size, list(o.ae_channels), o.latent_dim, o.ae_steps, o.ae_batch_size, o.ae_lr]}}

    def build_prestage(self, role: str, ctx: BuildContext) -> None:
        if role != "shape_autoencoder":
            super().build_prestage(role, ctx)
        load_or_train(ctx.arrays, self.ae_config(ctx.spec), int(ctx.seed), ctx.cache_dir, ctx.device)

    def build_net(self, ctx: BuildContext) -> nn.Module:
        autoencoder, code_std, self.prior_file = load_or_train(
            ctx.arrays, self.ae_config(ctx.spec), int(ctx.seed), ctx.cache_dir, ctx.device)
        # frozen: the prior is fixed while the network trains (the optimizer takes module.net's
        # parameters only; this also keeps autograd from accumulating gradients in it)
        self.autoencoder = autoencoder.requires_grad_(False).eval()
        self.register_buffer("code_std", code_std)
        return super().build_net(ctx)

    def train(self, mode: bool = True) -> ShapePriorStrategy:
        """Lightning switches the whole module to training mode each epoch; the frozen prior
        stays in evaluation mode."""
        super().train(mode)
        if hasattr(self, "autoencoder"):
            self.autoencoder.eval()
        return self

    def shape_distance(self, logits: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
        """(B,) mean over latent dimensions of the squared code difference, in units of σ."""
        size = self.options.ae_size
        pred = resize_maps(foreground_probabilities(logits), size)
        with torch.no_grad():
            code_true = self.autoencoder.encode(resize_maps(foreground_targets(label, num_classes), size))
        code_pred = self.autoencoder.encode(pred)
        return (((code_pred - code_true) / self.code_std) ** 2).mean(1)

    def loss_terms(self, per_sample_loss: torch.Tensor, outputs: dict, batch: dict,
                   step: StepContext) -> dict[str, torch.Tensor]:
        shape = self.shape_distance(outputs["logits"], batch["label"], step.spec.num_classes).mean()
        return {"task": per_sample_loss.mean(), "shape": self.options.weight * shape.to(per_sample_loss.dtype)}

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        if hasattr(self, "prior_file"):
            meta["shape_prior"] = {
                "cache_file": str(self.prior_file.path), "key": self.prior_file.key,
                "trained_now": self.prior_file.computed, "train_seconds": round(self.prior_file.seconds, 2),
                "ae_train_dice": round(self.prior_file.train_dice, 4), "ae_config": self.autoencoder.cfg.as_dict(),
                "masks": "train split only",
            }
        return meta
