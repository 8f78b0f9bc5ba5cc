"""Radiomics features (dkbench.features): known answers on synthetic images, maps equal to
scikit-image's, and the cache: one extraction per dataset, reused by every run of a sweep."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.draw import disk, ellipse, polygon
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
from skimage.filters import sobel
from skimage.filters.rank import entropy as rank_entropy

from dkbench.features import RadiomicsConfig, extraction_count, feature_maps, feature_names, image_features, load_or_extract
from dkbench.features.radiomics import GLCM_ANGLES, GLCM_PROPS, extract_features

CFG = RadiomicsConfig(use_mask=True)
NAMES = feature_names(CFG)


def named(values: np.ndarray) -> dict[str, float]:
    return dict(zip(NAMES, values.tolist()))


def texture(seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size)).astype(np.uint8)


def test_disc_mask_is_compact_round_and_convex():
    mask = np.zeros((96, 96), bool)
    mask[disk((48, 48), 25)] = True
    f = named(image_features(texture(size=96), mask, CFG))
    assert f["shape_compactness"] == pytest.approx(1.0, abs=0.03)
    assert f["shape_eccentricity"] < 0.05
    assert f["shape_irregularity"] == pytest.approx(1.0, abs=0.01)
    assert f["shape_solidity"] > 0.97 and f["shape_aspect"] == pytest.approx(1.0)
    assert f["shape_area"] == mask.sum() and f["shape_perimeter"] == pytest.approx(2 * math.pi * 25, rel=0.03)
    assert f["shape_empty_mask"] == 0


def test_ellipse_and_star_shapes():
    tall = np.zeros((96, 96), bool)
    tall[ellipse(48, 48, 30, 15)] = True  # semi-axes: 30 rows (tall), 15 columns
    f = named(image_features(texture(size=96), tall, CFG))
    assert f["shape_aspect"] == pytest.approx(2.0, rel=0.05)  # taller than wide
    assert f["shape_eccentricity"] == pytest.approx(math.sqrt(1 - 0.25), abs=0.02)
    assert f["shape_major_axis"] == pytest.approx(2 * 30, rel=0.05)  # full axis lengths
    assert f["shape_minor_axis"] == pytest.approx(2 * 15, rel=0.05)

    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radius = np.where(np.arange(24) % 2 == 0, 36, 14)  # 12 spicules
    star = np.zeros((96, 96), bool)
    star[polygon(48 + radius * np.sin(angles), 48 + radius * np.cos(angles), star.shape)] = True
    s = named(image_features(texture(size=96), star, CFG))
    assert s["shape_compactness"] < 0.5 and s["shape_irregularity"] > 1.3 and s["shape_solidity"] < 0.7


def test_largest_component_and_empty_mask():
    mask = np.zeros((64, 64), bool)
    mask[disk((20, 20), 10)] = True
    mask[50:53, 50:53] = True  # a small island
    f = named(image_features(texture(), mask, CFG))
    assert f["shape_area"] == disk((20, 20), 10)[0].size
    empty = named(image_features(texture(), np.zeros((64, 64), bool), CFG))
    assert empty["shape_empty_mask"] == 1 and all(v == 0 for k, v in empty.items() if k.startswith("shape_") and k != "shape_empty_mask")
    whole = named(image_features(texture(), None, RadiomicsConfig(use_mask=True)))  # texture falls back to the image
    assert whole["firstorder_mean"] == empty["firstorder_mean"]


def test_constant_and_two_level_first_order():
    const = named(image_features(np.full((32, 32), 77, np.uint8), None, CFG))
    for key in ("std", "entropy", "skewness", "kurtosis"):
        assert const[f"firstorder_{key}"] == 0
    assert const["firstorder_mean"] == pytest.approx(77 / 255)
    assert const["firstorder_p10"] == const["firstorder_p90"] == pytest.approx(77 / 255)
    assert const["glcm_contrast_d1"] == 0 and const["glcm_homogeneity_d1"] == 1 and const["glcm_ASM_d1"] == 1
    two = np.zeros((32, 32), np.uint8)
    two[:, 16:] = 255
    t = named(image_features(two, None, CFG))
    assert t["firstorder_mean"] == pytest.approx(0.5) and t["firstorder_std"] == pytest.approx(0.5)
    assert t["firstorder_entropy"] == pytest.approx(1.0) and t["firstorder_skewness"] == pytest.approx(0.0)
    assert t["firstorder_kurtosis"] == pytest.approx(1.0)  # pyradiomics: m4 / m2^2, not the excess
    assert t["firstorder_p10"] == 0 and t["firstorder_p90"] == 1
    assert t["firstorder_energy"] == pytest.approx(32 * 16)


def test_glcm_matches_graycoprops_and_ignores_pixels_outside_the_roi():
    img = texture(3)
    f = named(image_features(img, None, RadiomicsConfig()))  # whole image
    P = graycomatrix((img.astype(int) * 32 // 256).astype(np.uint8), [1, 2], list(GLCM_ANGLES), levels=32,
                     symmetric=True, normed=True)
    for prop in GLCM_PROPS:
        ref = graycoprops(P, prop).mean(1)
        assert f[f"glcm_{prop}_d1"] == pytest.approx(ref[0], rel=1e-5)
        assert f[f"glcm_{prop}_d2"] == pytest.approx(ref[1], rel=1e-5)
    lbp = local_binary_pattern(img, 8, 1, "uniform").astype(int)
    assert [f[f"lbp_{k}"] for k in range(10)] == pytest.approx(np.bincount(lbp.ravel(), minlength=10) / lbp.size)
    mask = np.zeros_like(img, bool)
    mask[16:48, 16:48] = True
    other = img.copy()
    other[~mask] = 255 - other[~mask]
    a, b = named(image_features(img, mask, CFG)), named(image_features(other, mask, CFG))
    for key in a:
        if key.startswith(("firstorder_", "glcm_", "shape_")):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key


def test_feature_maps_equal_scikit_image():
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (2, 23, 29)).astype(np.uint8)
    imgs[0, :8, :8] = 40  # a flat patch: LBP ties
    maps = feature_maps(torch.from_numpy(imgs).float()[:, None], window=5, entropy_levels=8).numpy()
    assert maps.shape == (2, 4, 23, 29)
    for i, img in enumerate(imgs):
        u = img / 255.0
        np.testing.assert_allclose(maps[i, 0], sobel(u), atol=1e-6)
        ref_std = ndi.generic_filter(u, np.nanstd, size=5, mode="constant", cval=np.nan)
        np.testing.assert_allclose(maps[i, 1], ref_std, atol=1e-5)
        ref_ent = rank_entropy((img.astype(int) * 8 // 256).astype(np.uint8), np.ones((5, 5), bool))
        np.testing.assert_allclose(maps[i, 2], ref_ent, atol=1e-5)
        np.testing.assert_array_equal(maps[i, 3] * 9, local_binary_pattern(img, 8, 1, "uniform"))
    only = feature_maps(torch.from_numpy(imgs).float()[:, None], maps=["local_entropy", "sobel"], window=5)
    np.testing.assert_allclose(only.numpy(), maps[:, [2, 0]], atol=1e-6)


def _probe(n_train: int = 24, n_val: int = 12, n_test: int = 12, seed: int = 0):
    from dkbench.data.loading import load_dataset
    from dkbench.runner.compose import compose_config

    cfg = compose_config(["dataset=probe", f"dataset.options.n_train={n_train}", f"dataset.options.n_val={n_val}",
                          f"dataset.options.n_test={n_test}", f"dataset.options.seed={seed}"])
    return load_dataset(cfg.dataset, cfg.paths.data_dir)


def test_cache_extracts_once_per_dataset_and_config(tmp_path):
    arrays = _probe()
    before = extraction_count()
    first = load_or_extract(arrays, CFG, tmp_path)
    second = load_or_extract(arrays, CFG, tmp_path)
    assert first.computed and not second.computed and extraction_count() == before + 1
    assert first.path == second.path and first.path.parent == tmp_path / "features"
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(first.splits[split], second.splits[split])
    np.testing.assert_allclose(
        first.splits["val"], extract_features(arrays.splits["val"].image, arrays.splits["val"].extras["mask"], CFG))
    assert first.splits["train"].shape == (24, len(NAMES))
    # another feature config, or other data, is another extraction
    assert load_or_extract(arrays, RadiomicsConfig(use_mask=False), tmp_path).computed
    assert load_or_extract(_probe(seed=1), CFG, tmp_path).computed
    assert extraction_count() == before + 3
    assert not list((tmp_path / "features").glob("*.tmp.npz"))  # atomic writes leave no temporaries


def test_a_sweep_extracts_the_features_once(tmp_path):
    """Issue requirement: count the extractions in a sweep (2 strategies x 2 seeds, one dataset)."""
    from dkbench.runner.compose import compose_config
    from dkbench.runner.suite import expand_suite
    from dkbench.runner.train import train

    suite = {
        "name": "hc", "datasets": ["probe"], "backbones": ["tinycnn"],
        "strategies": ["handcrafted_feature", "handcrafted_decision"], "seeds": [0, 1], "baseline": "handcrafted_feature",
        "overrides": ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "dataset.options.n_train=48",
                      "dataset.options.n_val=24", "dataset.options.n_test=24", "data.batch_size=24",
                      "ui.progress_bar=false", "keep_checkpoints=false"],
    }
    cells = expand_suite(suite, [f"paths.root_dir={tmp_path}", f"paths.runs_dir={tmp_path / 'runs'}"])
    assert len(cells) == 4
    before = extraction_count()
    hits = []
    for cell in cells:
        cfg = compose_config(list(cell.overrides))
        train(cfg)
        meta = json.loads((tmp_path / "runs" / "hc" / cell.label / "metadata.json").read_text())
        hits.append(meta["strategy"]["features"]["cache_hit"])
    assert extraction_count() == before + 1, "the radiomics features must be extracted once per dataset"
    assert sorted(hits) == [False, True, True, True]
    assert len(list((tmp_path / "runs" / ".cache" / "features").glob("*.npz"))) == 1


def test_colour_moments_see_hue_that_grey_features_cannot():
    """Dermoscopy adaptation: two lesions with the same grey level (channel mean) but opposite hue
    (red-brown vs blue-grey) give identical grey features and different colour moments."""
    from dkbench.features.radiomics import RadiomicsConfig, extract_features, feature_names

    red, blue = np.zeros((1, 3, 16, 16), np.uint8), np.zeros((1, 3, 16, 16), np.uint8)
    red[0, 0], red[0, 1], red[0, 2] = 180, 90, 30  # mean 100
    blue[0, 0], blue[0, 1], blue[0, 2] = 30, 90, 180  # mean 100
    grey_cfg, colour_cfg = RadiomicsConfig(), RadiomicsConfig(color=True)
    assert np.array_equal(extract_features(red, None, grey_cfg), extract_features(blue, None, grey_cfg))
    names = feature_names(colour_cfg)
    a, b = extract_features(red, None, colour_cfg)[0], extract_features(blue, None, colour_cfg)[0]
    assert a[names.index("color_r_mean")] == pytest.approx(180 / 255) and b[names.index("color_b_mean")] == pytest.approx(180 / 255)
    assert "color" not in grey_cfg.as_dict() and colour_cfg.as_dict()["color"] is True  # grey cache keys unchanged


def test_colour_moments_follow_the_mask():
    from dkbench.features.radiomics import RadiomicsConfig, extract_features, feature_names

    image = np.zeros((1, 3, 16, 16), np.uint8)
    image[0, 2, 4:12, 4:12] = 200  # a blue lesion on black skin
    mask = np.zeros((1, 1, 16, 16), np.uint8)
    mask[0, 0, 4:12, 4:12] = 1
    cfg = RadiomicsConfig(use_mask=True, color=True)
    values = extract_features(image, mask, cfg)[0]
    names = feature_names(cfg)
    assert values[names.index("color_b_mean")] == pytest.approx(200 / 255)
    assert values[names.index("color_b_std")] == 0.0  # only lesion pixels count
