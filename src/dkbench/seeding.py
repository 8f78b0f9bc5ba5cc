"""Modules initialised from a generator of their own, never from the global random stream.

A pre-stage network built inside a run (the ROI predictor, the shape autoencoder) must not draw
from the run's seeded stream: if it did, the run's own network would start differently depending
on whether the pre-stage was trained now or read from its cache. `seeded_module` builds the module
on the meta device (no numbers drawn) and then applies PyTorch's default initialisation from a
generator seeded with `seed` — the same numbers that ``torch.manual_seed(seed)`` followed by
construction gives, so caches written the old way stay valid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def seeded_module(build: Callable[[], M], seed: int) -> M:
    """`build()` with PyTorch's default parameter initialisation drawn from a private generator.

    Convolutions and linear layers are initialised as their `reset_parameters` does (Kaiming
    uniform with a = √5, bias uniform ±1/√fan_in), in construction order; every other module with
    parameters or buffers must have a deterministic `reset_parameters` (normalisation layers).
    """
    with torch.device("meta"):  # nothing drawn at construction
        module = build()
    module = module.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(int(seed))
    for sub in module.modules():  # construction order = registration order in dkbench's modules
        if isinstance(sub, (nn.modules.conv._ConvNd, nn.Linear)):
            nn.init.kaiming_uniform_(sub.weight, a=math.sqrt(5), generator=generator)
            if sub.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(sub.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                nn.init.uniform_(sub.bias, -bound, bound, generator=generator)
        elif list(sub.parameters(recurse=False)) or list(sub.buffers(recurse=False)):
            if not hasattr(sub, "reset_parameters"):
                raise TypeError(f"seeded_module: don't know how to initialise {type(sub).__name__}")
            before = torch.random.get_rng_state()
            sub.reset_parameters()  # normalisation layers: ones, zeros, running statistics
            if not torch.equal(before, torch.random.get_rng_state()):
                raise TypeError(f"seeded_module: {type(sub).__name__}.reset_parameters draws random numbers")
    return module
