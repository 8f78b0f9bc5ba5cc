"""Speed settings, presets, checkpoint cadence, throughput synchronisation, job start timing."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import dkbench
from dkbench.runner import callbacks as callbacks_mod
from dkbench.runner import checkpointing
from dkbench.runner.checkpointing import BestWeights, CheckpointConfigError, CheckpointSettings, PeriodicLastCheckpoint
from dkbench.runner.compose import compose_config
from dkbench.runner.run_folder import config_hash
from dkbench.runner.speed import (
    SpeedConfigError,
    SpeedSettings,
    apply_module_settings,
    apply_process_settings,
)


def test_speed_settings_defaults_and_one_line_errors():
    assert SpeedSettings.from_config(None) == SpeedSettings()
    cfg = compose_config([])
    assert SpeedSettings.from_config(cfg.speed) == SpeedSettings()  # train.yaml's defaults = the dataclass's
    with pytest.raises(SpeedConfigError, match=r"use one of \['highest', 'high', 'medium'\]"):
        SpeedSettings.from_config({"matmul_precision": "tf32"})
    with pytest.raises(SpeedConfigError, match="speed.channels_last=true or false"):
        SpeedSettings.from_config({"channels_last": "yes"})
    with pytest.raises(SpeedConfigError, match="use only"):
        SpeedSettings.from_config({"cudnn_benchmrk": True})


def test_process_settings_are_all_reset_each_run():
    before = (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision())
    try:
        apply_process_settings(SpeedSettings(cudnn_benchmark=True, matmul_precision="high"))
        assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "high"
        apply_process_settings(SpeedSettings())  # the next cell of a reused worker
        assert not torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cudnn.benchmark = before[0]
        torch.set_float32_matmul_precision(before[1])


def test_channels_last_converts_2d_and_3d_convs_and_keeps_keys():
    module = nn.Module()
    module.net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    module.head3d = nn.Conv3d(1, 4, 3)
    module.fc = nn.Linear(4, 2)
    keys = list(module.state_dict())
    apply_module_settings(module, SpeedSettings(channels_last=True))
    assert module.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not module.net[0].weight.is_contiguous()
    assert module.head3d.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert module.fc.weight.is_contiguous() and list(module.state_dict()) == keys
    out = module.net(torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 8, 6, 6)


def test_default_run_leaves_memory_format_alone():
    module = nn.Module()
    module.net = nn.Conv2d(3, 8, 3)
    apply_module_settings(module, SpeedSettings())
    assert module.net.weight.is_contiguous()


def test_presets_compose_and_keep_trainer_overrides():
    gpu = compose_config(["trainer=gpu", "trainer.max_epochs=7"])
    assert (gpu.trainer.accelerator, gpu.trainer.precision, gpu.trainer.max_epochs) == ("gpu", "bf16-mixed", 7)
    assert gpu.speed.cudnn_benchmark and gpu.speed.matmul_precision == "high" and gpu.speed.channels_last
    assert gpu.data.channels_last is True and gpu.data.on_device == "auto"  # auto: resident on CUDA
    assert gpu.trainer.log_every_n_steps == 10  # trainer/default.yaml still underneath
    exp = compose_config(["trainer=gpu", "experiment=medmnist_v2_resnet18_28"])
    assert exp.trainer.max_epochs == 100 and exp.trainer.precision == "bf16-mixed"

    cpu = compose_config(["trainer=cpu_bf16"])
    assert (cpu.trainer.accelerator, cpu.trainer.precision) == ("cpu", "bf16-mixed")
    assert cpu.speed.channels_last and cpu.data.channels_last and not cpu.speed.cudnn_benchmark
    assert compose_config(["trainer=cpu_bf16", "speed.channels_last=false"]).data.channels_last is False


def test_config_hash_keeps_numerics_and_ignores_checkpoint_cadence():
    base = config_hash(compose_config([]))
    for numerics in ("speed.channels_last=true", "speed.compile=true", "speed.matmul_precision=high",
                     "speed.cudnn_benchmark=true", "trainer=cpu_bf16"):
        assert config_hash(compose_config([numerics])) != base, numerics
    assert config_hash(compose_config(["checkpoint.last_every_n_epochs=3", "checkpoint.last_every_minutes=null"])) == base


def test_checkpoint_settings_validation():
    assert CheckpointSettings.from_config({"last_every_n_epochs": None, "last_every_minutes": 1}) == CheckpointSettings(None, 1.0)
    for bad, fix in (({"last_every_n_epochs": 0}, "integer ≥ 1, or null"), ({"last_every_minutes": -1}, "> 0, or null"),
                     ({"every": 3}, "use last_every_n_epochs and last_every_minutes")):
        with pytest.raises(CheckpointConfigError, match=fix):
            CheckpointSettings.from_config(bad)


def test_last_checkpoint_due_every_n_epochs_or_minutes(monkeypatch, tmp_path):
    clock = {"t": 1000.0}
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: clock["t"])
    cb = PeriodicLastCheckpoint(tmp_path, CheckpointSettings(last_every_n_epochs=10, last_every_minutes=5))
    cb.on_train_start(None, None)
    assert [e for e in range(20) if cb._due(e)] == [9, 19]
    clock["t"] += 5 * 60
    assert cb._due(3)  # the time trigger comes first
    never = PeriodicLastCheckpoint(tmp_path, CheckpointSettings(None, None))
    clock["t"] += 10**6
    assert not any(never._due(e) for e in range(100))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))


def _trainer(epoch: int, **metrics: float):
    return SimpleNamespace(current_epoch=epoch, sanity_checking=False,
                           callback_metrics={k.replace("__", "/"): torch.tensor(v) for k, v in metrics.items()})


def test_best_weights_keeps_a_copy_of_the_best_epoch():
    net, best = _Net(), BestWeights("val/auroc", "max")
    for epoch, score in enumerate([0.6, 0.8, 0.8, math.nan, 0.7]):
        net.w.data.fill_(epoch)
        best.on_validation_end(_trainer(epoch, val__auroc=score), net)
        best.on_train_epoch_end(_trainer(epoch, val__auroc=score), net)  # a val monitor: ignored here
    assert (best.best_epoch, best.best_score) == (1, pytest.approx(0.8))  # ties keep the earlier; NaN never wins
    assert torch.equal(best.weights["w"], torch.ones(2))  # a clone, not the live parameter
    restored = BestWeights("val/auroc", "max")
    restored.load_state_dict(best.state_dict())
    assert restored.best_epoch == 1 and restored.load_into(net) and torch.equal(net.w, torch.ones(2))
    assert restored.state_key == best.state_key

    loss = BestWeights("train/loss", "min")
    for epoch, value in enumerate([1.0, 0.5, 0.7]):
        loss.on_validation_end(_trainer(epoch, train__loss=value), net)  # read at epoch end only
        loss.on_train_epoch_end(_trainer(epoch, train__loss=value), net)
    assert loss.best_epoch == 1
    with pytest.raises(CheckpointConfigError, match="use min or max"):
        BestWeights("val/auroc", "maximum")


def test_throughput_synchronises_at_epoch_start_and_after_last_batch(monkeypatch):
    syncs: list[str] = []
    monkeypatch.setattr(callbacks_mod, "synchronize", lambda device: syncs.append(str(device)))
    cb = callbacks_mod.TrainThroughput()
    trainer = SimpleNamespace(num_training_batches=3)
    module = SimpleNamespace(device=torch.device("cpu"))
    batch = {"image": torch.zeros(4, 1, 2, 2)}
    for _ in range(2):
        cb.on_train_epoch_start(trainer, module)
        for i in range(3):
            cb.on_train_batch_start(trainer, module, batch, i)
            cb.on_train_batch_end(trainer, module, None, batch, i)
        cb.on_train_epoch_end(trainer, module)
    assert len(syncs) == 4  # twice an epoch, never per step
    assert [n for n, _ in cb.epochs] == [12, 12] and cb.images_per_second > 0


def test_job_start_is_the_import_for_the_first_job_then_the_job_entry(monkeypatch):
    monkeypatch.setattr(dkbench, "_jobs_started", 0)
    assert dkbench.mark_job_start() == dkbench.IMPORTED_AT
    later = dkbench.mark_job_start()
    assert later > dkbench.IMPORTED_AT
