"""`curriculum`: early epochs draw only easy samples, the pool grows to the full set on schedule,
and a dataset without difficulty gets a teacher-loss ranking that is trained once and cached."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from dkbench.data.loading import load_dataset
from dkbench.data.spec import DatasetSpec
from dkbench.runner.compose import compose_config
from dkbench.strategies import BuildContext, StepContext, create_strategy
from dkbench.strategies.catalogue.curriculum import curriculum_order, pacing_fraction


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


SPEC = DatasetSpec(name="plain", task="binary", num_classes=2, in_chans=1, spatial_dims=2, size=28)
TRAIN = StepContext.for_stage("train", SPEC)


def _strategy(difficulty, max_epochs=10, seed=0, labels=None, **options):
    s = create_strategy("curriculum", **options)
    s.set_difficulty(difficulty, "test", labels)
    s.max_epochs, s.seed = max_epochs, seed
    return s, s.train_sampler(_Sized(len(difficulty)))


def test_pacing_function_shapes():
    kw = dict(max_epochs=10, start_fraction=0.3, full_at=0.7)  # full pool from epoch 7 on
    lin = [pacing_fraction(e, pacing="linear", **kw) for e in range(10)]
    assert lin[0] == pytest.approx(0.3) and lin[7:] == [1.0, 1.0, 1.0]
    assert lin[2] == pytest.approx(0.3 + 0.7 * 2 / 7) and lin[5] == pytest.approx(0.3 + 0.7 * 5 / 7)
    root = [pacing_fraction(e, pacing="root", **kw) for e in range(10)]
    assert root[0] == pytest.approx(0.3) and root[7] == 1.0
    assert root[2] == pytest.approx(math.sqrt(0.09 + 0.91 * 2 / 7))
    assert all(r >= li for r, li in zip(root, lin, strict=True))  # root front-loads the growth
    step = [pacing_fraction(e, pacing="step", steps=3, **kw) for e in range(10)]
    # staircase: t = e/7 crosses 1/3 at e=2.33 and 2/3 at e=4.67
    assert step == pytest.approx([0.3, 0.3, 0.3, 0.3 + 0.7 / 3, 0.3 + 0.7 / 3, 0.3 + 1.4 / 3,
                                  0.3 + 1.4 / 3, 1.0, 1.0, 1.0])
    for seq in (lin, root, step):
        assert all(b >= a for a, b in zip(seq, seq[1:]))


@pytest.mark.parametrize("pacing", ["linear", "root", "step"])
def test_sampler_draws_easy_first_and_reaches_full_set(pacing):
    rng = np.random.default_rng(1)
    difficulty = rng.permutation(200).astype(float) / 200 + rng.normal(0, 1e-3, 200)
    strategy, sampler = _strategy(difficulty, pacing=pacing, start_fraction=0.25, full_at=0.6)
    sizes = []
    for epoch in range(10):
        sampler.set_epoch(epoch)  # what Lightning does at every epoch start
        drawn = np.array(list(sampler))
        assert len(drawn) == len(sampler) == 200  # constant length: constant batches per epoch
        p = strategy.pool_fraction(epoch)
        # every drawn sample is within the easiest p (the p-quantile of the difficulty)
        assert difficulty[drawn].max() <= np.quantile(difficulty, p, method="inverted_cdf")
        pool = set(drawn.tolist())
        assert len(pool) == math.ceil(p * 200 - 1e-9)  # the whole pool is visited
        sizes.append(len(pool))
        # cycling without replacement: every pool member is drawn floor or ceil(200/|pool|) times
        counts = np.bincount(drawn, minlength=200)[list(pool)]
        assert counts.max() - counts.min() <= 1
    assert sizes[0] == 50 and all(b >= a for a, b in zip(sizes, sizes[1:]))
    assert sizes[6:] == [200] * 4  # full_at 0.6 of 10 epochs
    assert difficulty[np.array(list(_iter_at(sampler, 0)))].mean() < 0.2  # vs 0.5 for the full set
    assert sampler.history[0] == 50 and sampler.history[9] == 200


def _iter_at(sampler, epoch):
    sampler.set_epoch(epoch)
    return iter(sampler)


def test_sampler_is_deterministic_per_seed_and_epoch():
    d = np.linspace(0, 1, 64)
    _, a = _strategy(d, seed=3)
    _, b = _strategy(d, seed=3)
    _, c = _strategy(d, seed=4)
    assert list(_iter_at(a, 2)) == list(_iter_at(b, 2))
    assert list(_iter_at(a, 2)) != list(_iter_at(a, 3))
    assert list(_iter_at(a, 2)) != list(_iter_at(c, 2))
    # the pool is chosen when iteration starts, not when the iterator object is created
    it = iter(a)
    a.set_epoch(9)
    assert len(set(it)) == 64


def test_pools_are_class_stratified_easiest_first():
    """A teacher's loss is often lowest for the majority class; the pool keeps every class in
    its train proportion and takes each class's easiest members (Hacohen & Weinshall's balance)."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 60 + [1] * 140)
    difficulty = rng.uniform(0, 1, 200) + 2.0 * (labels == 0)  # class 0 is uniformly harder
    order = curriculum_order(difficulty, labels)
    assert sorted(order.tolist()) == list(range(200))
    for k in (10, 37, 60, 150):
        prefix = order[:k]
        for cls, n_cls in ((0, 60), (1, 140)):
            members = prefix[labels[prefix] == cls]
            assert abs(len(members) - k * n_cls / 200) <= 1  # class proportion kept
            ranked = np.flatnonzero(labels == cls)[np.argsort(difficulty[labels == cls])]
            assert set(members.tolist()) == set(ranked[: len(members)].tolist())  # its easiest
    # unstratified (balance_classes=false): the first 60 are all of the easy class
    _, sampler = _strategy(difficulty, labels=labels, balance_classes=False, start_fraction=0.3)
    assert set(labels[list(_iter_at(sampler, 0))]) == {1}
    _, sampler = _strategy(difficulty, labels=labels, start_fraction=0.3)
    drawn = np.array(list(_iter_at(sampler, 0)))
    assert set(labels[drawn]) == {0, 1} and len(set(drawn.tolist())) == 60


