"""`trainer_device`: the device the run's Trainer will use, resolved before the Trainer exists
(pre-stages train there), with CUDA availability faked so the GPU rules run on a CPU machine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from dkbench.runner.devices import trainer_device
from dkbench.strategies import BuildContext


@pytest.mark.parametrize("cuda", [True, False])
def test_auto_follows_cuda_availability(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    expected = torch.device("cuda", 0) if cuda else torch.device("cpu")
    assert trainer_device({"accelerator": "auto", "devices": 1}) == expected
    assert trainer_device(None) == expected  # no trainer section: Lightning's default, auto
    assert trainer_device({"accelerator": "auto", "devices": [2]}) == (torch.device("cuda", 2) if cuda else expected)


@pytest.mark.parametrize("devices,index", [(1, 0), (4, 0), ("auto", 0), (-1, 0), ([3], 3), ([2, 5], 2),
                                           ("1,3", 1), ("2,", 2), ("2", 0), (OmegaConf.create([6, 7]), 6)])
def test_gpu_uses_the_first_listed_index_or_zero(monkeypatch, devices, index):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for accelerator in ("gpu", "cuda", "GPU"):
        assert trainer_device({"accelerator": accelerator, "devices": devices}) == torch.device("cuda", index)


def test_cpu_stays_cpu_even_with_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trainer_device(OmegaConf.create({"accelerator": "cpu", "devices": 1})) == torch.device("cpu")


def test_unknown_accelerator_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="cpu"):
        trainer_device({"accelerator": "tpu"})


def test_the_run_config_resolves_and_the_context_defaults_to_cpu(monkeypatch):
    from dkbench.runner.compose import compose_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer_device(compose_config([]).trainer) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trainer_device(compose_config(["trainer=gpu"]).trainer) == torch.device("cuda", 0)
    assert trainer_device(compose_config(["trainer.accelerator=cpu"]).trainer) == torch.device("cpu")
    arrays = SimpleNamespace(spec=SimpleNamespace(task="binary"))
    context = BuildContext(arrays=arrays, make_backbone=None)
    assert context.device == torch.device("cpu") and context.task_loss.task == "binary"
