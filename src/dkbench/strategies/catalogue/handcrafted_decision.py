"""`handcrafted_decision`: a classical classifier on radiomics features, combined with the
CNN at the decision level (SURVEY.md family E).

Decision-level fusion as the survey describes it (Xie et al., MedIA 69:101985, 2021, §3.6:
a separate model on hand-crafted features whose predictions are combined with the deep
network's): the radiomics vector of `handcrafted_feature` (same cache, same train-only
standardisation, same mask rule: ``use_mask: auto`` uses the dataset's GROUND-TRUTH lesion
masks for train, val AND test features when every image has a non-empty one, stated in
metadata.json) trains a scikit-learn
classifier in `prepare` (``classifier: logreg`` = L2 logistic regression with inverse
strength ``C``; ``gbm`` = HistGradientBoostingClassifier; multilabel: one-vs-rest). The CNN
trains alone, with the plain task loss. Its probabilities are then combined in `postprocess`
by the rule ``combine``:

- ``average`` (default): probs = (1 - alpha) * p_CNN + alpha * p_classifier, per class
  (alpha = ``alpha``, default 0.5), on val (model selection) and test;
- ``stacking``: a logistic regression fitted on the VALIDATION split maps
  [logit p_CNN, logit p_classifier] (binary; multiclass: the log-probabilities of both) to
  the label; it is fitted when the test stage starts, with the CNN weights being tested
  (the best-validation checkpoint), on the CNN's val predictions computed then. During
  training, validation (checkpoint selection) uses the ``average`` rule.
  Binary and multiclass only.

Simplified: no feature selection; the classifier's hyper-parameters are fixed by the options
(no inner cross-validation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.multiclass import OneVsRestClassifier
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.data.spec import SPLITS, DatasetSpec
from dkbench.data.transforms import normalize
from dkbench.metrics.classification import probabilities
from dkbench.strategies.base import StrategyContext
from dkbench.strategies.catalogue.handcrafted_feature import HandcraftedVectors
from dkbench.strategies.registry import register_strategy

CLASSIFIERS = ("logreg", "gbm")
COMBINE_RULES = ("average", "stacking")


def _logit_inputs(p: np.ndarray, task: str) -> np.ndarray:
    """Stacking inputs from (N, K) probabilities: logit of class 1 (binary), else log p."""
    p = np.clip(p.astype(np.float64), 1e-6, 1 - 1e-6)
    if task == "binary":
        return np.log(p[:, 1:2] / (1 - p[:, 1:2]))
    return np.log(p)


def _auroc(labels: np.ndarray, probs: np.ndarray, task: str) -> float | None:
    try:
        if task == "binary":
            return float(roc_auc_score(labels, probs[:, 1]))
        if task == "multiclass":
            return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro",
                                       labels=list(range(probs.shape[1]))))
        return float(roc_auc_score(labels, probs, average="macro"))
    except ValueError:  # a class absent from the split
        return None


@register_strategy("handcrafted_decision")
class HandcraftedDecision(HandcraftedVectors):
    name = "handcrafted_decision"
    citation = ("Xie et al., A survey on incorporating domain knowledge into deep learning for medical image "
                "analysis, MedIA 69:101985 (2021), §3.6 decision-level fusion; features after pyradiomics "
                "(van Griethuysen et al., Cancer Research 77(21):e104, 2017)")

    # --- options ----------------------------------------------------------------------
    @property
    def combine(self) -> str:
        return str(self.options.get("combine", "average")).lower()

    @property
    def alpha(self) -> float:
        return float(self.options.get("alpha", 0.5))

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if self.combine == "stacking" and spec.task == "multilabel":
            return f"strategy '{self.name}' with combine=stacking supports binary and multiclass tasks, not multilabel"
        return None

    def _check_options(self) -> None:
        classifier = str(self.options.get("classifier", "logreg")).lower()
        if classifier not in CLASSIFIERS:
            raise ValueError(f"handcrafted_decision: classifier '{classifier}' is not one of {list(CLASSIFIERS)}")
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"handcrafted_decision: combine '{self.combine}' is not one of {list(COMBINE_RULES)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"handcrafted_decision: alpha must lie in [0, 1], got {self.alpha}")

    def make_classifier(self, seed: int) -> Any:
        o = self.options
        if str(o.get("classifier", "logreg")).lower() == "gbm":
            clf = HistGradientBoostingClassifier(random_state=seed)
        else:
            clf = LogisticRegression(C=float(o.get("C", 1.0)), max_iter=5000)
        return OneVsRestClassifier(clf) if self.spec.task == "multilabel" else clf

    # --- pre-stage: the classifier ----------------------------------------------------------
    def prepare(self, context: StrategyContext) -> None:
        self._check_options()
        super().prepare(context)
        task, k = self.spec.task, self.spec.num_classes
        self.classifier = self.make_classifier(context.seed)
        self.classifier.fit(self.features["train"].numpy(), self.labels["train"])
        self.clf_probs: dict[str, torch.Tensor] = {}
        for s in SPLITS:
            p = self.classifier.predict_proba(self.features[s].numpy())
            if task != "multilabel":  # columns → class indices (a class may be absent from train)
                full = np.zeros((len(p), 2 if task == "binary" else k))
                full[:, np.asarray(self.classifier.classes_, dtype=int)] = p
                p = full
            self.clf_probs[s] = torch.from_numpy(p.astype(np.float32))
        self.clf_auroc = {s: _auroc(self.labels[s], self.clf_probs[s].numpy(), task) for s in ("train", "val", "test")}
        data = (context.config or {}).get("data") or {}
        self.data_mean, self.data_std = float(data.get("mean", 0.5)), float(data.get("std", 0.5))
        self.eval_batch_size = int(data.get("eval_batch_size") or data.get("batch_size") or 256)
        self.val_images = context.arrays.splits["val"].image
        self.stacker: LogisticRegression | None = None
        self._stacker_fingerprint: torch.Tensor | None = None

    def build_net(self, backbone: Backbone, spec: DatasetSpec) -> nn.Module:
        self.net = super().build_net(backbone, spec)  # the plain CNN: it trains alone
        return self.net

    # --- stacking: fitted on the CNN's val predictions of the weights being tested -----------
    def _fingerprint(self) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([t.detach().double().sum() for t in self.net.state_dict().values()
                                if t.is_floating_point()]).cpu()

    @torch.no_grad()
    def cnn_probs(self, images: np.ndarray, device: torch.device) -> np.ndarray:
        """The CNN's probabilities on raw uint8 images (normalised as the data module does)."""
        out = []
        for start in range(0, len(images), self.eval_batch_size):
            x = normalize(torch.from_numpy(np.ascontiguousarray(images[start:start + self.eval_batch_size])).to(device),
                          self.data_mean, self.data_std)
            out.append(probabilities(self.net({"image": x})["logits"].float(), self.spec.task).cpu())
        return torch.cat(out).numpy()

    def fit_stacker(self, device: torch.device) -> None:
        fingerprint = self._fingerprint()
        if self.stacker is not None and torch.equal(fingerprint, self._stacker_fingerprint):
            return
        was_training = self.net.training
        self.net.eval()
        cnn_val = self.cnn_probs(self.val_images, device)
        self.net.train(was_training)
        x = np.concatenate([_logit_inputs(cnn_val, self.spec.task),
                            _logit_inputs(self.clf_probs["val"].numpy(), self.spec.task)], 1)
        self.stacker = LogisticRegression(max_iter=5000).fit(x, self.labels["val"])
        self._stacker_fingerprint = fingerprint

    # --- hooks ---------------------------------------------------------------------------
    def transform_batch(self, batch: dict, stage: str) -> dict:
        batch = super().transform_batch(batch, stage)
        batch["handcrafted_probs"] = self.rows(batch, stage, self.clf_probs)
        batch["handcrafted_stage"] = stage
        if stage == "test" and self.combine == "stacking":
            self.fit_stacker(batch["image"].device)
        return batch

    def combined(self, cnn: torch.Tensor, clf: torch.Tensor, stage: str) -> torch.Tensor:
        """The stated combination rule (see the module docstring)."""
        if self.combine == "stacking" and stage == "test":
            x = np.concatenate([_logit_inputs(cnn.detach().cpu().numpy(), self.spec.task),
                                _logit_inputs(clf.detach().cpu().numpy(), self.spec.task)], 1)
            p = self.stacker.predict_proba(x)  # type: ignore[union-attr]
            full = np.zeros((len(p), cnn.shape[1]))
            full[:, np.asarray(self.stacker.classes_, dtype=int)] = p  # type: ignore[union-attr]
            return torch.from_numpy(full).to(cnn)
        return (1 - self.alpha) * cnn + self.alpha * clf

    def postprocess(self, outputs: dict, batch: dict) -> dict:
        cnn = probabilities(outputs["logits"].float(), self.spec.task)
        clf = batch["handcrafted_probs"].to(cnn)
        outputs = dict(outputs)
        outputs.update(cnn_probs=cnn, clf_probs=clf,
                       probs=self.combined(cnn, clf, batch.get("handcrafted_stage", "val")))
        return outputs

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        if self.combine == "stacking":
            rule = ("stacking: logistic regression on [logit p_CNN, logit p_clf] (multiclass: log-probabilities) "
                    "fitted on the val split with the tested CNN weights; val during training: average with "
                    f"alpha={self.alpha}")
        else:
            rule = f"average: probs = (1 - {self.alpha}) * p_CNN + {self.alpha} * p_classifier"
        meta["decision_fusion"] = {"rule": rule, "classifier": str(self.options.get("classifier", "logreg"))}
        if hasattr(self, "classifier"):
            meta["decision_fusion"]["classifier_auroc"] = self.clf_auroc  # the classifier alone, per split
            meta["decision_fusion"]["classifier_repr"] = repr(self.classifier)
        if getattr(self, "stacker", None) is not None:
            meta["decision_fusion"]["stacker"] = {"coef": self.stacker.coef_.tolist(),
                                                  "intercept": self.stacker.intercept_.tolist()}
        return meta
