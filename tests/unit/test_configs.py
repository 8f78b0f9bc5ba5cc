"""Every config composes; unknown names list the valid ones; strategies are refused clearly."""

from __future__ import annotations

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from dkbench.backbones import BACKBONES, IncompatibleInputError, create_backbone
from dkbench.config import config_dir, group_entry
from dkbench.data.loading import spec_from_config
from dkbench.data.registry import DATASETS
from dkbench.registry import UnknownNameError
from dkbench.runner.compose import compose_config
from dkbench.strategies import STRATEGIES, IncompatibleStrategyError, Strategy, create_strategy

DATASET_CONFIGS = sorted(p.stem for p in (config_dir() / "dataset").glob("*.yaml"))
BACKBONE_CONFIGS = sorted(p.stem for p in (config_dir() / "backbone").glob("*.yaml"))
STRATEGY_CONFIGS = sorted(p.stem for p in (config_dir() / "strategy").glob("*.yaml"))


def test_every_registry_entry_has_a_yaml_and_back():
    for group in ("strategy", "backbone", "dataset"):  # `name` = file name = run-folder name
        for path in (config_dir() / group).glob("*.yaml"):
            assert OmegaConf.load(path).name == path.stem, path
    # composed, so that variants (which inherit `method` from their parent YAML) count too
    methods = {compose_config([f"strategy={s}"]).strategy.method for s in STRATEGY_CONFIGS}
    assert methods == set(STRATEGIES.names())
    names = {OmegaConf.load(config_dir() / "backbone" / f"{b}.yaml").arch for b in BACKBONE_CONFIGS}
    # timm entries register only when the optional `dkbench[timm]` extra is installed
    assert {n for n in names if not n.startswith("timm_")} == {n for n in BACKBONES.names() if not n.startswith("timm_")}
    assert set(BACKBONES.names()) <= names
    readers = {group_entry("dataset", d)["reader"] for d in DATASET_CONFIGS}
    assert readers <= set(DATASETS.names())


@pytest.mark.parametrize("dataset", DATASET_CONFIGS)
def test_every_dataset_composes_with_every_backbone(dataset):
    """Config composition for dataset × backbone; the backbone either builds for the dataset's
    input or refuses it with a clear IncompatibleInputError (never a shape traceback)."""
    for backbone in BACKBONE_CONFIGS:
        cfg = compose_config([f"dataset={dataset}", f"backbone={backbone}"])
        assert cfg.dataset.name == dataset
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    spec = spec_from_config(cfg.dataset)
    assert spec.name == dataset


_INPUTS = sorted({(s.in_chans, s.spatial_dims, s.size) for s in (
    spec_from_config(OmegaConf.create(group_entry("dataset", d))) for d in DATASET_CONFIGS)})


@pytest.mark.parametrize("backbone", sorted(BACKBONES.names()))
def test_backbones_build_or_refuse_every_dataset_input(backbone):
    for in_chans, dims, size in _INPUTS:
        try:
            net = create_backbone(backbone, in_chans=in_chans, spatial_dims=dims, img_size=size)
        except (IncompatibleInputError, ValueError) as err:
            assert str(err), "refusals must say why"
            continue
        assert net.num_features > 0


def test_unknown_group_option_lists_valid_names():
    with pytest.raises(MissingConfigException) as err:
        compose_config(["dataset=nosuchset"])
    assert "breastmnist" in str(err.value) and "probe" in str(err.value)


def test_unknown_registry_names_list_valid_names():
    with pytest.raises(UnknownNameError, match="baseline"):
        create_strategy("nosuchstrategy")
    with pytest.raises(UnknownNameError, match="resnet18_28"):
        create_backbone("nosuchnet", in_chans=1, img_size=28)
    with pytest.raises(UnknownNameError, match="medmnist"):
        DATASETS.get("nosuchreader")


def test_strategy_requiring_missing_keys_is_refused_with_both_sets():
    class NeedsMasks(Strategy):
        name = "needs_masks"
        requires = frozenset({"mask", "bbox"})

    spec = spec_from_config(compose_config(["dataset=breastmnist"]).dataset)
    with pytest.raises(IncompatibleStrategyError) as err:
        NeedsMasks().check_compatible(spec)
    msg = str(err.value)
    assert "['bbox', 'mask']" in msg and "breastmnist" in msg and "missing" in msg
    probe = spec_from_config(compose_config(["dataset=probe"]).dataset)
    assert NeedsMasks().incompatibility(probe) is None


def test_experiment_preset_is_the_medmnist_v2_protocol():
    cfg = compose_config(["experiment=medmnist_v2_resnet18_28", "dataset=pneumoniamnist"])
    assert cfg.dataset.name == "pneumoniamnist"  # the CLI's dataset wins over the preset's
    assert cfg.backbone.name == "resnet18_28" and cfg.trainer.max_epochs == 100
    assert cfg.data.batch_size == 128 and cfg.model.optimizer.lr == pytest.approx(1e-3)
    assert list(cfg.model.scheduler.milestones) == [50, 75] and cfg.model.scheduler.gamma == pytest.approx(0.1)
    assert not any(cfg.data.augment.values()) and cfg.monitor.metric == "val/auroc"


def test_variant_dataset_configs_inherit_their_parent():
    """probe_clean holds only what differs from probe (the shortcut off): the raw-file readers
    (`dkbench list`, the checks above) see the merged config, and so does Hydra."""
    clean, probe = group_entry("dataset", "probe_clean"), group_entry("dataset", "probe")
    assert clean["name"] == "probe_clean" and clean["reader"] == probe["reader"]
    assert clean["options"]["shortcut"]["enabled"] is False and probe["options"]["shortcut"]["enabled"] is True
    assert {k: v for k, v in clean["options"].items() if k != "shortcut"} == \
        {k: v for k, v in probe["options"].items() if k != "shortcut"}
    cfg = compose_config(["dataset=probe_clean"])
    assert cfg.dataset.options.shortcut.enabled is False
    assert OmegaConf.to_container(cfg.dataset.options.radius) == probe["options"]["radius"]


def test_breastmnist_64_is_breastmnist_at_64_px_with_the_same_split(data_dir):
    """The variant inherits everything but the size: the official 64-px file, the same labels."""
    import numpy as np

    from tests.conftest import require_file

    require_file(data_dir, "medmnist/breastmnist_64.npz")
    require_file(data_dir, "medmnist/breastmnist.npz")
    from dkbench.data.loading import load_dataset

    small = load_dataset(compose_config(["dataset=breastmnist"]).dataset, data_dir)
    large = load_dataset(compose_config(["dataset=breastmnist_64"]).dataset, data_dir)
    assert large.spec.name == "breastmnist_64" and large.spec.size == 64 and large.spec.source == "busi"
    for split in ("train", "val", "test"):
        assert large.splits[split].image.shape[-2:] == (64, 64)
        assert np.array_equal(large.splits[split].label, small.splits[split].label)
