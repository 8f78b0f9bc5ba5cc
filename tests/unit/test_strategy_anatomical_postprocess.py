"""anatomical_postprocess (SURVEY.md family G): spurious islands are removed and holes filled, a clean
mask passes unchanged, an empty one stays empty, and the raw (pre-clean-up) scores are reported
next to the cleaned ones; crf=true without MONAI's extension is refused naming the option. The
largest component comes from `dkbench.geometry.components` and equals scipy's per-image result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dkbench.data.spec import DatasetSpec
from dkbench.metrics.segmentation import one_hot, per_image_scores
from dkbench.strategies import STRATEGIES, IncompatibleStrategyError, StepContext, create_strategy
from dkbench.strategies.catalogue import anatomical_postprocess as module

SIZE = 32
SPEC = DatasetSpec(name="toy_seg", task="segmentation", num_classes=2, in_chans=1, spatial_dims=2, size=SIZE,
                   provides=frozenset({"mask", "bbox"}))
SPEC3 = DatasetSpec(**{**SPEC.__dict__, "num_classes": 3})
CLS_SPEC = DatasetSpec(name="toy_cls", task="binary", num_classes=2, in_chans=1, spatial_dims=2, size=SIZE)


def step(stage: str = "val", spec: DatasetSpec = SPEC, **kwargs) -> StepContext:
    return StepContext.for_stage(stage, spec, **kwargs)


def clean_label_map(labels: np.ndarray, num_classes: int, **options) -> np.ndarray:
    """One image's (*spatial) label map through the batched clean-up."""
    return module.clean_label_maps(torch.from_numpy(labels)[None], num_classes, **options)[0].numpy()


def square(y0: int, x0: int, side: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.int64)
    m[y0:y0 + side, x0:x0 + side] = 1
    return m


def outputs_for(*masks: np.ndarray, num_classes: int = 2) -> dict:
    labels = torch.from_numpy(np.stack(masks))[:, None]
    return {"logits": (one_hot(labels, num_classes) * 2 - 1) * 5.0, "feature_map": torch.zeros(len(masks), 4, 2, 2)}


def batch_for(*masks: np.ndarray) -> dict:
    n = len(masks)
    return {"image": torch.randn(n, 1, SIZE, SIZE), "label": torch.from_numpy(np.stack(masks))[:, None],
            "index": torch.arange(n), "id": [str(i) for i in range(n)]}


def test_registered_and_refuses_classification():
    assert "anatomical_postprocess" in STRATEGIES.names()
    reason = create_strategy("anatomical_postprocess").incompatibility(CLS_SPEC)
    assert reason and "segmentation" in reason
    assert create_strategy("anatomical_postprocess").incompatibility(SPEC) is None
    with pytest.raises(ValueError, match=r"option 'connectivity' must be one of \['full', 'face'\]"):
        create_strategy("anatomical_postprocess", connectivity="x")
    with pytest.raises(ValueError, match="option 'crf_iterations' must be >= 1"):
        create_strategy("anatomical_postprocess", crf_iterations=0)


def test_island_removed_hole_filled_clean_and_empty_unchanged():
    lesion = square(8, 8, 12)
    noisy = lesion.copy()
    noisy[12:15, 12:15] = 0  # a hole
    noisy[26:29, 26:29] = 1  # a spurious island
    small = square(2, 2, 4)  # a second, clean image: one small component
    empty = np.zeros((SIZE, SIZE), np.int64)
    strategy = create_strategy("anatomical_postprocess")
    out = strategy.postprocess(outputs_for(noisy, small, empty), batch_for(lesion, small, empty), step())
    pred = out["pred"]
    assert pred.shape == (3, SIZE, SIZE) and pred.dtype == torch.long
    np.testing.assert_array_equal(pred[0].numpy(), lesion)  # island gone, hole filled
    np.testing.assert_array_equal(pred[1].numpy(), small)  # clean: unchanged
    assert int(pred[2].sum()) == 0  # empty stays empty
    assert torch.equal(out["logits"], outputs_for(noisy, small, empty)["logits"])  # logits untouched
    # each step alone
    only_lcc = clean_label_map(noisy, 2, largest_component=True, fill_holes=False)
    assert only_lcc[27, 27] == 0 and only_lcc[13, 13] == 0
    only_fill = clean_label_map(noisy, 2, largest_component=False, fill_holes=True)
    assert only_fill[27, 27] == 1 and only_fill[13, 13] == 1


