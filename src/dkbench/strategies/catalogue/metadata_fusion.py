"""`metadata_fusion`: patient data (age, sex, site, …) fused with image features (SURVEY.md family F).

Representative: Kawahara et al., "Seven-point checklist and skin lesion classification using
multitask multimodal neural nets", IEEE J. Biomed. Health Inform. 23(2):538-546 (2018), which
fuses clinical/dermoscopic images with patient metadata; Höhn et al., "Integrating patient data
into skin cancer classification using convolutional neural networks: systematic review",
J. Med. Internet Res. 23(7):e20708 (2021) reviews such fusions (mostly concatenation of an MLP
metadata branch with the CNN features, or late fusion).

Here the metadata vector (B, M) is standardised with the TRAIN split's mean and standard
deviation (computed in `build_net`, kept as the strategy's buffers ``metadata_mean`` /
``metadata_std``; a constant column gets std 1; missing values, NaN, become 0 = the train mean
after standardisation) in `transform_batch`, passed through an MLP branch (Linear → ReLU →
Dropout, `hidden` units, `layers` layers) and fused:

- ``fusion: concat`` (feature-level): diagnosis head on [image embedding, metadata features];
- ``fusion: late`` (decision-level): image head logits + metadata head logits.

Real metadata (Derm7pt, HAM10000) arrive through `dkbench.data.tabular.encode_metadata`:
categorical fields one-hot (all zero when unknown) and each numeric field followed by a
``<name>_missing`` indicator, so after standardisation a missing age is the train mean *and*
flagged, and the branch can tell "unknown" from "average".

Simplified relative to Kawahara et al.: no multitask 7-point-checklist heads (the criteria are
attribute_multitask's auxiliary targets), no second image modality (multiview's), metadata are
numeric columns as the reader gives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.data.spec import DatasetSpec
from dkbench.data.spec import num_outputs
from dkbench.strategies.base import CLASSIFICATION_TASKS, BuildContext, StepContext, Strategy
from dkbench.strategies.options import Bounds, Count, StrategyOptions
from dkbench.strategies.registry import register_strategy

Fusion = Literal["concat", "late"]


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
    """Backbone + metadata MLP branch on the standardised metadata (``batch["metadata_standardised"]``,
    added by the strategy's transform_batch); concat (feature-level) or late (logit-sum) fusion."""

    def __init__(self, backbone: Backbone, num_out: int, num_metadata: int, hidden: int = 32, layers: int = 2,
                 fusion: Fusion = "concat", dropout: float = 0.0, meta_dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.fusion = fusion
        blocks: list[nn.Module] = []
        d_in = num_metadata
        for _ in range(layers):
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

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        if "metadata_standardised" not in batch:
            raise KeyError("MetadataFusionNet needs batch['metadata_standardised'] (added by the strategy's "
                           "transform_batch)")
        feature_map = self.backbone.forward_features(batch["image"])
        embedding = self.backbone.pool(feature_map)
        meta = self.meta_branch(batch["metadata_standardised"])
        z = self.dropout(embedding)
        if self.fusion == "concat":
            logits = self.head(torch.cat([z, meta], 1))
        else:
            logits = self.head(z) + self.meta_head(meta)
        return {"logits": logits, "embedding": embedding, "feature_map": feature_map, "meta_features": meta}


@register_strategy("metadata_fusion")
class MetadataFusion(Strategy):
    name = "metadata_fusion"
    family = "F"
    knowledge = "patient metadata (train + **test**)"
    requires = frozenset({"metadata"})
    tasks = CLASSIFICATION_TASKS
    citation = ("Kawahara et al., Seven-point checklist and skin lesion classification using multitask "
                "multimodal neural nets, IEEE JBHI 23(2):538-546 (2018); Höhn et al., J. Med. Internet "
                "Res. 23(7):e20708 (2021)")

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: concat: head on [image embedding, metadata features]; late: image logits + metadata logits
        fusion: Fusion = "concat"
        #: units per layer of the metadata MLP branch
        hidden: Count = 32
        #: Linear-ReLU layers of the metadata branch
        layers: Count = 2
        #: dropout after each metadata layer
        meta_dropout: Annotated[float, Bounds(ge=0, lt=1)] = 0.0

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.metadata_names: list[str] = []

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason and "metadata" not in spec.provides:
            reason += "; metadata_fusion needs per-image patient data (age, sex, site, …) to fuse with the image"
        return reason

    def build_net(self, ctx: BuildContext) -> nn.Module:
        train = np.asarray(ctx.arrays.splits["train"].extras["metadata"])
        mean, std = train_statistics(train)  # train split only: no val/test statistics
        self.register_buffer("metadata_mean", torch.from_numpy(mean))
        self.register_buffer("metadata_std", torch.from_numpy(std))
        names = list(ctx.arrays.notes.get("metadata_names") or [])
        self.metadata_names = names if len(names) == len(mean) else [f"m{i}" for i in range(len(mean))]
        o = self.options
        return MetadataFusionNet(
            ctx.make_backbone(), num_outputs(ctx.spec.task, ctx.spec.num_classes), len(mean),
            hidden=o.hidden, layers=o.layers, fusion=o.fusion, dropout=o.dropout, meta_dropout=o.meta_dropout,
        )

    def standardise(self, metadata: torch.Tensor) -> torch.Tensor:
        """(B, M) z-scores with the train statistics; missing values (NaN) → 0, the train mean."""
        z = (metadata.float().reshape(len(metadata), -1) - self.metadata_mean) / self.metadata_std
        return torch.nan_to_num(z, nan=0.0)

    def transform_batch(self, batch: dict, step: StepContext) -> dict:
        return {**batch, "metadata_standardised": self.standardise(batch["metadata"])}

    def metadata(self) -> dict[str, Any]:
        fitted = hasattr(self, "metadata_mean")  # after build_net
        return {
            **super().metadata(),
            "metadata_names": list(self.metadata_names),
            "standardisation": {
                "source": "train split only",
                "mean": self.metadata_mean.tolist() if fitted else [],
                "std": self.metadata_std.tolist() if fitted else [],
            },
        }
