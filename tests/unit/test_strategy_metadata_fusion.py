"""metadata_fusion: the prediction depends on the patient data through the metadata branch
(and learns to use it), standardisation uses train statistics only, and datasets without
metadata are refused with the reason (SURVEY.md family F)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from dkbench.backbones import create_backbone
from dkbench.data.datamodule import InMemoryDataset
from dkbench.data.loading import load_dataset, spec_from_config
from dkbench.data.readers.probe import METADATA_NAMES, generate_split, resolve_options
from dkbench.data.spec import DatasetArrays, SplitArrays
from dkbench.metrics.classification import per_sample_loss
from dkbench.runner.compose import compose_config
from dkbench.strategies import BuildContext, IncompatibleStrategyError, StepContext, create_strategy
from dkbench.strategies.base import ClassifierNet
from dkbench.strategies.catalogue.metadata_fusion import train_statistics

SIZE = 32


def _spec(name: str, *overrides: str):
    return spec_from_config(compose_config([f"dataset={name}", *overrides]).dataset)


def _backbone(size=SIZE):
    return create_backbone("tinycnn", in_chans=1, spatial_dims=2, img_size=size, widths=(8, 16, 32, 32))


def _built(arrays, **options):
    """(strategy after `build_net`, the network it built on a seeded small tinycnn)."""
    strategy = create_strategy("metadata_fusion", **options)
    torch.manual_seed(0)
    net = strategy.build_net(BuildContext(arrays=arrays, make_backbone=lambda **kw: _backbone(), cache_dir=None, seed=0))
    return strategy, net


def _standardised(strategy, spec, batch, stage="test"):
    """The batch the network sees: the strategy's transform_batch adds the standardised metadata."""
    return strategy.transform_batch(batch, StepContext.for_stage(stage, spec))


@pytest.fixture(scope="module")
def probe():
    """Probe at 32 px whose lesions say nothing about the label (signal 0, no marker) while
    age does (gap 30 years, sd 12): only a model that reads the metadata can beat chance."""
    spec = _spec("probe", f"dataset.size={SIZE}")
    opts = resolve_options({"signal": 0.0, "age_gap": 30.0})
    splits = {s: generate_split(n, size=SIZE, split=s, options=opts) for s, n in
              (("train", 128), ("val", 128), ("test", 8))}
    arrays = DatasetArrays(spec=spec, splits=splits, notes={"metadata_names": list(METADATA_NAMES)})
    batches = {s: InMemoryDataset(a, "binary", 0.5, 0.5).__getitems__(list(range(len(a)))) for s, a in splits.items()}
    return spec, arrays, batches


@pytest.mark.parametrize("fusion", ["concat", "late"])
def test_prediction_depends_on_metadata_through_the_branch(probe, fusion):
    spec, arrays, batches = probe
    strategy, net = _built(arrays, fusion=fusion)
    net.eval()
    batch = batches["test"]
    older = {**batch, "metadata": batch["metadata"] + torch.tensor([20.0, 0.0])}
    palpable = {**batch, "metadata": batch["metadata"] * torch.tensor([1.0, 0.0]) + torch.tensor([0.0, 1.0])}
    batch, older, palpable = (_standardised(strategy, spec, b) for b in (batch, older, palpable))
    with torch.no_grad():
        base = net(batch)["logits"]
        assert not torch.allclose(base, net(older)["logits"])
        assert not torch.allclose(base, net(palpable)["logits"])
        # remove the branch's path to the logits: the metadata no longer matter
        if fusion == "concat":
            d = net.backbone.num_features
            assert net.head.in_features == d + 32
            net.head.weight[:, d:] = 0
        else:
            net.meta_head.weight.zero_()
            net.meta_head.bias.zero_()
        assert torch.allclose(net(batch)["logits"], net(older)["logits"])


def test_fusion_learns_what_the_image_cannot_say(probe):
    """Held-out AUROC after a short full-batch training: metadata_fusion reads the age, the
    image-only network cannot (the lesions carry no label information here)."""
    spec, arrays, batches = probe

    def fit(net, train, val) -> float:
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(25):
            loss = per_sample_loss(net(train)["logits"], train["label"], "binary").mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            prob = net(val)["logits"].softmax(1)[:, 1]
        return binary_auroc(prob, val["label"]).item()

    strategy, net = _built(arrays)
    fused = fit(net, _standardised(strategy, spec, batches["train"], "train"),
                _standardised(strategy, spec, batches["val"], "val"))
    torch.manual_seed(0)
    image_only = fit(ClassifierNet(_backbone(), 2), batches["train"], batches["val"])
    assert fused > 0.8 and image_only < 0.7, (fused, image_only)