def test_connectivity_and_multiclass_rules():
    diagonal = np.zeros((SIZE, SIZE), np.int64)
    diagonal[5:10, 5:10] = 1
    diagonal[10:12, 10:12] = 1  # touches the big square only at a corner
    assert clean_label_map(diagonal, 2, fill_holes=False)[11, 11] == 1  # full (8-) connectivity: one object
    assert clean_label_map(diagonal, 2, fill_holes=False, connectivity="face")[11, 11] == 0
    # class 2 enclosed by a class-1 ring is anatomy, not a hole: kept; background inside is filled
    nested = square(4, 4, 14)
    nested[7:15, 7:15] = 0
    nested[9:13, 9:13] = 2
    cleaned = clean_label_map(nested, 3)
    assert (cleaned[9:13, 9:13] == 2).all() and (cleaned[7:9, 7:15] == 1).all()
    out = create_strategy("anatomical_postprocess").postprocess(outputs_for(nested, num_classes=3), batch_for(nested),
                                                                step(spec=SPEC3))
    assert set(np.unique(out["pred"].numpy())) == {0, 1, 2}


def test_raw_metrics_differ_from_post_processed_scores():
    lesion = square(8, 8, 12)
    noisy = lesion.copy()
    noisy[26:30, 26:30] = 1  # island: hurts Dice and, above all, HD95
    outputs, batch = outputs_for(noisy, lesion), batch_for(lesion, lesion)
    strategy = create_strategy("anatomical_postprocess")
    cleaned = strategy.postprocess(outputs, batch, step("test", hd95=True))
    extra = strategy.extra_metrics(cleaned, batch, step("test", hd95=True))  # the module scores HD95 at test
    assert {"dice_raw", "iou_raw", "hd95_raw", "changed_fraction"} <= set(extra)
    # hd95_raw follows the stage's HD95 rule (step.hd95): no CPU distance transform where hd95 is off
    val = strategy.extra_metrics(cleaned, batch, step("val"))
    assert {"dice_raw", "iou_raw", "changed_fraction"} <= set(val) and "hd95_raw" not in val
    assert "hd95_raw" in strategy.extra_metrics(cleaned, batch, step("val", hd95=True))  # model.val_hd95
    post = per_image_scores(cleaned["pred"], batch["label"], 2)
    raw = per_image_scores(outputs["logits"].argmax(1), batch["label"], 2)
    torch.testing.assert_close(extra["dice_raw"], raw["dice"].mean())
    torch.testing.assert_close(extra["hd95_raw"], raw["hd95"].mean())
    assert float(post["dice"].mean()) == 1.0 > float(extra["dice_raw"])
    assert float(post["hd95"].mean()) == 0.0 < float(extra["hd95_raw"])
    torch.testing.assert_close(extra["changed_fraction"], torch.tensor(16 / (2 * SIZE * SIZE)))
    assert strategy.extra_metrics(outputs, batch, step("train")) == {}  # training: no post-processing
    # training is the plain task loss
    assert set(strategy.loss_terms(torch.ones(2), outputs, batch, step("train"))) == {"task"}


def test_crf_refused_clearly_without_monai_extension(monkeypatch):
    monkeypatch.setattr(module, "crf_unavailable", lambda: "monai._C missing (test)")
    strategy = create_strategy("anatomical_postprocess", crf=True)
    reason = strategy.incompatibility(SPEC)
    assert reason and "crf" in reason and "crf=false" in reason
    with pytest.raises(IncompatibleStrategyError, match="crf"):  # the runner checks before building
        strategy.check_compatible(SPEC)
    with pytest.raises(RuntimeError, match="crf"):
        strategy.postprocess(outputs_for(square(4, 4, 6)), batch_for(square(4, 4, 6)), step())


