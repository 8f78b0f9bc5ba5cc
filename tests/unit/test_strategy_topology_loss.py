"""topology_loss (SURVEY.md family G): soft clDice penalises a tube with a gap cut through it more than
an intact tube that is slightly too thin or too thick, even though the broken one has the higher
volumetric Dice; the soft skeleton of a binary line lies inside the line; identical → ~0."""

from __future__ import annotations

import pytest
import torch

from dkbench.data.spec import DatasetSpec
from dkbench.losses import soft_cldice_loss, soft_skeleton
from dkbench.metrics.segmentation import one_hot
from dkbench.strategies import STRATEGIES, StepContext, create_strategy

SIZE = 32
SPEC = DatasetSpec(name="toy_seg", task="segmentation", num_classes=2, in_chans=1, spatial_dims=2, size=SIZE,
                   provides=frozenset({"mask", "bbox"}))
CLS_SPEC = DatasetSpec(name="toy_cls", task="binary", num_classes=2, in_chans=1, spatial_dims=2, size=SIZE)


def tube(rows: slice, gap: slice | None = None) -> torch.Tensor:
    """(1, 1, 32, 32) long mask: a horizontal bar over columns 2..29, optionally cut by a gap."""
    m = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.long)
    m[..., rows, 2:30] = 1
    if gap is not None:
        m[..., gap] = 0
    return m


def logits_of(mask: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    return (one_hot(mask, 2) * 2 - 1) * scale


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a * b).sum() / (a.sum() + b.sum()))


def test_registered_and_refuses_classification():
    assert "topology_loss" in STRATEGIES.names()
    reason = create_strategy("topology_loss").incompatibility(CLS_SPEC)
    assert reason and "segmentation" in reason
    assert create_strategy("topology_loss").incompatibility(SPEC) is None
    for option, value in (("weight", -0.5), ("iterations", -1), ("smooth", 0.0)):
        with pytest.raises(ValueError, match=f"option '{option}' must be"):
            create_strategy("topology_loss", **{option: value})


def test_soft_skeleton_of_a_thick_line_lies_inside_it():
    line = tube(slice(14, 19)).float()
    skeleton = soft_skeleton(line, iterations=10)
    assert float(skeleton.sum()) > 20  # a centre line along the bar
    assert float((skeleton * (1 - line)).abs().sum()) == 0.0
    assert float(skeleton[0, 0, 16].sum()) == float(skeleton.sum())  # the middle row, nothing else


def test_broken_tube_costs_more_than_an_intact_one_with_lower_dice():
    strategy = create_strategy("topology_loss")
    target = tube(slice(14, 19))
    broken = tube(slice(14, 19), gap=slice(14, 17))  # 3-px cut through the bar
    thinner, thicker = tube(slice(15, 19)), tube(slice(13, 19))
    loss = {name: float(strategy.cldice_loss(logits_of(m), target)[0])
            for name, m in {"same": target, "broken": broken, "thinner": thinner, "thicker": thicker}.items()}
    for intact in (thinner, thicker):  # volumetric Dice prefers the broken tube …
        assert dice(broken.float(), target.float()) > dice(intact.float(), target.float())
    assert loss["broken"] > loss["thinner"] + 0.03 and loss["broken"] > loss["thicker"] + 0.03  # … clDice does not
    assert loss["same"] < 1e-3
    # the same ordering with soft (less confident) predictions
    soft = {n: float(strategy.cldice_loss(logits_of(m, 2.0), target)[0]) for n, m in (("b", broken), ("t", thinner))}
    assert soft["b"] > soft["t"]


def test_loss_term_weighted_per_image_and_differentiable():
    strategy = create_strategy("topology_loss", weight=0.25, iterations=5)
    target = torch.cat([tube(slice(14, 19)), tube(slice(4, 8))])
    logits = torch.randn(2, 2, SIZE, SIZE, requires_grad=True)
    per_image = strategy.cldice_loss(logits, target)
    assert per_image.shape == (2,)
    terms = strategy.loss_terms(torch.tensor([1.0, 3.0]), {"logits": logits}, {"label": target},
                                StepContext.for_stage("train", SPEC))
    assert set(terms) == {"task", "cldice"}
    torch.testing.assert_close(terms["task"], torch.tensor(2.0))
    torch.testing.assert_close(terms["cldice"], 0.25 * per_image.mean())
    terms["cldice"].backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    # the functional form agrees with the strategy and works in 3D
    vol = torch.zeros(1, 1, 12, 12, 12)
    vol[..., 4:8, 4:8, 1:11] = 1
    assert float(soft_cldice_loss(vol, vol, iterations=3)[0]) < 1e-6
    cut = vol.clone()
    cut[..., 5:7] = 0
    assert float(soft_cldice_loss(cut, vol, iterations=3)[0]) > 0.05