def test_standardisation_uses_train_statistics_only(probe):
    spec, arrays, batches = probe
    shifted = {}
    for s, a in arrays.splits.items():  # val / test metadata far off: must not move the statistics
        meta = a.extras["metadata"] if s == "train" else a.extras["metadata"] + 1000.0
        shifted[s] = SplitArrays(a.image, a.label, a.ids, {**a.extras, "metadata": meta})
    strategy, _ = _built(DatasetArrays(spec=spec, splits=shifted, notes=arrays.notes))
    train = arrays.splits["train"].extras["metadata"].astype(np.float64)
    np.testing.assert_allclose(strategy.metadata_mean.numpy(), train.mean(0), rtol=1e-5)
    np.testing.assert_allclose(strategy.metadata_std.numpy(), train.std(0), rtol=1e-5)
    z = _standardised(strategy, spec, batches["train"], "train")["metadata_standardised"]
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    meta = strategy.metadata()["standardisation"]
    assert meta["source"] == "train split only" and meta["mean"] == pytest.approx(train.mean(0).tolist(), rel=1e-5)


def test_statistics_are_buffers_in_the_state_dict(probe):
    """Saved in checkpoints and moved with the module: a resumed run standardises as before."""
    _, arrays, _ = probe
    strategy, _ = _built(arrays)
    state = strategy.state_dict()
    assert {"metadata_mean", "metadata_std"} <= set(state)
    torch.testing.assert_close(state["metadata_mean"], strategy.metadata_mean, rtol=0, atol=0)
    # a missing value becomes the train mean (0 after standardisation)
    z = strategy.standardise(torch.tensor([[float("nan"), 1.0]]))
    assert z[0, 0].item() == 0.0


def test_constant_and_missing_columns():
    mean, std = train_statistics(np.array([[1.0, 5.0], [3.0, 5.0], [np.nan, 5.0]]))
    assert mean.tolist() == [2.0, 5.0] and std.tolist() == [1.0, 1.0]  # constant column: std 1


def test_refused_without_metadata():
    strategy = create_strategy("metadata_fusion")
    with pytest.raises(IncompatibleStrategyError) as err:
        strategy.check_compatible(_spec("breastmnist"))
    msg = str(err.value)
    assert "breastmnist" in msg and "missing: ['metadata']" in msg and "patient data" in msg
    assert strategy.incompatibility(_spec("probe")) is None
    with pytest.raises(ValueError, match=r"option 'fusion' must be one of \['concat', 'late'\]"):
        create_strategy("metadata_fusion", fusion="sum")
    with pytest.raises(ValueError, match=r"option 'layers' must be >= 1"):
        create_strategy("metadata_fusion", layers=0)


def test_tiny_run_records_train_statistics(tiny_run):
    metrics, run_dir = tiny_run("strategy=metadata_fusion")
    assert 0.0 <= metrics["test/auroc"] <= 1.0 and (run_dir / "predictions.csv").is_file()
    meta = json.loads((run_dir / "metadata.json").read_text())["strategy"]
    cfg = compose_config(["dataset=probe", "dataset.options.n_train=128", "dataset.options.n_val=64",
                          "dataset.options.n_test=64"])
    train = load_dataset(cfg.dataset, "unused").splits["train"].extras["metadata"].astype(np.float64)
    assert meta["metadata_names"] == METADATA_NAMES
    assert meta["standardisation"]["mean"] == pytest.approx(train.mean(0).tolist(), rel=1e-5)


def test_missing_and_unknown_real_metadata_are_told_apart_from_average(probe):
    """Real metadata (HAM10000: age with gaps, sex / site unknown for some) through the reader's
    encoding: a missing age becomes the train mean after standardising, but its indicator column
    keeps it apart from a patient whose age IS the mean; an unknown sex is an all-zero one-hot.
    The network's output then differs for the two patients."""
    from dkbench.data.tabular import Column, encode_metadata

    spec, arrays, batches = probe
    ages = np.array([40.0, 50.0, 60.0, np.nan, 70.0, 30.0] * 22)[:128]
    sex = np.array([0, 1, -1, 0, 1, 1] * 22)[:128]
    matrix, names = encode_metadata([Column("age", ages), Column("sex", sex, ("female", "male"))])
    assert names == ["age", "age_missing", "sex=female", "sex=male"]
    splits = {s: SplitArrays(a.image[:128], a.label[:128], a.ids[:128],
                             {**a.extras, "metadata": matrix[: len(a.image[:128])]})
              for s, a in arrays.splits.items()}
    strategy, net = _built(DatasetArrays(spec=spec, splits=splits, notes={"metadata_names": names}))
    assert strategy.metadata_names == names
    mean_age = float(np.nanmean(ages))
    missing, average = (torch.tensor([[np.nan, 1.0, 1.0, 0.0]]), torch.tensor([[mean_age, 0.0, 1.0, 0.0]]))
    z_missing, z_average = strategy.standardise(missing), strategy.standardise(average)
    assert torch.isfinite(z_missing).all()
    assert z_missing[0, 0] == pytest.approx(0.0) and z_average[0, 0] == pytest.approx(0.0, abs=1e-5)
    assert z_missing[0, 1] > 0 > z_average[0, 1]  # the indicator tells them apart
    image = batches["test"]["image"][:1]
    net.eval()
    with torch.no_grad():
        out_missing = net({"image": image, "metadata_standardised": z_missing})["logits"]
        out_average = net({"image": image, "metadata_standardised": z_average})["logits"]
    assert not torch.allclose(out_missing, out_average)