def test_difficulty_dataset_option_is_refused_without_difficulty():
    spec = DatasetSpec(name="plain", task="binary", num_classes=2, in_chans=1, spatial_dims=2, size=28)
    assert create_strategy("curriculum").incompatibility(spec) is None  # auto: teacher path
    reason = create_strategy("curriculum", difficulty="dataset").incompatibility(spec)
    assert "difficulty" in reason and "plain" in reason


def _fake_breastmnist(root: Path, sizes=(96, 32, 48)):
    """A small BreastMNIST-format file (no difficulty), as tests/integration/test_train.py does."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        labels = rng.integers(0, 2, size=(n, 1))
        images = rng.integers(0, 60, size=(n, 28, 28)) + labels[:, :, None] * 20
        arrays[f"{split}_images"] = images.astype(np.uint8)
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    (root / "medmnist").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / "medmnist" / "breastmnist.npz", **arrays)


def test_teacher_difficulty_is_trained_once_and_cached(tmp_path, monkeypatch):
    from dkbench.runner import train as train_module
    from dkbench.runner.train import _backbone_factory

    _fake_breastmnist(tmp_path / "data")
    cfg = compose_config([
        "dataset=breastmnist", "backbone=tinycnn", "strategy=curriculum", "trainer.max_epochs=4",
        "strategy.options.teacher_epochs=1", "data.batch_size=32", "ui.progress_bar=false",
        f"paths.root_dir={tmp_path}", f"paths.runs_dir={tmp_path / 'runs'}", f"paths.data_dir={tmp_path / 'data'}",
    ])
    arrays = load_dataset(cfg.dataset, cfg.paths.data_dir)
    assert "difficulty" not in arrays.splits["train"].extras
    calls = []
    real_fit = train_module._fit_and_record
    monkeypatch.setattr(train_module, "_fit_and_record", lambda c, *a: calls.append(c) or real_fit(c, *a))

    def build():
        s = create_strategy(cfg.strategy.method, **cfg.strategy.options)
        prestages = train_module.train_prestages(s, cfg)  # the runner trains the teacher first
        torch.manual_seed(0)  # ... then seeds the run
        ctx = BuildContext(
            arrays=arrays, cache_dir=Path(cfg.paths.cache_dir), seed=0,
            make_backbone=_backbone_factory(cfg, arrays.spec, {}),
            config=OmegaConf.to_container(cfg, resolve=True), prestages=prestages)
        return s, s.build_net(ctx)

    first, net = build()
    # scoring the train split with the teacher draws no random numbers (its network is built on
    # the meta device): the network is the one a run without a teacher builds from the same seed
    torch.manual_seed(0)
    plain = create_strategy("baseline").build_net(BuildContext(arrays=arrays, make_backbone=_backbone_factory(cfg, arrays.spec, {})))
    for a, b in zip(net.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert first.difficulty_source == "teacher" and len(calls) == 1
    teacher_cfg = calls[0]
    assert teacher_cfg.strategy.method == "baseline" and teacher_cfg.trainer.max_epochs == 1
    teacher_dir = tmp_path / "runs/.cache/curriculum/breastmnist/tinycnn/seed_0"
    assert (teacher_dir / "DONE").exists() and Path(first.teacher["run_dir"]) == teacher_dir
    cached = list(teacher_dir.glob("difficulty_*.npy"))
    assert [p.name for p in cached] == [f"difficulty_{first.teacher['config_hash']}.npy"]
    d = first.difficulty.numpy()
    assert d.shape == (96,) and np.all(d >= 0) and d.std() > 0  # per-sample cross-entropy
    np.testing.assert_array_equal(np.load(cached[0], allow_pickle=False), d)
    assert first.max_epochs == 4 and first.metadata()["class_balanced"] is True
    # the scores are state of the strategy: a buffer, saved in (and restored from) checkpoints
    state = first.state_dict()
    assert state["difficulty"].dtype == torch.float64 and torch.equal(state["difficulty"], first.difficulty)
    assert sorted(state["order"].tolist()) == list(range(96))

    stamp = (teacher_dir / "metrics.json").stat().st_mtime_ns
    second, _ = build()  # another run of the same cell (or a resume): no teacher, no scoring
    assert len(calls) == 1 and (teacher_dir / "metrics.json").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(second.difficulty.numpy(), d)
    assert second.teacher["cached"] is True and second.metadata()["difficulty_source"] == "teacher"
    assert second.teacher["val/auroc"] == first.teacher["val/auroc"] is not None


def test_probe_run_paces_the_pool_and_records_it(tiny_run):
    """2 epochs, full_at 0.5: epoch 0 trains on the easiest 30 %, epoch 1 on everything."""
    metrics, run = tiny_run("strategy=curriculum", "trainer.max_epochs=2", "strategy.options.full_at=0.5")
    for name in ("config.yaml", "metadata.json", "metrics.json", "predictions.csv", "DONE"):
        assert (run / name).exists(), name
    assert 0.0 <= metrics["test/auroc"] <= 1.0
    meta = json.loads((run / "metadata.json").read_text())["strategy"]
    assert meta["difficulty_source"] == "dataset"
    assert meta["pool_sizes"] == {"0": math.ceil(0.3 * 128), "1": 128}  # Lightning called set_epoch
    log = pd.read_csv(run / "csv" / "metrics.csv")
    rows = log.dropna(subset=["train/curriculum_pool_fraction"]).sort_values("epoch")
    assert rows["train/curriculum_pool_fraction"].tolist() == pytest.approx([39 / 128, 1.0])
    diff0, diff1 = rows["train/curriculum_difficulty"].tolist()
    assert diff0 < diff1  # the easy epoch really drew easier samples


@pytest.mark.parametrize("accelerator,devices", [("cpu", 1), ("gpu", [1]), ("auto", "auto")])
def test_teacher_trains_where_the_run_does(tmp_path, accelerator, devices):
    """The teacher inherits the run's trainer: `trainer.accelerator=cpu` keeps it on the CPU even
    where a GPU is present, and a GPU run's teacher uses the same GPU."""
    from dkbench.runner.devices import trainer_device

    cfg = compose_config(["dataset=breastmnist", "backbone=tinycnn", "strategy=curriculum",
                          f"trainer.accelerator={accelerator}",
                          f"trainer.devices={devices}",
                          f"paths.root_dir={tmp_path}"])
    strategy = create_strategy("curriculum", difficulty="teacher")
    teacher = strategy.prestage_runs(cfg)["teacher"]
    assert teacher.trainer.accelerator == accelerator and teacher.trainer.devices == devices
    assert trainer_device(teacher.trainer) == trainer_device(cfg.trainer)


