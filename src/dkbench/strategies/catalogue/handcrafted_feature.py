"""`handcrafted_feature`: radiomics features fused with the CNN embedding (SURVEY.md family E).

Feature-level fusion as the survey describes it (Xie et al., MedIA 69:101985, 2021, §3.6
"hand-crafted features ... concatenated with the deep features before the classifier"):
a vector of radiomics-style features per image (`dkbench.features.radiomics`: pyradiomics'
`firstorder`, `glcm`, `shape2D` classes + a uniform-LBP histogram, computed with
scikit-image) is standardised and concatenated with the CNN's pooled embedding, and one
linear head reads both: head input = CNN dim + feature dim.

- Features are computed once per (dataset, data digest, feature config) and cached under
  ``<cache_dir>/features/`` (`dkbench.features.cache`); every later run loads them.
- Standardisation: z-scores with the TRAIN split's mean and std only (std 0 → 1), applied
  unchanged to val and test. `build_net` keeps the standardised table of each split as a
  buffer of the strategy (``features_train``, ``features_val``, ``features_test``; the
  statistics as ``feature_mean`` / ``feature_std``), so the tables live on the run's device and
  in its checkpoints; a batch's rows are gathered with ``batch["index"]`` (the row within the
  split).
- Masks (``use_mask``): ``auto`` (default) uses the dataset's lesion masks when it provides
  one for every image — intensity and texture inside the lesion plus shape descriptors of
  the lesion — for train, val AND test images. At test time that is the expert's outline of
  the lesion, a different claim from an image-only model; metadata.json states it. When
  some masks are empty (a 'normal' class: busi, probe_3class), ``auto`` does NOT use masks:
  an empty expert mask would reveal the label. ``true`` forces masks (the reason recorded),
  ``false`` computes whole-image intensity and texture only.
- Vectors are computed from the un-augmented images. Intensity, angle-averaged GLCM and
  uniform-LBP features are (almost) invariant to flips and 90-degree rotations; the shape
  orientation is not, and translation-by-roll augmentation is not reflected.

Simplified relative to the radiomics literature: fixed-bin-count quantisation (32 grey
levels) instead of pyradiomics' bin width, no image filters (wavelet / LoG), no feature
selection; the fusion is a plain concatenation without a learned projection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.data.spec import SPLITS, DatasetArrays, DatasetSpec
from dkbench.features.cache import CachedFeatures, load_or_extract
from dkbench.features.radiomics import FEATURE_CLASSES, RadiomicsConfig
from dkbench.data.spec import num_outputs
from dkbench.strategies.base import CLASSIFICATION_TASKS, BuildContext, StepContext, Strategy
from dkbench.strategies.options import Bounds, Count, OptionError, Positive, StrategyOptions
from dkbench.strategies.registry import register_strategy


@dataclass(frozen=True)
class RadiomicsOptions(StrategyOptions):
    """The feature options shared by the feature- and decision-level strategies."""

    #: auto: the dataset's lesion masks when every image has a non-empty one; true: force; false: whole image
    use_mask: bool | Literal["auto"] = "auto"
    #: grey levels (fixed bin count) of the GLCM and of the first-order entropy histogram
    levels: Annotated[int, Bounds(ge=2)] = 32
    #: GLCM pixel distances (each averaged over 0/45/90/135 degrees)
    distances: tuple[Count, ...] = (1, 2)
    #: uniform LBP histogram: neighbours P (P + 2 bins) and radius R (px)
    lbp_points: Count = 8
    lbp_radius: Positive = 1.0
    #: per-channel colour moments in the ROI: auto = for 3-channel (RGB) images, e.g. dermoscopy
    color: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.distances:  # each distance's range (>= 1) is declared on the field
            raise OptionError("distances", "must be a non-empty list of distances >= 1, got []")


class HandcraftedVectors(Strategy):
    """Shared by the feature- and decision-level strategies: options → RadiomicsConfig, the
    mask rule, and the cached vectors standardised with train statistics (`standardised_features`,
    which registers the statistics as buffers)."""

    requires = frozenset()
    tasks = CLASSIFICATION_TASKS
    Options = RadiomicsOptions

    def knowledge_used(self) -> str:
        if self.options.use_mask is False:
            return "radiomics of the whole image (train + test)"
        return "radiomics in expert masks where the dataset has them (train + **test**)"

    def resolve_mask(self, arrays: DatasetArrays) -> tuple[bool, str]:
        """(use masks?, why). ``auto`` uses them only if the dataset has them and no image's
        mask is empty: an empty expert mask tells a lesion-free image (a 'normal' class)."""
        option = self.options.use_mask
        if "mask" not in arrays.spec.provides:
            return False, f"use_mask={option}: the dataset provides no masks"
        empty = {s: int((~arrays.splits[s].extras["mask"].reshape(len(arrays.splits[s]), -1).any(1)).sum())
                 for s in SPLITS}
        if option == "auto":
            if any(empty.values()):
                return False, (f"auto: masks NOT used because some are empty {empty}: an empty expert mask "
                               f"reveals a lesion-free (normal) image, i.e. the label")
            return True, "auto: the dataset provides a lesion mask for every image"
        if option and any(empty.values()):
            return True, f"use_mask=true, WARNING: empty masks {empty} (shape_empty_mask reveals lesion-free images)"
        return option, f"use_mask={str(option).lower()}"

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if spec.spatial_dims != 2:
            return (f"strategy '{self.name}' computes 2D radiomics features (scikit-image GLCM, LBP, "
                    f"regionprops); dataset '{spec.name}' is {spec.spatial_dims}D")
        if self.options.use_mask is True and "mask" not in spec.provides:
            return (f"strategy '{self.name}' with use_mask=true needs lesion masks; dataset "
                    f"'{spec.name}' provides {sorted(spec.provides) or 'none'} (use use_mask=auto or false)")
        return None

    def radiomics_config(self, use_mask: bool, in_chans: int = 1) -> RadiomicsConfig:
        o = self.options
        if o.color is True and in_chans != 3:
            raise OptionError("color", f"needs RGB images (3 channels); this dataset has {in_chans}")
        color = in_chans == 3 if o.color == "auto" else bool(o.color)
        return RadiomicsConfig(use_mask=use_mask, levels=o.levels, distances=o.distances,
                               lbp_points=o.lbp_points, lbp_radius=o.lbp_radius, color=color)

    def standardised_features(self, ctx: BuildContext) -> dict[str, torch.Tensor]:
        """Split → (N, F) float32 z-scores of the cached vectors with the TRAIN statistics, which
        are registered as the buffers ``feature_mean`` / ``feature_std``."""
        self.use_mask, self.mask_reason = self.resolve_mask(ctx.arrays)
        self.cached: CachedFeatures = load_or_extract(
            ctx.arrays, self.radiomics_config(self.use_mask, ctx.arrays.spec.in_chans), ctx.cache_dir)
        raw = self.cached.splits
        mean = raw["train"].astype(np.float64).mean(0)
        std = raw["train"].astype(np.float64).std(0)
        std[std < 1e-8] = 1.0  # a constant training feature stays 0 after centring
        self.register_buffer("feature_mean", torch.from_numpy(mean))
        self.register_buffer("feature_std", torch.from_numpy(std))
        return {s: torch.from_numpy(((raw[s] - mean) / std).astype(np.float32)) for s in SPLITS}

    def split_rows(self, table: str, batch: dict, step: StepContext) -> torch.Tensor:
        """The batch's rows of the buffer ``<table>_<split>`` (gathered where the buffer lives)."""
        rows: torch.Tensor = getattr(self, f"{table}_{step.stage}")
        return rows.index_select(0, batch["index"].to(rows.device))

    def mask_statement(self) -> str:
        if self.use_mask:
            return ("GROUND-TRUTH lesion masks used for train, val AND test features (intensity/texture "
                    "inside the lesion + shape2D of the lesion): at test time the expert outlined the "
                    f"lesion; not an image-only result ({self.mask_reason})")
        return f"no masks: intensity and texture of the whole image ({self.mask_reason})"

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        if hasattr(self, "cached"):  # after build_net
            meta["features"] = {
                "masks": self.mask_statement(),
                "use_mask": self.use_mask,
                "dim": self.cached.dim,
                "names": self.cached.names,
                "classes": FEATURE_CLASSES,
                "library": "scikit-image (pyradiomics does not install on Python 3.11)",
                "cache_file": str(self.cached.path),
                "cache_hit": not self.cached.computed,
                "extraction_seconds": round(self.cached.seconds, 2),
                "standardisation": "z-score with the train split's mean and std (std 0 -> 1), applied to val/test",
                "computed_from": "un-augmented images",
            }
        return meta


