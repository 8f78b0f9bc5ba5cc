"""`handcrafted_decision`: a classical classifier on radiomics features, combined with the
CNN at the decision level (SURVEY.md family E).

Decision-level fusion as the survey describes it (Xie et al., MedIA 69:101985, 2021, §3.6:
a separate model on hand-crafted features whose predictions are combined with the deep
network's): the radiomics vector of `handcrafted_feature` (same cache, same train-only
standardisation, same mask rule: ``use_mask: auto`` uses the dataset's GROUND-TRUTH lesion
masks for train, val AND test features when every image has a non-empty one, stated in
metadata.json) trains a scikit-learn
classifier in `build_net` (``classifier: logreg`` = L2 logistic regression with inverse
strength ``C``; ``gbm`` = HistGradientBoostingClassifier; multilabel: one-vs-rest). The CNN
trains alone, with the plain task loss. The classifier's probabilities of every split are kept
as buffers of the strategy (``clf_probs_train``, ``clf_probs_val``, ``clf_probs_test``; rows
gathered with ``batch["index"]``), and combined with the CNN's in `postprocess` by the rule
``combine``:

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

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.multiclass import OneVsRestClassifier
from torch import nn

from dkbench.data.spec import SPLITS, DatasetSpec
from dkbench.data.transforms import normalize
from dkbench.metrics.classification import probabilities
from dkbench.strategies.base import BuildContext, StepContext, task_net
from dkbench.strategies.catalogue.handcrafted_feature import HandcraftedVectors, RadiomicsOptions
from dkbench.strategies.options import Fraction, Positive
from dkbench.strategies.registry import register_strategy


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
    family = "E"
    knowledge = "radiomics in expert masks (train + **test**)"
    citation = ("Xie et al., A survey on incorporating domain knowledge into deep learning for medical image "
                "analysis, MedIA 69:101985 (2021), §3.6 decision-level fusion; features after pyradiomics "
                "(van Griethuysen et al., Cancer Research 77(21):e104, 2017)")

    @dataclass(frozen=True)
    class Options(RadiomicsOptions):
        #: logreg: L2 logistic regression on the train-standardised features; gbm: HistGradientBoostingClassifier
        classifier: Literal["logreg", "gbm"] = "logreg"
        #: logreg inverse regularisation strength
        C: Positive = 1.0
        #: average: (1 - alpha) p_CNN + alpha p_classifier; stacking: logistic regression fitted on val
        combine: Literal["average", "stacking"] = "average"
        #: weight of the classifier in `average` (and on val during training with stacking)
        alpha: Fraction = 0.5

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if self.options.combine == "stacking" and spec.task == "multilabel":
            return f"strategy '{self.name}' with combine=stacking supports binary and multiclass tasks, not multilabel"
        return None

    def make_classifier(self, task: str, seed: int) -> Any:
        if self.options.classifier == "gbm":
            clf = HistGradientBoostingClassifier(random_state=seed)
        else:
            clf = LogisticRegression(C=self.options.C, max_iter=5000)
        return OneVsRestClassifier(clf) if task == "multilabel" else clf

    # --- the classifier, then the plain CNN --------------------------------------------------
    def build_net(self, ctx: BuildContext) -> nn.Module:
        features = self.standardised_features(ctx)
        task, k = ctx.spec.task, ctx.spec.num_classes
        labels = {s: np.asarray(ctx.arrays.splits[s].label) for s in SPLITS}
        # the fitted classifier is needed only here: its probabilities of every split are the state
        classifier = self.make_classifier(task, ctx.seed)
        classifier.fit(features["train"].numpy(), labels["train"])
        for s in SPLITS:
            p = classifier.predict_proba(features[s].numpy())
            if task != "multilabel":  # columns → class indices (a class may be absent from train)
                full = np.zeros((len(p), 2 if task == "binary" else k))
                full[:, np.asarray(classifier.classes_, dtype=int)] = p
                p = full
            self.register_buffer(f"clf_probs_{s}", torch.from_numpy(p.astype(np.float32)))
        self.classifier_repr = repr(classifier)
        self.clf_auroc = {s: _auroc(labels[s], getattr(self, f"clf_probs_{s}").numpy(), task) for s in SPLITS}
        if self.options.combine == "stacking":  # what the test-time stacker is fitted on
            data = ctx.config.get("data") or {}
            self.data_mean, self.data_std = float(data.get("mean", 0.5)), float(data.get("std", 0.5))
            self.eval_batch_size = int(data.get("eval_batch_size") or data.get("batch_size") or 256)
            self.val_images = ctx.arrays.splits["val"].image
            self.val_labels = labels["val"]
        self.stacker: LogisticRegression | None = None
        self._stacker_fingerprint: torch.Tensor | None = None
        return task_net(ctx.make_backbone(), ctx.spec, self.options.dropout)  # the plain CNN: it trains alone

    # --- stacking: fitted on the CNN's val predictions of the weights being tested -----------
    @staticmethod
    def _fingerprint(net: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([t.detach().double().sum() for t in net.state_dict().values()
                                if t.is_floating_point()]).cpu()

    @torch.no_grad()
    def cnn_probs(self, net: nn.Module, images: np.ndarray, task: str, device: torch.device) -> np.ndarray:
        """The CNN's probabilities on raw uint8 images (normalised as the data module does)."""
        out = []
        for start in range(0, len(images), self.eval_batch_size):
            x = normalize(torch.from_numpy(np.ascontiguousarray(images[start:start + self.eval_batch_size])).to(device),
                          self.data_mean, self.data_std)
            out.append(probabilities(net({"image": x})["logits"].float(), task).cpu())
        return torch.cat(out).numpy()

    def fit_stacker(self, step: StepContext) -> None:
        net = step.net  # the task module's network, with the weights being tested
        if net is None:
            raise ValueError("handcrafted_decision: stacking needs the network in the step context (step.net)")
        fingerprint = self._fingerprint(net)
        if self.stacker is not None and torch.equal(fingerprint, self._stacker_fingerprint):
            return
        was_training = net.training
        net.eval()
        cnn_val = self.cnn_probs(net, self.val_images, step.task, step.device)
        net.train(was_training)
        x = np.concatenate([_logit_inputs(cnn_val, step.task),
                            _logit_inputs(self.clf_probs_val.cpu().numpy(), step.task)], 1)
        self.stacker = LogisticRegression(max_iter=5000).fit(x, self.val_labels)
        self._stacker_fingerprint = fingerprint

    # --- hooks ---------------------------------------------------------------------------
    def combined(self, cnn: torch.Tensor, clf: torch.Tensor, step: StepContext) -> torch.Tensor:
        """The stated combination rule (see the module docstring)."""
        if self.options.combine == "stacking" and step.stage == "test":
            x = np.concatenate([_logit_inputs(cnn.detach().cpu().numpy(), step.task),
                                _logit_inputs(clf.detach().cpu().numpy(), step.task)], 1)
            p = self.stacker.predict_proba(x)  # type: ignore[union-attr]
            full = np.zeros((len(p), cnn.shape[1]))
            full[:, np.asarray(self.stacker.classes_, dtype=int)] = p  # type: ignore[union-attr]
            return torch.from_numpy(full).to(cnn)
        alpha = self.options.alpha
        return (1 - alpha) * cnn + alpha * clf

    def postprocess(self, outputs: dict, batch: dict, step: StepContext) -> dict:
        if self.options.combine == "stacking" and step.stage == "test":
            self.fit_stacker(step)
        cnn = probabilities(outputs["logits"].float(), step.task)
        clf = self.split_rows("clf_probs", batch, step).to(cnn)
        outputs = dict(outputs)
        outputs.update(cnn_probs=cnn, clf_probs=clf, probs=self.combined(cnn, clf, step))
        return outputs

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        alpha = self.options.alpha
        if self.options.combine == "stacking":
            rule = ("stacking: logistic regression on [logit p_CNN, logit p_clf] (multiclass: log-probabilities) "
                    "fitted on the val split with the tested CNN weights; val during training: average with "
                    f"alpha={alpha}")
        else:
            rule = f"average: probs = (1 - {alpha}) * p_CNN + {alpha} * p_classifier"
        meta["decision_fusion"] = {"rule": rule, "classifier": self.options.classifier}
        if hasattr(self, "classifier_repr"):  # after build_net
            meta["decision_fusion"]["classifier_auroc"] = self.clf_auroc  # the classifier alone, per split
            meta["decision_fusion"]["classifier_repr"] = self.classifier_repr
        if getattr(self, "stacker", None) is not None:
            meta["decision_fusion"]["stacker"] = {"coef": self.stacker.coef_.tolist(),
                                                  "intercept": self.stacker.intercept_.tolist()}
        return meta