def test_train_metrics_read_nothing_back_from_the_device(monkeypatch):
    from tests.unit.test_strategy_global_local import no_host_reads

    s, sampler = _strategy(np.linspace(0, 1, 20))
    s.on_train_epoch_start(0, 10)
    batch = {"index": torch.arange(4)}
    with no_host_reads(monkeypatch):  # the fraction is a buffer set at the epoch start
        metrics = s.extra_metrics({}, batch, TRAIN)
    assert set(metrics) == {"curriculum_pool_fraction", "curriculum_difficulty"}
    assert float(metrics["curriculum_pool_fraction"]) == pytest.approx(0.3)
    assert float(metrics["curriculum_difficulty"]) == pytest.approx(np.linspace(0, 1, 20)[:4].mean())
    s.on_train_epoch_start(9, 10)  # a new epoch: a new fraction
    assert float(s.extra_metrics({}, batch, TRAIN)["curriculum_pool_fraction"]) == 1.0
    assert s.extra_metrics({}, batch, StepContext.for_stage("val", SPEC)) == {}


def test_scores_and_order_are_buffers_restored_by_load_state_dict():
    difficulty = np.array([0.3, 0.1, 0.9, 0.5])
    s, _ = _strategy(difficulty)
    state = s.state_dict()
    assert set(state) >= {"difficulty", "order"}
    assert state["order"].tolist() == [1, 0, 3, 2]  # easiest first
    np.testing.assert_array_equal(state["difficulty"].numpy(), difficulty)
    restored, _ = _strategy(np.zeros(4))  # a rebuilt strategy, then the checkpoint's state
    restored.load_state_dict(state)
    assert torch.equal(restored.difficulty, s.difficulty) and torch.equal(restored.order, s.order)


