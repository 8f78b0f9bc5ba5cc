"""`transfer_medical`: pre-train the backbone on another (source) medical dataset, then
fine-tune it on the target dataset.

Follows the survey's "transfer from other medical datasets" (Xie et al., Medical Image
Analysis 69:101985, 2021, §3.2): networks pre-trained on a related medical dataset are
fine-tuned on the target, which helps most when the target is small.

How: the source model is a pre-stage run (`prestage_runs`), an ordinary `baseline` run on the
source dataset with the run's backbone and seed (`dataset=<source> strategy=baseline
suite_name=_sources`, runs folder `<paths.cache_dir>/transfer_medical`). The runner trains it
before the target run (a sweep plans it as a job of its own, once per config hash, shared by
every target that needs it; its DONE marker makes later targets reuse it, and an interrupted
source run resumes). `build_net` then loads the source's best checkpoint (`net.backbone.*`) into the target backbone through
`load_local_weights` (prefix found automatically, input stem adapted to the target's channel
count); the head is new.

Simplified relative to the survey's examples: one source dataset, trained with dkbench's
plain baseline protocol (the source run uses the run's `trainer.max_epochs` unless
`source_epochs` is set, and the default data/model settings unless `source_overrides` says
otherwise), not a large purpose-built medical pre-training corpus. Source and target sharing
images (BreastMNIST and BUSI: both `source: busi`) are refused, as their test sets would leak.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from dkbench.backbones import load_local_weights
from dkbench.config import group_files
from dkbench.data.loading import spec_from_config
from dkbench.data.spec import DatasetSpec
from dkbench.data.spec import num_outputs
from dkbench.strategies.base import CLASSIFICATION_TASKS, BuildContext, ClassifierNet, Strategy
from dkbench.strategies.options import Count, StrategyOptions
from dkbench.strategies.registry import register_strategy


def _quote(value: Any) -> str:
    """A path as a quoted Hydra override value (paths may hold characters the grammar reserves)."""
    return "'" + str(value).replace("'", "\\'") + "'"


def _plain(run: Any, key: str) -> Any:
    """`key` of the run config as plain values, resolved (a sweep's config holds a `hydra` node
    that only resolves inside its job, so the config is never resolved as a whole here)."""
    value = OmegaConf.select(run, key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _device_overrides(trainer: Any) -> list[str]:
    """The run's ``trainer.accelerator`` / ``trainer.devices`` as overrides of a nested run."""
    out = []
    if trainer.get("accelerator") is not None:
        out.append(f"trainer.accelerator={trainer['accelerator']}")
    devices = trainer.get("devices")
    if isinstance(devices, (list, tuple)):
        out.append(f"trainer.devices=[{','.join(str(int(d)) for d in devices)}]")
    elif devices is not None:
        out.append(f"trainer.devices={_quote(devices) if isinstance(devices, str) and ',' in devices else devices}")
    return out


