"""report_supervision (TieNet-style): the report-alignment gradient reaches the image encoder,
test-time predictions never depend on the text, the TF-IDF is fitted on train texts only, and
label-derived text (BUSI captions) is refused unless explicitly allowed (SURVEY.md family F)."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch

from dkbench.backbones import create_backbone
from dkbench.data.datamodule import InMemoryDataset
from dkbench.data.loading import spec_from_config
from dkbench.data.readers.probe import generate_split, resolve_options
from dkbench.data.spec import DatasetArrays, SplitArrays
from dkbench.runner.compose import compose_config
from dkbench.strategies import BuildContext, IncompatibleStrategyError, StepContext, create_strategy
from dkbench.strategies.catalogue.report_supervision import alignment_loss

SIZE = 32


def _spec(name: str, *overrides: str):
    return spec_from_config(compose_config([f"dataset={name}", *overrides]).dataset)


def _built(arrays, **options):
    """(strategy after `build_net`, the network it built on a seeded small tinycnn)."""
    strategy = create_strategy("report_supervision", **options)

    def make(**overrides):
        return create_backbone("tinycnn", **{"in_chans": 1, "spatial_dims": 2, "img_size": SIZE,
                                             "widths": (8, 16, 32, 32), **overrides})

    torch.manual_seed(0)
    net = strategy.build_net(BuildContext(arrays=arrays, make_backbone=make, cache_dir=None, seed=0))
    return strategy, net


def _step(stage, spec):
    return StepContext.for_stage(stage, spec)


def _with_texts(split: SplitArrays, texts) -> SplitArrays:
    return SplitArrays(split.image, split.label, split.ids, {**split.extras, "text": np.asarray(texts)})


@pytest.fixture(scope="module")
def probe():
    spec = _spec("probe", f"dataset.size={SIZE}")
    opts = resolve_options({"signal": 1.0})
    splits = {s: generate_split(n, size=SIZE, split=s, options=opts) for s, n in
              (("train", 64), ("val", 16), ("test", 16))}
    # words that exist only outside the train split
    splits["val"] = _with_texts(splits["val"], [t + " valonlyword" for t in splits["val"].extras["text"]])
    splits["test"] = _with_texts(splits["test"], [t + " zebraword" for t in splits["test"].extras["text"]])
    arrays = DatasetArrays(spec=spec, splits=splits)
    batches = {s: InMemoryDataset(a, "binary", 0.5, 0.5).__getitems__(list(range(len(a)))) for s, a in splits.items()}
    return spec, arrays, batches


@pytest.mark.parametrize("loss", ["cosine", "mse", "contrastive"])
def test_alignment_gradient_reaches_the_image_encoder(probe, loss):
    spec, arrays, batches = probe
    strategy, net = _built(arrays, loss=loss)
    batch = batches["train"]
    out = net(batch)
    report = strategy.loss_terms(torch.zeros(len(batch["label"])), out, batch, _step("train", spec))["report"]
    report.backward()
    stem = net.backbone.blocks[0][0].weight.grad
    assert stem is not None and stem.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.text_proj.parameters())
    assert net.head.weight.grad is None  # the diagnosis head is not on the text path


def test_alignment_is_learned(probe):
    """A few steps on the report term alone raise the train cosine to the report vectors."""
    spec, arrays, batches = probe
    strategy, net = _built(arrays, loss="cosine")
    batch = batches["train"]
    train = _step("train", spec)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    cos = []
    for _ in range(15):
        out = net(batch)
        cos.append(strategy.extra_metrics(out, batch, train)["report_cos"].item())
        loss = strategy.loss_terms(torch.zeros(len(batch["label"])), out, batch, train)["report"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert cos[-1] > cos[0] + 0.3 and cos[-1] > 0.7, cos


def test_test_time_predictions_ignore_the_text(probe):
    spec, arrays, batches = probe
    strategy, net = _built(arrays)
    net.eval()
    batch = batches["test"]
    test = _step("test", spec)
    other = {**batch, "text": ["Irregular, taller-than-wide mass; completely different words."] * len(batch["id"])}
    no_text = {k: v for k, v in batch.items() if k != "text"}
    with torch.no_grad():
        outs = [strategy.postprocess(net(b), b, test) for b in (batch, other, no_text)]
        terms = [strategy.loss_terms(torch.zeros(len(batch["id"])), o, b, test)
                 for o, b in zip(outs, (batch, other, no_text))]
    for o in outs[1:]:
        torch.testing.assert_close(o["logits"], outs[0]["logits"], rtol=0, atol=0)
    assert all(set(t) == {"task"} for t in terms)  # no text term outside training
    assert strategy.extra_metrics(outs[0], batch, test) == {}
    # a training-only target: asking for a non-train batch's report fails loudly
    for stage in ("val", "test"):
        with pytest.raises(KeyError, match="not in the train split"):
            strategy.report_targets(batch, _step(stage, spec))


def test_tfidf_is_fitted_on_train_texts_only(probe):
    spec, arrays, batches = probe
    strategy, _ = _built(arrays)
    vocab = set(strategy.vocabulary)
    assert "zebraword" not in vocab and "valonlyword" not in vocab
    assert {"oval", "irregular", "mass"} <= vocab
    assert strategy.tfidf_train.shape == (64, len(vocab))
    meta = strategy.metadata()
    assert meta["vocabulary_size"] == len(vocab) and "train split" in meta["text_embedding"]
    # a train batch's targets are its rows of the table, in the split's order
    batch = InMemoryDataset(arrays.splits["train"], "binary", 0.5, 0.5).__getitems__([7, 0, 3])
    torch.testing.assert_close(strategy.report_targets(batch, _step("train", spec)), strategy.tfidf_train[[7, 0, 3]])


def test_tfidf_table_is_a_buffer_in_the_state_dict(probe):
    """Saved in checkpoints and moved with the module (never per batch)."""
    _, arrays, _ = probe
    strategy, _ = _built(arrays)
    state = strategy.state_dict()
    assert "tfidf_train" in state and state["tfidf_train"].shape == strategy.tfidf_train.shape
    torch.testing.assert_close(state["tfidf_train"].norm(dim=1), torch.ones(64))  # l2-normalised rows


def test_contrastive_treats_identical_reports_as_positives():
    t = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    aligned = alignment_loss(t * 5, t, "contrastive", 0.1)
    shuffled = alignment_loss(t[[2, 3, 0, 1]] * 5, t, "contrastive", 0.1)
    assert aligned < 0.75 < shuffled  # rows 0/1 share a report: ln 2 is the floor, not a miss
    assert alignment_loss(t, torch.zeros_like(t)).item() == 0.0  # empty report vectors are skipped


def test_label_derived_text_refused_unless_allowed(caplog):
    busi = _spec("busi_binary")
    assert "text" in busi.label_derived
    with pytest.raises(IncompatibleStrategyError) as err:
        create_strategy("report_supervision").check_compatible(busi)
    msg = str(err.value)
    assert "busi_binary" in msg and "label-derived" in msg and "allow_label_derived_text" in msg
    allowed = create_strategy("report_supervision", allow_label_derived_text=True)
    assert allowed.incompatibility(busi) is None
    assert create_strategy("report_supervision").incompatibility(_spec("probe")) is None
    with pytest.raises(ValueError, match=r"option 'loss' must be one of \['cosine', 'mse', 'contrastive'\]"):
        create_strategy("report_supervision", loss="l1")
    # allowed: a loud warning in the log and in the run's metadata
    n = 6
    split = SplitArrays(np.zeros((n, 1, 8, 8), np.uint8), np.arange(n) % 2, np.array([f"s{i}" for i in range(n)]),
                        {"text": np.array(["benign breast"] * 3 + ["malignant breast"] * 3)})
    fake = DatasetArrays(spec=busi, splits={"train": split, "val": split, "test": split})
    with caplog.at_level(logging.WARNING, logger="dkbench"):
        allowed.build_net(BuildContext(arrays=fake, make_backbone=lambda **kw: create_backbone(
            "tinycnn", in_chans=1, spatial_dims=2, img_size=8, **kw)))
    assert any("label-derived" in r.message for r in caplog.records)
    assert any("label-derived" in w for w in allowed.metadata()["warnings"])


def test_tiny_run_trains_with_the_report_term(tiny_run):
    metrics, run_dir = tiny_run("strategy=report_supervision")
    assert 0.0 <= metrics["test/auroc"] <= 1.0 and (run_dir / "predictions.csv").is_file()
    meta = json.loads((run_dir / "metadata.json").read_text())["strategy"]
    assert meta["vocabulary_size"] > 5 and meta["warnings"] == [] and "val/test use the image" in meta["text_use"]
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    logged = {k for r in rows for k, v in r.items() if v}
    assert {"train/loss_report", "train/report_cos"} <= logged
