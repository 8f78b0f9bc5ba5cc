"""transfer_medical: the source model is trained once per (source, backbone, seed) and reused
by every target, the target backbone starts exactly from the source checkpoint, and sources
that share images with the target are refused."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

import dkbench.runner.train as train_mod
from dkbench.data.loading import spec_from_config
from dkbench.runner.compose import compose_config
from dkbench.runner.run_folder import RunFolder, locked
from dkbench.data.loading import load_dataset
from dkbench.strategies import BuildContext, create_strategy

SOURCE_EPOCHS = "strategy.options.source_epochs=1"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fake_pneumoniamnist(root: Path, sizes=(96, 32, 32)) -> Path:
    """A tiny learnable stand-in with the official keys (the real file takes minutes an epoch)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        labels = rng.integers(0, 2, size=(n, 1))
        arrays[f"{split}_images"] = (rng.integers(0, 60, size=(n, 28, 28)) + labels[:, :, None] * 40).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    (root / "medmnist").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / "medmnist" / "pneumoniamnist.npz", **arrays)
    return root


@pytest.fixture
def fits(monkeypatch):
    """Dataset names of every run actually trained (finished folders are not trained again)."""
    trained: list[str] = []
    real = train_mod._fit_and_record

    def counting(cfg, run, cfg_hash, *args):
        trained.append(str(cfg.dataset.name))
        return real(cfg, run, cfg_hash, *args)

    monkeypatch.setattr(train_mod, "_fit_and_record", counting)
    return trained


def test_source_is_trained_once_for_a_sweep_of_targets(tiny_run, tmp_path, fits):
    data = _fake_pneumoniamnist(tmp_path / "data")
    _, probe_dir = tiny_run("strategy=transfer_medical", SOURCE_EPOCHS, data_dir=data)
    source = json.loads((probe_dir / "metadata.json").read_text())["strategy"]["source_model"]
    source_dir = Path(source["run_dir"])
    stamp = (source_dir / "metrics.json").stat().st_mtime_ns
    _, three_dir = tiny_run("dataset=probe_3class", "strategy=transfer_medical", SOURCE_EPOCHS, data_dir=data)

    assert fits == ["probe", "pneumoniamnist", "probe_3class"]  # the source once, inside the first target
    assert (source_dir / "metrics.json").stat().st_mtime_ns == stamp
    assert source_dir.is_relative_to(tmp_path / "runs" / ".cache" / "transfer_medical" / "_sources")
    assert "pneumoniamnist" in source_dir.parts and source_dir.parent.name == "tinycnn__baseline@ep1"
    other = json.loads((three_dir / "metadata.json").read_text())["strategy"]["source_model"]
    assert other["run_dir"] == source["run_dir"] and other["config_hash"] == source["config_hash"]
    assert json.loads((source_dir / "DONE").read_text())["config_hash"] == source["config_hash"]
    assert 0.0 <= source["test_metrics"]["test/auroc"] <= 1.0 and source["epochs"] == 1
    for run in (probe_dir, three_dir):
        assert (run / "DONE").exists() and (run / "predictions.csv").exists()


def test_target_starts_from_the_source_checkpoint(tmp_path, fits):
    data = _fake_pneumoniamnist(tmp_path / "data")
    cfg = compose_config(["dataset=probe", "backbone=tinycnn", "strategy=transfer_medical", SOURCE_EPOCHS,
                          "trainer.max_epochs=1", "ui.progress_bar=false", f"paths.root_dir={tmp_path}",
                          f"paths.data_dir={data}"])
    arrays = load_dataset(cfg.dataset, cfg.paths.data_dir)
    spec = arrays.spec

    def build():
        strategy = create_strategy("transfer_medical", **dict(cfg.strategy.options))
        prestages = train_mod.train_prestages(strategy, cfg)  # as the runner does, before seeding
        pl.seed_everything(0, verbose=False)
        ctx = BuildContext(arrays=arrays, make_backbone=train_mod._backbone_factory(cfg, spec, strategy.backbone_kwargs(spec)),
                           seed=int(cfg.seed), cache_dir=Path(cfg.paths.cache_dir),
                           config=OmegaConf.to_container(cfg, resolve=True), prestages=prestages)
        return strategy, strategy.build_net(ctx)

    strategy, trained_now = build()  # trains the source
    assert fits == ["pneumoniamnist"]
    ckpt = Path(strategy.metadata()["source_model"]["checkpoint"])
    assert ckpt.name == "best_weights.pt"
    source = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    built = trained_now.backbone.state_dict()
    assert built and all(torch.equal(v, source[f"net.backbone.{k}"]) for k, v in built.items())
    scratch = train_mod._backbone_factory(cfg, spec, {})().state_dict()
    assert not all(torch.equal(v, scratch[k]) for k, v in built.items())  # not a random init

    # cached: a second target does not retrain; while another process holds the source folder it
    # waits on the lock (woken by the kernel, no polling) and then builds the same network
    held = threading.Event()

    def hold_lock():
        with locked(RunFolder(ckpt.parent.parent)):
            held.set()
            time.sleep(0.5)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    held.wait()
    _, from_cache = build()
    holder.join()
    assert fits == ["pneumoniamnist"]
    for a, b in zip(trained_now.state_dict().values(), from_cache.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_sources_sharing_images_with_the_target_are_refused():
    def spec(name):
        return spec_from_config(compose_config([f"dataset={name}"]).dataset)

    reason = create_strategy("transfer_medical", source="breastmnist").incompatibility(spec("busi_binary"), "tinycnn")
    assert reason and "breastmnist" in reason and "busi_binary" in reason and "busi" in reason
    default = create_strategy("transfer_medical")  # source: pneumoniamnist
    assert "share" in default.incompatibility(spec("pneumoniamnist"), "tinycnn")
    assert default.incompatibility(spec("breastmnist"), "resnet18_28") is None
    assert "probe" in create_strategy("transfer_medical", source="probe").incompatibility(spec("probe_3class"))
    assert "3D" in default.incompatibility(spec("adrenalmnist3d"), "resnet18_28")
    assert "unknown source" in create_strategy("transfer_medical", source="nosuch").incompatibility(spec("probe"))


def test_options_are_typed_and_checked():
    cfg = compose_config(["strategy=transfer_medical", "strategy.options.source_overrides=['data.batch_size=128']"])
    strategy = create_strategy(cfg.strategy.method, **OmegaConf.to_container(cfg.strategy.options))
    assert strategy.options.source_overrides == ("data.batch_size=128",)
    assert strategy.metadata()["options"]["source_overrides"] == ["data.batch_size=128"]  # a list in metadata.json
    with pytest.raises(ValueError, match="source_epochs"):
        create_strategy("transfer_medical", source_epochs=0)
