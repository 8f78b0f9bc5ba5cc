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
  unchanged to val and test.
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

from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.data.spec import SPLITS, DatasetArrays, DatasetSpec
from dkbench.features.cache import CachedFeatures, load_or_extract
from dkbench.features.radiomics import FEATURE_CLASSES, RadiomicsConfig
from dkbench.metrics.classification import num_outputs
from dkbench.strategies.base import CLASSIFICATION_TASKS, Strategy, StrategyContext
from dkbench.strategies.registry import register_strategy

STAGE_SPLITS = {"train": "train", "val": "val", "test": "test"}


def plain_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options as plain Python values (Hydra hands lists over as ListConfig) for metadata.json."""
    return {k: OmegaConf.to_container(v) if isinstance(v, (DictConfig, ListConfig)) else v
            for k, v in options.items()}


class HandcraftedVectors(Strategy):
    """Shared by the feature- and decision-level strategies: options → RadiomicsConfig, the
    cached vectors standardised with train statistics, and a batch key ``handcrafted``
    holding the batch's rows (looked up by split and ``batch["index"]``)."""

    requires = frozenset()
    tasks = CLASSIFICATION_TASKS

    def _mask_option(self) -> bool | str:
        value = self.options.get("use_mask", "auto")
        if isinstance(value, str) and value.lower() == "auto":
            return "auto"
        if isinstance(value, str):
            raise ValueError(f"use_mask must be auto, true or false, got '{value}'")
        return bool(value)

    def resolve_mask(self, arrays: DatasetArrays) -> tuple[bool, str]:
        """(use masks?, why). ``auto`` uses them only if the dataset has them and no image's
        mask is empty: an empty expert mask tells a lesion-free image (a 'normal' class)."""
        option = self._mask_option()
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
        return bool(option), f"use_mask={str(bool(option)).lower()}"

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if spec.spatial_dims != 2:
            return (f"strategy '{self.name}' computes 2D radiomics features (scikit-image GLCM, LBP, "
                    f"regionprops); dataset '{spec.name}' is {spec.spatial_dims}D")
        if self._mask_option() is True and "mask" not in spec.provides:
            return (f"strategy '{self.name}' with use_mask=true needs lesion masks; dataset "
                    f"'{spec.name}' provides {sorted(spec.provides) or 'none'} (use use_mask=auto or false)")
        return None

    def radiomics_config(self, use_mask: bool) -> RadiomicsConfig:
        o = self.options
        return RadiomicsConfig(
            use_mask=use_mask,
            levels=int(o.get("levels", 32)),
            distances=tuple(int(d) for d in o.get("distances", (1, 2))),
            lbp_points=int(o.get("lbp_points", 8)),
            lbp_radius=float(o.get("lbp_radius", 1.0)),
        )

    def prepare(self, context: StrategyContext) -> None:
        self.spec = context.arrays.spec
        self.use_mask, self.mask_reason = self.resolve_mask(context.arrays)
        self.cached: CachedFeatures = load_or_extract(context.arrays, self.radiomics_config(self.use_mask),
                                                      context.cache_dir)
        raw = self.cached.splits
        mean = raw["train"].astype(np.float64).mean(0)
        std = raw["train"].astype(np.float64).std(0)
        std[std < 1e-8] = 1.0  # a constant training feature stays 0 after centring
        self.feature_mean, self.feature_std = mean, std
        self.features = {
            s: torch.from_numpy(((raw[s] - mean) / std).astype(np.float32)) for s in SPLITS
        }
        self.labels = {s: np.asarray(context.arrays.splits[s].label) for s in SPLITS}

    @property
    def feature_dim(self) -> int:
        if not hasattr(self, "features"):
            raise RuntimeError(f"strategy '{self.name}': prepare() must run before the features are used")
        return self.cached.dim

    def rows(self, batch: dict, stage: str, table: dict[str, torch.Tensor]) -> torch.Tensor:
        """The rows of `table[split]` for the batch's samples, on the batch's device."""
        if stage not in STAGE_SPLITS:
            raise ValueError(f"strategy '{self.name}': no feature split for stage '{stage}'")
        if "index" not in batch:
            raise KeyError(f"strategy '{self.name}' needs batch['index'] to look up its cached features")
        device = batch["image"].device
        rows = table[STAGE_SPLITS[stage]]
        if rows.device != device:  # moved to the run's device once, then gathered there (no sync)
            rows = table[STAGE_SPLITS[stage]] = rows.to(device)
        return rows.index_select(0, torch.as_tensor(batch["index"]).long().to(device))

    def transform_batch(self, batch: dict, stage: str) -> dict:
        batch = dict(batch)
        batch["handcrafted"] = self.rows(batch, stage, self.features)
        return batch

    def mask_statement(self) -> str:
        if not hasattr(self, "use_mask"):
            return "not prepared"
        if self.use_mask:
            return ("GROUND-TRUTH lesion masks used for train, val AND test features (intensity/texture "
                    "inside the lesion + shape2D of the lesion): at test time the expert outlined the "
                    f"lesion; not an image-only result ({self.mask_reason})")
        return f"no masks: intensity and texture of the whole image ({self.mask_reason})"

    def metadata(self) -> dict[str, Any]:
        meta = {**super().metadata(), "options": plain_options(self.options)}
        if hasattr(self, "cached"):
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
    citation = ("Xie et al., A survey on incorporating domain knowledge into deep learning for medical image "
                "analysis, MedIA 69:101985 (2021), §3.6 feature-level fusion; features after pyradiomics "
                "(van Griethuysen et al., Cancer Research 77(21):e104, 2017)")

    def build_net(self, backbone: Backbone, spec: DatasetSpec) -> nn.Module:
        return FeatureFusionNet(backbone, self.feature_dim, num_outputs(spec.task, spec.num_classes),
                                float(self.options.get("dropout", 0.0)))

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(),
                "fusion": "concat([CNN embedding, standardised features]) -> dropout -> one linear head"}