def test_options_are_checked():
    for bad in ({"start_fraction": 0.0}, {"pacing": "cubic"}, {"difficulty": "expert"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            create_strategy("curriculum", **bad)


# --- detection (issue 18): easy lesions first -------------------------------------------------
def _probe_det(tmp_path, n_train=12, **options):
    """A tiny probe_det (no files): one lesion box or none per image, masks and difficulty as extras."""
    extra = [f"dataset.options.{k}={v}" for k, v in options.items()]
    cfg = compose_config(["dataset=probe_det", f"dataset.options.n_train={n_train}", "dataset.options.n_val=4",
                          "dataset.options.n_test=4", *extra])
    return load_dataset(cfg.dataset, tmp_path)


def _det_context(arrays, seed=0, **config):
    from dkbench.backbones import create_backbone

    def make_backbone(**overrides):
        return create_backbone("tinycnn", **{"in_chans": 1, "spatial_dims": 2, "img_size": arrays.spec.size,
                                             **overrides})

    config = {"model": {"detector": {"fpn_channels": 16}}, **config}
    return BuildContext(arrays=arrays, make_backbone=make_backbone, seed=seed, config=config)


def test_detection_teacher_scores_are_the_detectors_per_image_loss(tmp_path):
    """The teacher ranks every train image by the detection module's own loss (cls + box per image,
    `detection_loss`), negatives included with their classification loss only; the hard-negative
    sampler's draws are seeded (repeatable scores) on a forked stream (the run's is untouched)."""
    from dkbench.data.datamodule import InMemoryDataset
    from dkbench.data.detection import box_counts
    from dkbench.models.detector import DetectorNet

    arrays = _probe_det(tmp_path / "data", signal=1.0)
    ctx = _det_context(arrays, seed=3)
    torch.manual_seed(1)
    teacher = create_strategy("baseline").build_net(ctx)
    assert isinstance(teacher, DetectorNet)
    run_dir = tmp_path / "teacher"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {f"net.{k}": v for k, v in teacher.state_dict().items()}},
               run_dir / "checkpoints" / "best_weights.pt")

    strategy = create_strategy("curriculum", difficulty="teacher")
    torch.manual_seed(5)
    scores = strategy._score_train_split(ctx, run_dir)
    after = torch.rand(4)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(4))  # the run's random stream did not move
    np.testing.assert_array_equal(strategy._score_train_split(ctx, run_dir), scores)  # seeded: repeatable

    # the same numbers, computed directly with the detector: one batch (eval_batch_size 256 > 12), same seed
    train = arrays.splits["train"]
    batch = InMemoryDataset(train, "detection", 0.5, 0.5).__getitems__(list(range(len(train))))
    teacher.eval()
    with torch.no_grad():
        torch.manual_seed(3)
        cls_loss, box_loss = teacher.per_image_loss(teacher(batch), batch["label"])
    assert scores.shape == (12,) and np.isfinite(scores).all()
    np.testing.assert_allclose(scores, (cls_loss + box_loss).numpy(), rtol=1e-6)
    negative = box_counts(train.label) == 0
    assert 0 < negative.sum() < 12  # the tiny set has both kinds of images
    assert (box_loss.numpy()[negative] == 0).all() and (box_loss.numpy()[~negative] > 0).all()
    np.testing.assert_allclose(scores[negative], cls_loss.numpy()[negative], rtol=1e-6)  # negatives: cls only


