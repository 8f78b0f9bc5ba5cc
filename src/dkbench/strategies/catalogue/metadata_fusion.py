"""`metadata_fusion`: patient data (age, sex, site, …) fused with image features (SURVEY.md family F).

Representative: Kawahara et al., "Seven-point checklist and skin lesion classification using
multitask multimodal neural nets", IEEE J. Biomed. Health Inform. 23(2):538-546 (2018), which
fuses clinical/dermoscopic images with patient metadata; Höhn et al., "Integrating patient data
into skin cancer classification using convolutional neural networks: systematic review",
J. Med. Internet Res. 23(7):e20708 (2021) reviews such fusions (mostly concatenation of an MLP
metadata branch with the CNN features, or late fusion).

Here the metadata vector (B, M) is standardised with the TRAIN split's mean and standard
deviation (computed in `prepare`, stored as buffers; a constant column gets std 1; missing
values, NaN, become 0 = the train mean after standardisation), passed through an MLP branch
(Linear → ReLU → Dropout, `hidden` units, `layers` layers) and fused:

- ``fusion: concat`` (feature-level): diagnosis head on [image embedding, metadata features];
- ``fusion: late`` (decision-level): image head logits + metadata head logits.

Simplified relative to Kawahara et al.: no multitask 7-point-checklist heads, no second image
modality, metadata are numeric columns as the dataset gives them (categorical columns are
expected one-hot encoded by the reader), no missing-value indicators.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.data.spec import DatasetSpec
from dkbench.metrics.classification import num_outputs
from dkbench.strategies.base import CLASSIFICATION_TASKS, Strategy, StrategyContext
from dkbench.strategies.registry import register_strategy

FUSIONS = ("concat", "late")


def train_statistics(metadata: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and std over the given rows, NaN ignored; std 1 where a column is constant."""
    m = np.asarray(metadata, dtype=np.float64)
    if m.ndim == 1:
        m = m[:, None]
    mean = np.nan_to_num(np.nanmean(m, axis=0), nan=0.0)
    std = np.nan_to_num(np.nanstd(m, axis=0), nan=0.0)
    std = np.where(std > 1e-8, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


class MetadataFusionNet(nn.Module):
    """Backbone + metadata MLP branch; concat (feature-level) or late (logit-sum) fusion."""

    def __init__(self, backbone: Backbone, num_out: int, mean: np.ndarray, std: np.ndarray,
                 hidden: int = 32, layers: int = 2, fusion: str = "concat", dropout: float = 0.0,
                 meta_dropout: float = 0.0):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"metadata_fusion: fusion must be one of {FUSIONS}, got {fusion!r}")
        self.backbone = backbone
        self.fusion = fusion
        self.register_buffer("meta_mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("meta_std", torch.as_tensor(std, dtype=torch.float32))
        blocks: list[nn.Module] = []
        d_in = len(mean)
        for _ in range(max(1, int(layers))):
            blocks += [nn.Linear(d_in, hidden), nn.ReLU(inplace=True)]
            if meta_dropout > 0:
                blocks.append(nn.Dropout(meta_dropout))
            d_in = hidden
        self.meta_branch = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        d = backbone.num_features
        if fusion == "concat":
            self.head = nn.Linear(d + hidden, num_out)
        else:
            self.head = nn.Linear(d, num_out)
            self.meta_head = nn.Linear(hidden, num_out)

    def standardise(self, metadata: torch.Tensor) -> torch.Tensor:
        z = (metadata.float().reshape(len(metadata), -1) - self.meta_mean) / self.meta_std
        return torch.nan_to_num(z, nan=0.0)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        feature_map = self.backbone.forward_features(batch["image"])
        embedding = self.backbone.pool(feature_map)
        meta = self.meta_branch(self.standardise(batch["metadata"]))
        z = self.dropout(embedding)
        if self.fusion == "concat":
            logits = self.head(torch.cat([z, meta], 1))
        else:
            logits = self.head(z) + self.meta_head(meta)
        return {"logits": logits, "embedding": embedding, "feature_map": feature_map, "meta_features": meta}


@register_strategy("metadata_fusion")
class MetadataFusion(Strategy):
    name = "metadata_fusion"
    requires = frozenset({"metadata"})
    tasks = CLASSIFICATION_TASKS
    citation = ("Kawahara et al., Seven-point checklist and skin lesion classification using multitask "
                "multimodal neural nets, IEEE JBHI 23(2):538-546 (2018); Höhn et al., J. Med. Internet "
                "Res. 23(7):e20708 (2021)")

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.metadata_names: list[str] = []

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason is None and self.options.get("fusion", "concat") not in FUSIONS:
            return f"strategy '{self.name}': options.fusion must be one of {list(FUSIONS)}, got {self.options['fusion']!r}"
        if reason and "metadata" not in spec.provides:
            reason += "; metadata_fusion needs per-image patient data (age, sex, site, …) to fuse with the image"
        return reason

    def prepare(self, context: StrategyContext) -> None:
        train = np.asarray(context.arrays.splits["train"].extras["metadata"])
        self.mean, self.std = train_statistics(train)  # train split only: no val/test statistics
        names = list(context.arrays.notes.get("metadata_names") or [])
        self.metadata_names = names if len(names) == len(self.mean) else [f"m{i}" for i in range(len(self.mean))]

    def build_net(self, backbone: Backbone, spec: DatasetSpec) -> nn.Module:
        if self.mean is None or self.std is None:
            raise RuntimeError("metadata_fusion: prepare() must run before build_net()")
        o = self.options
        return MetadataFusionNet(
            backbone, num_outputs(spec.task, spec.num_classes), self.mean, self.std,
            hidden=int(o.get("hidden", 32)), layers=int(o.get("layers", 2)), fusion=str(o.get("fusion", "concat")),
            dropout=float(o.get("dropout", 0.0)), meta_dropout=float(o.get("meta_dropout", 0.0)),
        )

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "metadata_names": list(self.metadata_names),
            "standardisation": {
                "source": "train split only",
                "mean": [float(v) for v in (self.mean if self.mean is not None else [])],
                "std": [float(v) for v in (self.std if self.std is not None else [])],
            },
        }