@register_strategy("transfer_medical")
class TransferMedical(Strategy):
    name = "transfer_medical"
    family = "A"
    knowledge = "another medical dataset's labels (training)"
    requires = frozenset()
    #: classification only for now: the source stage trains a classifier; a segmentation target
    #: would need a segmentation source with the same channels (not built yet)
    tasks = CLASSIFICATION_TASKS
    citation = "Xie et al., Medical Image Analysis 69:101985 (2021), §3.2 (transfer from other medical datasets)"

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: source dataset config (configs/dataset/); refused when it shares images with the target
        source: str = "pneumoniamnist"
        #: epochs of the source run (None: the run's trainer.max_epochs)
        source_epochs: Count | None = None
        #: extra overrides for the source run, e.g. ("data.batch_size=128",)
        source_overrides: tuple[str, ...] = ()

    def _source_spec(self) -> DatasetSpec | str:
        source = self.options.source
        datasets = group_files("dataset")
        if source not in datasets:
            return (f"strategy '{self.name}': unknown source dataset '{source}' (options.source); "
                    f"valid: {', '.join(sorted(datasets))}")
        return spec_from_config(OmegaConf.load(datasets[source]))
    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        src = self._source_spec()
        if isinstance(src, str):
            return src
        if src.name == spec.name or src.source == spec.source:
            return (
                f"strategy '{self.name}': source dataset '{src.name}' and target '{spec.name}' share their images "
                f"(both come from '{spec.source}'), so pre-training would see target test images; "
                f"choose another strategy.options.source"
            )
        if src.task not in CLASSIFICATION_TASKS:
            return f"strategy '{self.name}': source dataset '{src.name}' is a {src.task} task; it must be classification"
        if src.spatial_dims != spec.spatial_dims:
            return (
                f"strategy '{self.name}': source dataset '{src.name}' is {src.spatial_dims}D and target "
                f"'{spec.name}' {spec.spatial_dims}D; the backbone's weights do not carry over"
            )
        return None

    # --- pre-stage: the source run, planned and trained by the runner ---------------------
    def source_overrides(self, run: Any) -> list[str]:
        """The overrides composing the source run from the target run's config `run`."""
        trainer = _plain(run, "trainer") or {}
        backbone = _plain(run, "backbone") or {}
        epochs = int(self.options.source_epochs or trainer["max_epochs"])
        weights = backbone.get("weights")
        return [
            f"dataset={self.options.source}",
            f"backbone={backbone['name']}",
            f"backbone.pretrained={str(bool(backbone.get('pretrained', False))).lower()}",
            f"backbone.weights={_quote(weights) if weights else 'null'}",
            "strategy=baseline",
            f"seed={int(run.seed)}",
            "suite_name=_sources",
            f"tag=@ep{epochs}",  # source models of other lengths live beside, not over, each other
            f"trainer.max_epochs={epochs}",
            # the source model trains where the run does (trainer.accelerator=cpu on a GPU machine
            # stays on the CPU); with the default preset these equal the defaults: same config hash
            *_device_overrides(trainer),
            "keep_checkpoints=true",
            f"paths.runs_dir={_quote(Path(_plain(run, 'paths.cache_dir')) / 'transfer_medical')}",
            f"paths.data_dir={_quote(_plain(run, 'paths.data_dir'))}",
            f"ui.progress_bar={str(bool(_plain(run, 'ui.progress_bar'))).lower()}",
            *self.options.source_overrides,
        ]

    def prestage_runs(self, run: Any) -> dict[str, Any]:
        """The source model: an ordinary `baseline` run on the source dataset (its own folder
        under `<paths.cache_dir>/transfer_medical`), trained once per (source, backbone, seed,
        epochs, overrides) and shared by every target run that composes the same config."""
        from dkbench.runner.compose import compose_config  # lazy: the runner imports the strategies

        return {"source": compose_config(self.source_overrides(run))}

    def build_net(self, ctx: BuildContext) -> nn.Module:
        """A classifier whose backbone starts from the source run's selected (tested) weights."""
        from dkbench.runner.checkpointing import BEST_WEIGHTS
        from dkbench.runner.run_folder import RunFolder

        run = RunFolder(ctx.prestages["source"])
        checkpoint = run.file("checkpoints") / BEST_WEIGHTS
        if not checkpoint.exists():
            raise FileNotFoundError(f"source run {run.path} is done but has no {checkpoint.name}; delete the folder to retrain it")
        metrics = run.read_json("metrics.json")
        self._source = {
            "dataset": self.options.source,
            "run_dir": str(run.path),
            "config_hash": run.done_hash,
            "checkpoint": str(checkpoint),
            "epochs": int(metrics.get("epochs_trained", 0)),
            "test_metrics": {k: v for k, v in metrics.items() if k.startswith("test/")},
        }
        backbone = ctx.make_backbone()
        load_local_weights(backbone, checkpoint)
        spec = ctx.spec
        return ClassifierNet(backbone, num_outputs(spec.task, spec.num_classes), self.options.dropout)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["source_model"] = getattr(self, "_source", None)
        return meta
