"""`report_supervision`: radiology reports as auxiliary supervision (SURVEY.md family F).

Representative: TieNet (Wang et al., "TieNet: Text-Image Embedding Network for Common Thorax
Disease Classification and Reporting in Chest X-rays", CVPR 2018), which trains a CNN jointly
with a report model so that the image embedding carries what radiologists write; at test time
it classifies (and reports) from the image alone.

Here the report side is a bag of words: a scikit-learn ``TfidfVectorizer`` fitted in
`build_net` on the TRAIN split's texts only (rows L2-normalised), whose table of train vectors
is a buffer of the strategy (``tfidf_train``, one row per train sample in split order). A projection head maps the
pooled image embedding into the TF-IDF space, and an auxiliary loss aligns it with the
sample's report vector:

- ``loss: cosine``       1 - cos(projection, TF-IDF vector);
- ``loss: mse``          mean squared error to the TF-IDF vector;
- ``loss: contrastive``  CLIP-style symmetric InfoNCE within the batch between the normalised
  projections and the normalised report vectors (temperature ``temperature``); samples whose
  report vectors are identical count as positives of each other (templated reports repeat),
  the target is spread evenly over them.

L = CE(diagnosis) + weight * alignment. The text is used ONLY in training: the alignment term
is computed for training batches (stage "train"), from the TF-IDF table of the train split
gathered at ``batch["index"]`` (the row within the split); validation and test run on the
image alone (their loss is the task loss), so predictions never depend on a text, and asking
for a report target outside training fails. The table lookup also works on datasets whose
text the data module withholds from batches as label-derived.

Label-derived text (a dataset's `label_derived` lists "text", e.g. BUSI, whose captions are
class templates): aligning with it is label supervision in disguise, so the strategy is
refused unless ``allow_label_derived_text: true``; then a warning is logged and recorded in
the run's metadata.json.

Simplified relative to TieNet: no LSTM report generator and no attention-encoded text
embedding (a fixed TF-IDF target instead of a learned text encoder), no joint image-text
classifier, no report output at test time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.data.spec import DatasetSpec
from dkbench.data.spec import num_outputs
from dkbench.strategies.base import CLASSIFICATION_TASKS, BuildContext, StepContext, Strategy
from dkbench.strategies.options import Count, NonNegative, NonNegativeInt, Positive, StrategyOptions
from dkbench.strategies.registry import register_strategy

log = logging.getLogger("dkbench")

AlignmentLoss = Literal["cosine", "mse", "contrastive"]
LABEL_DERIVED_WARNING = (
    "report_supervision on dataset '{name}': its text is marked label-derived (label_derived: [text]); "
    "options.allow_label_derived_text=true aligns the image embedding with texts that encode the "
    "label, i.e. extra label supervision, not report knowledge. Do not read this run as evidence "
    "for report supervision."
)


class ReportNet(nn.Module):
    """Backbone + diagnosis head + projection of the embedding into the report-vector space;
    adds `text_proj` (B, V) to the outputs (training-only target; the logits never use it)."""

    def __init__(self, backbone: Backbone, num_out: int, text_dim: int, proj_hidden: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        d = backbone.num_features
        self.head = nn.Linear(d, num_out)
        if proj_hidden > 0:
            self.text_proj = nn.Sequential(nn.Linear(d, proj_hidden), nn.ReLU(inplace=True),
                                           nn.Linear(proj_hidden, text_dim))
        else:
            self.text_proj = nn.Linear(d, text_dim)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        feature_map = self.backbone.forward_features(batch["image"])
        embedding = self.backbone.pool(feature_map)
        return {"logits": self.head(self.dropout(embedding)), "embedding": embedding,
                "feature_map": feature_map, "text_proj": self.text_proj(embedding)}


def alignment_loss(proj: torch.Tensor, target: torch.Tensor, kind: AlignmentLoss = "cosine",
                   temperature: float = 0.1) -> torch.Tensor:
    """Alignment of image projections (B, V) with report vectors (B, V); rows whose report
    vector is all zero (no word of the vocabulary) are left out."""
    proj, target = proj.float(), target.float()
    # masks instead of boolean indexing: no host sync per training step
    keep = (target.abs().sum(1) > 0).float()
    n_keep = keep.sum().clamp_min(1.0)

    def masked_mean(per_row: torch.Tensor) -> torch.Tensor:  # 0 (graph kept) when no row is kept
        return (per_row * keep).sum() / n_keep

    if kind == "cosine":
        return masked_mean(1 - F.cosine_similarity(proj, target, dim=1))
    if kind == "mse":
        return masked_mean((proj - target).pow(2).mean(1))
    if kind == "contrastive":
        p, t = F.normalize(proj, dim=1), F.normalize(target, dim=1)
        logits = p @ t.T / temperature
        pair = keep[:, None] * keep[None, :]  # dropped rows are neither anchors nor candidates
        logits = logits.masked_fill(pair == 0, -1e4)
        same = (t @ t.T > 1 - 1e-6).float() * pair  # identical reports are positives of each other
        soft = same / same.sum(1, keepdim=True).clamp_min(1.0)
        i2t = masked_mean(-(soft * logits.log_softmax(1)).sum(1))
        t2i = masked_mean(-(soft * logits.T.log_softmax(1)).sum(1))  # `same` is symmetric
        return (i2t + t2i) / 2
    raise ValueError(f"report_supervision: loss must be cosine, mse or contrastive, got {kind!r}")


@register_strategy("report_supervision")
class ReportSupervision(Strategy):
    name = "report_supervision"
    family = "F"
    knowledge = "report text (training)"
    requires = frozenset({"text"})
    tasks = CLASSIFICATION_TASKS
    citation = ("Wang et al., TieNet: Text-Image Embedding Network for Common Thorax Disease "
                "Classification and Reporting in Chest X-rays, CVPR 2018")

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: cosine: 1 - cos(projection, TF-IDF); mse: squared error; contrastive: in-batch CLIP-style InfoNCE
        loss: AlignmentLoss = "cosine"
        #: weight of the alignment term (added to the diagnosis CE, training batches only)
        weight: NonNegative = 1.0
        #: InfoNCE temperature (loss: contrastive only)
        temperature: Positive = 0.1
        #: 0: linear projection embedding -> TF-IDF space; >0: one hidden ReLU layer of this width
        proj_hidden: NonNegativeInt = 0
        #: TF-IDF vocabulary cap (most frequent train terms)
        max_features: Count = 2000
        #: TF-IDF n-grams 1..ngram_max
        ngram_max: Count = 1
        #: true: run on datasets whose text is label-derived (BUSI captions), with a loud warning
        allow_label_derived_text: bool = False

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.vocabulary: list[str] = []
        self.warnings: list[str] = []

    # --- compatibility ---------------------------------------------------------------------
    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if "text" in spec.label_derived and not self.options.allow_label_derived_text:
            return (
                f"strategy '{self.name}': dataset '{spec.name}' marks its text as label-derived "
                f"(label_derived: {sorted(spec.label_derived)}; e.g. captions that name the class), so "
                f"aligning images with it would be label supervision, not report knowledge; set "
                f"strategy.options.allow_label_derived_text=true to run anyway (recorded as a warning)"
            )
        return None

    # --- the report vectors, then the network -----------------------------------------------
    def build_net(self, ctx: BuildContext) -> nn.Module:
        from sklearn.feature_extraction.text import TfidfVectorizer

        spec = ctx.spec
        texts = [str(t) for t in np.asarray(ctx.arrays.splits["train"].extras["text"]).tolist()]
        vectorizer = TfidfVectorizer(max_features=self.options.max_features,
                                     ngram_range=(1, self.options.ngram_max), sublinear_tf=True)
        matrix = vectorizer.fit_transform(texts)  # TRAIN texts only
        self.register_buffer("tfidf_train", torch.from_numpy(np.asarray(matrix.todense(), dtype=np.float32)))
        self.vocabulary = sorted(vectorizer.vocabulary_)
        self.warnings = []
        if "text" in spec.label_derived:
            msg = LABEL_DERIVED_WARNING.format(name=spec.name)
            self.warnings.append(msg)
            log.warning(msg)
        return ReportNet(ctx.make_backbone(), num_outputs(spec.task, spec.num_classes), self.tfidf_train.shape[1],
                         proj_hidden=self.options.proj_hidden, dropout=self.options.dropout)

    # --- training -----------------------------------------------------------------------------
    def report_targets(self, batch: dict, step: StepContext) -> torch.Tensor:
        """The TF-IDF vectors of a TRAINING batch's reports: rows `batch["index"]` of the train
        split's table (gathered where the table lives, no host read)."""
        if not step.training:
            raise KeyError(f"report_supervision: a {step.stage} batch is not in the train split; the report "
                           f"target exists for training samples only")
        return self.tfidf_train.index_select(0, batch["index"].to(self.tfidf_train.device))

    def loss_terms(self, per_sample_loss: torch.Tensor, outputs: dict, batch: dict,
                   step: StepContext) -> dict[str, torch.Tensor]:
        terms = {"task": per_sample_loss.mean()}
        if step.training:  # the text is a training-only target: never read at val / test
            o = self.options
            terms["report"] = o.weight * alignment_loss(outputs["text_proj"], self.report_targets(batch, step),
                                                        o.loss, o.temperature)
        return terms

    def extra_metrics(self, outputs: dict, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        if not step.training:
            return {}
        target = self.report_targets(batch, step)
        return {"report_cos": F.cosine_similarity(outputs["text_proj"].detach().float(), target, dim=1).mean()}

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "text_embedding": "TF-IDF (scikit-learn TfidfVectorizer, sublinear tf, l2 rows) fitted on the train split's texts only",
            "text_use": "training-only alignment target; val/test use the image alone",
            "vocabulary_size": len(self.vocabulary),
            "vocabulary_head": self.vocabulary[:50],
            "warnings": list(self.warnings),
        }
