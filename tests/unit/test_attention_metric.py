"""The attention–mask overlap reported for every classification run on datasets with masks."""

import torch

from dkbench.metrics.attention import activation_map, attention_overlap, energy_inside_mask


def test_energy_is_one_inside_uniform_at_area_fraction_and_nan_without_lesion():
    mask = torch.zeros(3, 1, 8, 8)
    mask[:, :, 2:4, 2:4] = 1  # 4 of 64 pixels
    focused = torch.zeros(3, 1, 8, 8)
    focused[:, :, 2:4, 2:4] = 1.0
    uniform = torch.ones(3, 1, 8, 8)
    assert torch.allclose(energy_inside_mask(focused, mask), torch.ones(3))
    assert torch.allclose(energy_inside_mask(uniform, mask), torch.full((3,), 4 / 64))
    assert torch.isnan(energy_inside_mask(uniform, torch.zeros(3, 1, 8, 8))).all()


def test_overlap_follows_the_feature_map_hot_spot():
    fmap = torch.zeros(2, 4, 4, 4)
    fmap[:, :, 0, 0] = 5.0  # attention in the top-left quarter of a 16x16 image
    mask_on = torch.zeros(2, 1, 16, 16)
    mask_on[:, :, :6, :6] = 1
    mask_off = torch.zeros(2, 1, 16, 16)
    mask_off[:, :, 10:, 10:] = 1
    on = attention_overlap({"feature_map": fmap}, {"mask": mask_on})
    off = attention_overlap({"feature_map": fmap}, {"mask": mask_off})
    assert on > 0.9 and off < 0.05
    assert activation_map(fmap, (16, 16)).shape == (2, 1, 16, 16)
    assert attention_overlap({"feature_map": fmap}, {}) is None


def test_probe_run_reports_attention_overlap(tiny_run):
    metrics, _ = tiny_run()
    assert 0.0 <= metrics["test/attention_overlap"] <= 1.0
