"""dkbench's torchmetrics equal medmnist's official Evaluator functions on random scores."""

import numpy as np
import pytest
import torch

from dkbench.metrics.classification import make_metrics, metric_inputs, probabilities

evaluator = pytest.importorskip("medmnist.evaluator", reason="medmnist not installed (make install adds it)")


def _ours(task: str, num_classes: int, logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    probs = probabilities(torch.from_numpy(logits), task)
    metrics = make_metrics(task, num_classes, "test")
    metrics.update(metric_inputs(probs, task), torch.from_numpy(labels))
    out = metrics.compute()
    return float(out["test/auroc"]), float(out["test/acc"])


@pytest.mark.parametrize(
    ("task", "medmnist_task", "k"),
    [("binary", "binary-class", 2), ("multiclass", "multi-class", 8), ("multilabel", "multi-label, binary-class", 14)],
)
def test_metrics_equal_official_evaluator(task, medmnist_task, k):
    rng = np.random.default_rng(0)
    n = 301
    logits = rng.normal(size=(n, k)).astype(np.float32)
    if task == "multilabel":
        labels = rng.integers(0, 2, size=(n, k))
    else:
        labels = rng.integers(0, k, size=n)
        logits[np.arange(n), labels] += 1.0  # informative but imperfect scores
    auroc, acc = _ours(task, k, logits, labels)
    probs = probabilities(torch.from_numpy(logits), task).numpy()
    y_true = labels if task == "multilabel" else labels[:, None]
    assert auroc == pytest.approx(evaluator.getAUC(y_true, probs, medmnist_task), abs=1e-6)
    assert acc == pytest.approx(evaluator.getACC(y_true, probs, medmnist_task), abs=1e-6)


def test_multiclass_accuracy_is_micro_not_macro():
    """torchmetrics' default (macro) accuracy is a different number on imbalanced data."""
    labels = np.array([0] * 8 + [1] * 2)
    logits = np.zeros((10, 2), np.float32)
    logits[:, 0] = 1.0  # always predicts class 0
    _, acc = _ours("multiclass", 2, logits, labels)
    assert acc == pytest.approx(0.8)  # micro; macro would be 0.5


@pytest.mark.parametrize("task,k", [("binary", 2), ("multiclass", 5)])
def test_balanced_accuracy_equals_sklearn(task, k):
    """`bacc` = mean per-class recall (binary: mean of sensitivity and specificity at 0.5)."""
    import torch
    from sklearn.metrics import balanced_accuracy_score

    from dkbench.metrics.classification import make_metrics, metric_inputs

    gen = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(80, k, generator=gen), 1)
    target = torch.randint(0, k, (80,), generator=gen)
    metrics = make_metrics(task, k, "test")
    for chunk in range(0, 80, 32):  # accumulated over batches, as in a run
        metrics.update(metric_inputs(probs[chunk:chunk + 32], task), target[chunk:chunk + 32])
    pred = (probs[:, 1] >= 0.5).long() if task == "binary" else probs.argmax(1)
    assert float(metrics.compute()["test/bacc"]) == pytest.approx(balanced_accuracy_score(target, pred), abs=1e-6)
