"""`seeded_module`: PyTorch's default initialisation from a private generator — the numbers of
`torch.manual_seed(seed)` + construction, with the global stream left where it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dkbench.seeding import seeded_module
from dkbench.strategies.catalogue.roi_input import ROIPredictor
from dkbench.strategies.catalogue.shape_prior import ShapeAEConfig, ShapeAutoencoder


@pytest.mark.parametrize("build", [
    lambda: ROIPredictor(1, 8),                                   # convolutions + BatchNorm
    lambda: ROIPredictor(3, 4),
    lambda: ShapeAutoencoder(ShapeAEConfig(spatial_dims=3, size=16)),  # 3-D convs, transposed convs, linear
])
def test_same_weights_as_global_seeding_and_the_global_stream_untouched(build):
    torch.manual_seed(5)
    reference = build().state_dict()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    seeded = seeded_module(build, 5).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert reference.keys() == seeded.keys()
    assert all(torch.equal(reference[k], seeded[k]) for k in reference)


def test_a_module_it_cannot_initialise_is_refused():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3))

    with pytest.raises(TypeError, match="Odd"):
        seeded_module(Odd, 0)
