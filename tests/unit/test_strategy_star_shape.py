"""star_shape (SURVEY.md family G): the penalty is exactly zero for star-shaped predictions (disks,
ellipses, convex polygons wherever they sit) and positive for shapes that are not star-shaped
around the ground truth's centroid (annulus, crescent, detached island); gradient flows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.path import Path

from dkbench.data.spec import DatasetSpec
from dkbench.losses.star_shape import centroids, inward_neighbour_index, star_shape_loss
from dkbench.metrics.segmentation import one_hot
from dkbench.strategies import STRATEGIES, StepContext, create_strategy

SIZE = 48
SPEC = DatasetSpec(name="toy_seg", task="segmentation", num_classes=2, in_chans=1, spatial_dims=2, size=SIZE,
                   provides=frozenset({"mask", "bbox"}))
CLS_SPEC = DatasetSpec(name="toy_cls", task="multiclass", num_classes=3, in_chans=1, spatial_dims=2, size=SIZE)
YY, XX = np.mgrid[:SIZE, :SIZE].astype(np.float64)


def disk(cy: float, cx: float, r: float) -> np.ndarray:
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= r * r


def ellipse(cy: float, cx: float, a: float, b: float, theta: float) -> np.ndarray:
    u = (XX - cx) * math.cos(theta) + (YY - cy) * math.sin(theta)
    v = -(XX - cx) * math.sin(theta) + (YY - cy) * math.cos(theta)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def polygon(cy: float, cx: float, r: float, n: int, theta: float) -> np.ndarray:
    angles = theta + np.arange(n) * 2 * np.pi / n
    verts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
    return Path(verts).contains_points(np.stack([XX.ravel(), YY.ravel()], 1)).reshape(SIZE, SIZE)


def penalty(pred: np.ndarray, target: np.ndarray | None = None, **kw) -> float:
    """Star penalty of a binary prediction (as confident logits) w.r.t. the target's centroid."""
    target = pred if target is None else target
    label = torch.from_numpy(target.astype(np.int64))[None, None]
    logits = (one_hot(torch.from_numpy(pred.astype(np.int64))[None, None], 2) * 2 - 1) * 1e4  # exactly binary
    return float(create_strategy("star_shape", **kw).star_penalty(logits, label)[0])


def test_registered_and_refuses_classification():
    assert "star_shape" in STRATEGIES.names()
    reason = create_strategy("star_shape").incompatibility(CLS_SPEC)
    assert reason and "segmentation" in reason and "multiclass" in reason
    assert create_strategy("star_shape").incompatibility(SPEC) is None
    with pytest.raises(ValueError, match=r"option 'form' must be one of \['monotone', 'paper'\]"):
        create_strategy("star_shape", form="nope")
    with pytest.raises(ValueError, match="option 'weight' must be >= 0"):
        create_strategy("star_shape", weight=-1.0)


def test_neighbour_is_one_quantised_step_toward_the_centre():
    centre = torch.tensor([[10.0, 10.0]])
    index = inward_neighbour_index(centre, (21, 21)).view(21, 21)
    def rc(i: int) -> tuple[int, int]:
        return divmod(int(i), 21)
    assert rc(index[10, 20]) == (10, 19)  # due east → one step west
    assert rc(index[0, 0]) == (1, 1)  # diagonal
    assert rc(index[10 - 2, 20]) == (10 - 2, 19)  # 11° off the axis → axis step
    assert rc(index[10 - 5, 20]) == (10 - 4, 19)  # 26.6° off the axis → diagonal step
    assert rc(index[10, 10]) == (10, 10)  # the centre pixel stays
    mask = torch.zeros(1, 1, 9, 9)
    mask[0, 0, 2:5, 3:8] = 1
    torch.testing.assert_close(centroids(mask)[0], torch.tensor([[3.0, 5.0]]))


@pytest.mark.parametrize("form", ["monotone", "paper"])
def test_zero_for_star_shapes_anywhere(form):
    rng = np.random.default_rng(0)
    shapes = []
    for _ in range(12):
        cy, cx = rng.uniform(12, 36, 2)  # off-centre, non-integer centres
        shapes.append(disk(cy, cx, rng.uniform(2, 10)))
        shapes.append(ellipse(cy, cx, rng.uniform(4, 11), rng.uniform(3, 8), rng.uniform(0, np.pi)))
        shapes.append(polygon(cy, cx, rng.uniform(6, 11), int(rng.integers(3, 8)), rng.uniform(0, 2 * np.pi)))
    for mask in shapes:
        assert penalty(mask, form=form) == 0.0
    # the monotone form needs no agreement with the ground truth: any star shape holding the centroid is free
    assert penalty(disk(24, 24, 6), disk(25, 23, 9)) == 0.0
    assert penalty(ellipse(24, 24, 10, 4, 0.3), disk(24, 24, 3)) == 0.0


def test_positive_for_shapes_that_are_not_star_shaped():
    ring = disk(24, 24, 11) & ~disk(24, 24, 5)
    crescent = disk(24, 24, 10) & ~disk(24, 30, 8)
    island = disk(22, 22, 8) | disk(40, 40, 3)
    for mask in (ring, crescent, island):
        assert penalty(mask) > 0.0
        assert penalty(mask, error_weighted=True) == 0.0  # the paper's weighting: no error, no penalty
        assert penalty(mask, form="paper") == 0.0
    # the island costs, whatever the ground truth (centroid of the disk alone)
    assert penalty(island, disk(22, 22, 8)) > 0.0
    assert penalty(island, disk(22, 22, 8), error_weighted=True) > 0.0
    # the fraction of violating pixels: the ring's inner boundary
    assert 0.005 < penalty(ring) < 0.05


def test_empty_ground_truth_adds_nothing_and_gradient_flows():
    target = torch.from_numpy(np.stack([disk(24, 24, 8), np.zeros((SIZE, SIZE), bool)]).astype(np.int64))[:, None]
    logits = torch.randn(2, 2, SIZE, SIZE, requires_grad=True)
    strategy = create_strategy("star_shape", weight=2.0)
    per_image = strategy.star_penalty(logits, target)
    assert float(per_image[0].detach()) > 0 and float(per_image[1].detach()) == 0.0
    terms = strategy.loss_terms(torch.tensor([0.3, 0.5]), {"logits": logits}, {"label": target},
                                StepContext.for_stage("train", SPEC))
    assert set(terms) == {"task", "star"}
    torch.testing.assert_close(terms["star"], 2.0 * per_image.mean())
    terms["star"].backward()
    assert logits.grad is not None and float(logits.grad[0].abs().sum()) > 0
    assert float(logits.grad[1].abs().sum()) == 0.0  # the image without a lesion gets no star gradient


def test_three_dimensional_masks():
    zz, yy, xx = np.mgrid[:20, :20, :20]
    ball = ((zz - 9.5) ** 2 + (yy - 10) ** 2 + (xx - 8) ** 2 <= 36).astype(np.float32)
    shell = ball * ((zz - 9.5) ** 2 + (yy - 10) ** 2 + (xx - 8) ** 2 > 9)
    t = torch.from_numpy(ball)[None, None]
    assert float(star_shape_loss(t, t)[0]) == 0.0
    assert float(star_shape_loss(torch.from_numpy(shell)[None, None], torch.from_numpy(shell)[None, None])[0]) > 0