def test_detection_teacher_trains_the_runs_detector(tmp_path):
    """A detection run's teacher is a detection run with the run's detector settings and FROC IoU
    (its config hash, which names the cached scores, changes with them)."""
    cfg = compose_config(["dataset=probe_det", "backbone=tinycnn", "strategy=curriculum",
                          "strategy.options.difficulty=teacher", "model.detector.fpn_channels=32",
                          "model.detector.nms_thresh=0.3", "model.froc_iou=0.25", f"paths.root_dir={tmp_path}"])
    teacher = create_strategy("curriculum", difficulty="teacher").prestage_runs(cfg)["teacher"]
    assert teacher.strategy.method == "baseline" and teacher.dataset.name == "probe_det"
    assert teacher.model._target_ == "dkbench.models.DetectionModule"  # from probe_det's defaults
    assert teacher.model.detector.fpn_channels == 32 and teacher.model.detector.nms_thresh == 0.3
    assert teacher.model.froc_iou == 0.25 and teacher.monitor.metric == "val/map50"
    # probe_det has its own difficulty: auto uses it and trains no teacher
    assert create_strategy("curriculum").prestage_runs(cfg) == {}


def test_detection_pools_hold_the_easiest_lesions_and_negatives_in_proportion(tmp_path):
    """The probe gives every negative the placeholder difficulty 0.5; stratified by lesion presence,
    the epoch-0 pool holds the easiest lesion images and negatives in their train proportion,
    whatever the placeholder's rank. Unstratified, the raw ranking decides."""
    from dkbench.data.detection import box_counts

    arrays = _probe_det(tmp_path, n_train=60)
    train = arrays.splits["train"]
    d = train.extras["difficulty"].astype(np.float64)
    lesion = box_counts(train.label) > 0
    assert (d[~lesion] == 0.5).all() and 10 < (~lesion).sum() < 30  # the probe's placeholder for negatives

    strategy = create_strategy("curriculum", start_fraction=0.3)
    net = strategy.build_net(_det_context(arrays, trainer={"max_epochs": 10}))
    assert type(net).__name__ == "DetectorNet" and strategy.difficulty_source == "dataset"
    pool = strategy.train_sampler(_Sized(60)).pool(0)
    assert len(pool) == 18  # ceil(0.3 * 60)
    in_pool = np.zeros(60, bool)
    in_pool[pool] = True
    for stratum in (lesion, ~lesion):
        k = (in_pool & stratum).sum()
        assert abs(k - 18 * stratum.mean()) <= 1  # the stratum's train proportion
        members = np.flatnonzero(stratum)
        easiest = members[np.lexsort((members, d[members]))][:k]
        assert set(pool[stratum[pool]].tolist()) == set(easiest.tolist())  # and its easiest
    meta = strategy.metadata()
    assert meta["stratified_by"] == "lesion presence" and meta["class_balanced"] is True

    raw = create_strategy("curriculum", start_fraction=0.3, balance_classes=False)
    raw.build_net(_det_context(arrays, trainer={"max_epochs": 10}))
    raw_pool = raw.train_sampler(_Sized(60)).pool(0)
    np.testing.assert_array_equal(np.sort(raw_pool), np.sort(np.lexsort((np.arange(60), d))[:18]))
    assert raw.metadata()["stratified_by"] is None


def test_detection_teacher_run_end_to_end(tiny_run):
    """The whole teacher path on probe_det: the runner trains the teacher detector, its checkpoint is
    rebuilt (meta device) and scores the train split, the run paces lesion-stratified pools."""
    metrics, run = tiny_run("dataset=probe_det", "strategy=curriculum", "strategy.options.difficulty=teacher",
                            "strategy.options.teacher_epochs=1", "trainer.max_epochs=2", "data.batch_size=16",
                            "dataset.options.n_train=48", "dataset.options.n_val=24", "dataset.options.n_test=24",
                            "model.detector.fpn_channels=16")
    assert math.isfinite(metrics["test/map50"])
    meta = json.loads((run / "metadata.json").read_text())["strategy"]
    assert meta["difficulty_source"] == "teacher" and meta["stratified_by"] == "lesion presence"
    assert meta["teacher"]["score"].startswith("per-image detector loss") and "val/map50" in meta["teacher"]
    assert meta["pool_sizes"]["0"] == math.ceil(0.3 * 48)
    scores = np.load(meta["teacher"]["scores"], allow_pickle=False)
    assert scores.shape == (48,) and np.isfinite(scores).all() and scores.std() > 0