class FeatureFusionNet(nn.Module):
    """Backbone + linear head on [CNN embedding, standardised hand-crafted features]."""

    def __init__(self, backbone: Backbone, feature_dim: int, num_out: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(backbone.num_features + feature_dim, num_out)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        if "handcrafted" not in batch:
            raise KeyError("FeatureFusionNet needs batch['handcrafted'] (added by the strategy's transform_batch)")
        feature_map = self.backbone.forward_features(batch["image"])
        embedding = self.backbone.pool(feature_map)
        fused = torch.cat([embedding, batch["handcrafted"].to(embedding.dtype)], 1)
        return {"logits": self.head(self.dropout(fused)), "embedding": embedding,
                "feature_map": feature_map, "fused": fused}


@register_strategy("handcrafted_feature")
class HandcraftedFeature(HandcraftedVectors):
    name = "handcrafted_feature"
    family = "E"
    knowledge = "radiomics in expert masks (train + **test**)"
    citation = ("Xie et al., A survey on incorporating domain knowledge into deep learning for medical image "
                "analysis, MedIA 69:101985 (2021), §3.6 feature-level fusion; features after pyradiomics "
                "(van Griethuysen et al., Cancer Research 77(21):e104, 2017)")

    def build_net(self, ctx: BuildContext) -> nn.Module:
        features = self.standardised_features(ctx)
        for split, table in features.items():
            self.register_buffer(f"features_{split}", table)
        spec = ctx.spec
        return FeatureFusionNet(ctx.make_backbone(), self.cached.dim, num_outputs(spec.task, spec.num_classes),
                                self.options.dropout)

    def transform_batch(self, batch: dict, step: StepContext) -> dict:
        batch = dict(batch)
        batch["handcrafted"] = self.split_rows("features", batch, step)
        return batch

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(),
                "fusion": "concat([CNN embedding, standardised features]) -> dropout -> one linear head"}