def test_crf_path_refines_then_cleans(monkeypatch):
    """Where MONAI's CRF can run, its refined probabilities replace the logits' argmax before the
    clean-up (a stand-in CRF here: the real one needs the compiled extension)."""
    calls = []

    class FakeCRF(torch.nn.Module):
        def forward(self, logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
            calls.append((logits.shape, reference.shape))
            return torch.softmax(logits, 1).flip(-1)  # a visible change: mirror the prediction

    monkeypatch.setattr(module, "crf_unavailable", lambda: None)
    monkeypatch.setattr(module, "make_crf", lambda iterations: FakeCRF())
    strategy = create_strategy("anatomical_postprocess", crf=True)
    assert strategy.incompatibility(SPEC) is None
    lesion = square(8, 2, 6)
    out = strategy.postprocess(outputs_for(lesion), batch_for(lesion), step())
    assert calls == [((1, 2, SIZE, SIZE), (1, 1, SIZE, SIZE))]
    np.testing.assert_array_equal(out["pred"][0].numpy(), lesion[:, ::-1])


def _per_image_reference(labels: np.ndarray, num_classes: int, largest_component: bool, fill_holes: bool,
                         connectivity: str) -> np.ndarray:
    """The original per-image loop (scipy, one image and class at a time), kept as the reference."""
    from scipy import ndimage

    out = []
    for image in labels:
        image = image.copy()
        ndim = image.ndim
        fg = ndimage.generate_binary_structure(ndim, ndim if connectivity == "full" else 1)
        bg = ndimage.generate_binary_structure(ndim, 1 if connectivity == "full" else ndim)
        classes = range(1, max(num_classes, 2))
        if largest_component:
            for k in classes:
                mask = image == k
                comps, n = ndimage.label(mask, structure=fg)
                if n > 1:
                    keep = int(np.argmax(np.bincount(comps.ravel())[1:])) + 1
                    image[mask & (comps != keep)] = 0
        if fill_holes:
            for k in classes:
                mask = image == k
                if mask.any():
                    image[ndimage.binary_fill_holes(mask, structure=bg) & ~mask & (image == 0)] = k
        out.append(image)
    return np.stack(out)


@pytest.mark.parametrize("connectivity", ["full", "face"])
@pytest.mark.parametrize("shape,num_classes", [((24, 20), 2), ((24, 20), 3), ((10, 9, 8), 2)])
def test_batched_clean_up_equals_the_per_image_loop(connectivity, shape, num_classes):
    """The batched clean-up (largest component by `dkbench.geometry.components`, holes by one
    scipy call per class) gives what scipy's per-image loop gave, on random maps full of
    islands, holes and size ties (including empty and full images)."""
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((12, *shape)) < 0.45, rng.integers(1, num_classes, (12, *shape)), 0)
    labels[0] = 0
    labels[1] = 1
    labels[2] = 0
    labels[2][(slice(0, 2),) * len(shape)] = 1  # two equal-sized islands: the first one wins
    labels[2][(slice(4, 6),) * len(shape)] = 1
    for lcc in (True, False):
        for fill in (True, False):
            got = module.clean_label_maps(torch.from_numpy(labels), num_classes, lcc, fill, connectivity)
            assert got.dtype == torch.long
            np.testing.assert_array_equal(got.numpy(), _per_image_reference(labels, num_classes, lcc, fill,
                                                                            connectivity))


def test_importing_the_strategy_does_not_import_monai():
    """MONAI (≈ 1.5 s; `import monai` loads all its submodules) is imported where a function
    needs it (DiceCE loss, HD95, the CRF), not by importing a strategy or the metrics module."""
    import subprocess
    import sys

    code = ("import sys; import dkbench.strategies.catalogue.anatomical_postprocess; "
            "import dkbench.metrics.segmentation; "
            "print(sorted(m for m in ('monai.metrics', 'monai.losses') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
