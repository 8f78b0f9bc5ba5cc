"""`attribute_multitask`: doctors' semantic attributes as auxiliary labels (SURVEY.md family E).

Representative: HSCNN (Shen et al., "An interpretable deep hierarchical semantic
convolutional neural network for lung nodule malignancy classification", Expert Systems with
Applications 128:84-95, 2019). HSCNN predicts radiologists' semantic nodule attributes
(calcification, margin, subtlety, …) from a shared CNN and feeds those low-level semantic
predictions into the malignancy classifier; the attributes supervise the shared features and
make the diagnosis interpretable.

Here: one linear head per attribute on the shared pooled embedding (the number of values of
each attribute is read from the data: max value + 1 over the splits, at least 2), and the
diagnosis head on the embedding, optionally concatenated with the attribute heads' softmax
probabilities (``feed_attributes: true``, HSCNN's hierarchy; the probabilities are not
detached, so the diagnosis loss also trains the attribute heads). Loss

    L = CE(diagnosis) + weight * mean_a CE_a(attribute a),

where each CE_a averages over the samples whose attribute a is known (value -1 = "not
applicable", e.g. images without a lesion, is ignored) and the mean runs over the attributes
known for at least one sample of the batch.

Simplified relative to HSCNN: no separate per-attribute convolutional branches (one linear
head each on the shared embedding), no class-balanced loss weights, no pre-training stage;
HSCNN's attribute labels are radiologists' LIDC ratings, whereas the probe's are thresholded
generator parameters and BUSI's are derived from the lesion masks (readers/busi.py).

Metrics (val/… and test/…): ``attr_acc_<name>`` per attribute (accuracy over the batch's
samples with a known value, averaged over batches weighted by batch size) and
``attr_acc_mean`` (their mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.data.spec import num_outputs
from dkbench.strategies.base import CLASSIFICATION_TASKS, BuildContext, StepContext, Strategy
from dkbench.strategies.options import NonNegative, StrategyOptions
from dkbench.strategies.registry import register_strategy

MISSING = -1


class AttributeNet(nn.Module):
    """Backbone + one head per attribute + diagnosis head (fed the attribute probabilities
    when `feed_attributes`); adds `attr_logits` (list of (B, k_a)) to the outputs."""

    def __init__(self, backbone: Backbone, num_out: int, attribute_classes: list[int],
                 feed_attributes: bool = True, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.feed_attributes = feed_attributes
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        d = backbone.num_features
        self.attr_heads = nn.ModuleList(nn.Linear(d, k) for k in attribute_classes)
        self.head = nn.Linear(d + (sum(attribute_classes) if feed_attributes else 0), num_out)

    def forward(self, batch: dict) -> dict[str, Any]:
        feature_map = self.backbone.forward_features(batch["image"])
        embedding = self.backbone.pool(feature_map)
        z = self.dropout(embedding)
        attr_logits = [h(z) for h in self.attr_heads]
        head_in = torch.cat([z, *(a.softmax(1) for a in attr_logits)], 1) if self.feed_attributes else z
        return {"logits": self.head(head_in), "embedding": embedding, "feature_map": feature_map,
                "attr_logits": attr_logits}


def attribute_loss(attr_logits: list[torch.Tensor], attributes: torch.Tensor) -> torch.Tensor:
    """Mean over attributes of each attribute's CE over the samples with a known value (-1
    ignored); attributes that no sample of the batch knows are left out, and a batch that knows
    none gives exactly 0 (graph kept). Masked sums instead of `if known.any()`: no host sync
    per training step."""
    total, present = attr_logits[0].sum() * 0.0, attr_logits[0].new_zeros(())
    for a, logits in enumerate(attr_logits):
        target = attributes[:, a].long()
        known = (target != MISSING).float()
        ce = F.cross_entropy(logits.float(), target, ignore_index=MISSING, reduction="none")  # 0 where ignored
        count = known.sum()
        has = (count > 0).float()
        total = total + has * ce.sum() / count.clamp_min(1.0)
        present = present + has
    return total / present.clamp_min(1.0)


@register_strategy("attribute_multitask")
class AttributeMultitask(Strategy):
    name = "attribute_multitask"
    family = "E"
    knowledge = "expert attributes / criteria (training)"
    requires = frozenset({"attributes"})
    tasks = CLASSIFICATION_TASKS
    citation = ("Shen et al., An interpretable deep hierarchical semantic convolutional neural network "
                "for lung nodule malignancy classification (HSCNN), Expert Systems with Applications "
                "128:84-95 (2019)")

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: weight of the mean attribute cross-entropy (value -1 = not applicable, ignored)
        weight: NonNegative = 1.0
        #: HSCNN hierarchy: the diagnosis head also sees the attribute heads' softmax probabilities
        feed_attributes: bool = True

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.attribute_names: list[str] = []
        self.attribute_classes: list[int] = []
        self.majority_rate: dict[str, float] = {}

    def build_net(self, ctx: BuildContext) -> nn.Module:
        splits = ctx.arrays.splits
        train = np.asarray(splits["train"].extras["attributes"])
        if train.ndim != 2:
            raise ValueError(f"attribute_multitask: attributes must be (N, A), got shape {train.shape}")
        every = np.concatenate([np.asarray(s.extras["attributes"]).reshape(-1, train.shape[1])
                                for s in splits.values()])
        # the number of values is the attribute's schema (not a statistic): max over all splits
        self.attribute_classes = [max(2, int(every[:, a].max()) + 1) for a in range(train.shape[1])]
        names = list(ctx.arrays.notes.get("attribute_names") or [])
        self.attribute_names = names if len(names) == train.shape[1] else [f"a{a}" for a in range(train.shape[1])]
        for a, name in enumerate(self.attribute_names):  # for reading attr_acc against chance
            known = train[:, a][train[:, a] != MISSING]
            self.majority_rate[name] = float(np.bincount(known).max() / len(known)) if len(known) else float("nan")
        return AttributeNet(ctx.make_backbone(), num_outputs(ctx.spec.task, ctx.spec.num_classes),
                            self.attribute_classes, feed_attributes=self.options.feed_attributes,
                            dropout=self.options.dropout)

    def loss_terms(self, per_sample_loss: torch.Tensor, outputs: dict, batch: dict,
                   step: StepContext) -> dict[str, torch.Tensor]:
        terms = {"task": per_sample_loss.mean()}
        attr = attribute_loss(outputs["attr_logits"], batch["attributes"]) + per_sample_loss.sum() * 0.0
        terms["attributes"] = self.options.weight * attr
        return terms

    def extra_metrics(self, outputs: dict, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if step.training:  # reading which attributes a batch knows would sync every step
            return out
        for a, logits in enumerate(outputs["attr_logits"]):
            target = batch["attributes"][:, a].long()
            known = target != MISSING
            if bool(known.any()):  # a batch without a known value logs nothing for it
                out[f"attr_acc_{self.attribute_names[a]}"] = (logits.argmax(1)[known] == target[known]).float().mean()
        if out:
            out["attr_acc_mean"] = torch.stack(list(out.values())).mean()
        return out

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "attribute_names": list(self.attribute_names),
            "attribute_classes": list(self.attribute_classes),
            "attribute_majority_rate_train": dict(self.majority_rate),
            "loss": "CE(diagnosis) + weight * mean over attributes of CE (value -1 ignored)",
        }
