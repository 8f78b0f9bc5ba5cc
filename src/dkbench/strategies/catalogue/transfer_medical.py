"""`transfer_medical`: pre-train the backbone on another (source) medical dataset, then
fine-tune it on the target dataset.

Follows the survey's "transfer from other medical datasets" (Xie et al., Medical Image
Analysis 69:101985, 2021, §3.2): networks pre-trained on a related medical dataset are
fine-tuned on the target, which helps most when the target is small.

How: `prepare` composes an ordinary `baseline` run on the source dataset with the run's
backbone and seed (`dataset=<source> strategy=baseline suite_name=_sources`, runs folder
`<paths.cache_dir>/transfer_medical`) and calls `dkbench.runner.train.train` on it. The run
folder's DONE marker + config hash make the source train ONCE per (source, backbone, seed,
source epochs, overrides) and every later target run reuse it; its lock makes concurrent
targets wait for the one that trains it; an interrupted source run resumes. `build_net` then
loads the source's best checkpoint (`net.backbone.*`) into the target backbone through
`load_local_weights` (prefix found automatically, input stem adapted to the target's channel
count); the head is new.

Simplified relative to the survey's examples: one source dataset, trained with dkbench's
plain baseline protocol (the source run uses the run's `trainer.max_epochs` unless
`source_epochs` is set, and the default data/model settings unless `source_overrides` says
otherwise), not a large purpose-built medical pre-training corpus. Source and target sharing
images (BreastMNIST and BUSI: both `source: busi`) are refused, as their test sets would leak.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from dkbench.backbones import load_local_weights
from dkbench.backbones.base import Backbone
from dkbench.config import config_dir
from dkbench.data.loading import spec_from_config
from dkbench.data.spec import DatasetSpec
from dkbench.metrics.classification import num_outputs
from dkbench.strategies.prestage import preserved_rng
from dkbench.strategies.base import CLASSIFICATION_TASKS, ClassifierNet, Strategy, StrategyContext
from dkbench.strategies.registry import register_strategy

log = logging.getLogger("dkbench.transfer_medical")

#: Seconds between retries while another process trains the same source model.
LOCK_POLL_S = 10.0


def _quote(value: Any) -> str:
    """A path as a quoted Hydra override value (paths may hold characters the grammar reserves)."""
    return "'" + str(value).replace("'", "\\'") + "'"


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
    requires = frozenset()
    #: classification only for now: the source stage trains a classifier; a segmentation target
    #: would need a segmentation source with the same channels (not built yet)
    tasks = CLASSIFICATION_TASKS
    citation = "Xie et al., Medical Image Analysis 69:101985 (2021), §3.2 (transfer from other medical datasets)"

    @property
    def source(self) -> str:
        return str(self.options.get("source", "pneumoniamnist"))

    def _source_spec(self) -> DatasetSpec | str:
        path = config_dir() / "dataset" / f"{self.source}.yaml"
        if not path.exists():
            valid = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
            return f"strategy '{self.name}': unknown source dataset '{self.source}' (options.source); valid: {valid}"
        return spec_from_config(OmegaConf.load(path))

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

    # --- pre-stage -----------------------------------------------------------------------
    def source_overrides(self, ctx: StrategyContext) -> list[str]:
        """The overrides composing the source run from the target run's config."""
        cfg = ctx.config
        epochs = int(self.options.get("source_epochs") or cfg["trainer"]["max_epochs"])
        weights = cfg["backbone"].get("weights")
        return [
            f"dataset={self.source}",
            f"backbone={cfg['backbone']['name']}",
            f"backbone.pretrained={str(bool(cfg['backbone'].get('pretrained', False))).lower()}",
            f"backbone.weights={_quote(weights) if weights else 'null'}",
            "strategy=baseline",
            f"seed={ctx.seed}",
            "suite_name=_sources",
            f"tag=@ep{epochs}",  # source models of other lengths live beside, not over, each other
            f"trainer.max_epochs={epochs}",
            # the source model trains where the run does (trainer.accelerator=cpu on a GPU machine
            # stays on the CPU); with the default preset these equal the defaults: same config hash
            *_device_overrides(cfg.get("trainer") or {}),
            "keep_checkpoints=true",
            f"paths.runs_dir={_quote(Path(ctx.cache_dir) / 'transfer_medical')}",
            f"paths.data_dir={_quote(cfg['paths']['data_dir'])}",
            f"ui.progress_bar={str(bool(cfg.get('ui', {}).get('progress_bar', False))).lower()}",
            *[str(o) for o in (self.options.get("source_overrides") or [])],
        ]

    def prepare(self, context: StrategyContext) -> None:
        from dkbench.runner.run_folder import RunFolder, RunLockedError, config_hash
        from dkbench.runner.train import train  # lazy: the runner imports the strategies

        if context.compose is None:
            from dkbench.runner.compose import compose_config as compose
        else:
            compose = context.compose
        cfg = compose(self.source_overrides(context))
        run = RunFolder(cfg.paths.run_dir)
        with preserved_rng():
            while True:
                try:
                    metrics = train(cfg)
                    break
                except RunLockedError:
                    log.info("source model %s is being trained by another process; waiting", run.path)
                    time.sleep(LOCK_POLL_S)
        from dkbench.runner.checkpointing import BEST_WEIGHTS

        checkpoint = run.file("checkpoints") / BEST_WEIGHTS  # the source run's selected (tested) weights
        if not checkpoint.exists():
            raise FileNotFoundError(f"source run {run.path} is done but has no {checkpoint.name}; delete the folder to retrain it")
        self._source = {
            "dataset": self.source,
            "run_dir": str(run.path),
            "config_hash": config_hash(cfg),
            "checkpoint": str(checkpoint),
            "epochs": int(cfg.trainer.max_epochs),
            "test_metrics": {k: v for k, v in metrics.items() if k.startswith("test/")},
        }

    def build_net(self, backbone: Backbone, spec: DatasetSpec) -> nn.Module:
        source = getattr(self, "_source", None)
        if source is None:
            raise RuntimeError(f"strategy '{self.name}': build_net before prepare (no source model yet)")
        load_local_weights(backbone, source["checkpoint"])
        return ClassifierNet(backbone, num_outputs(spec.task, spec.num_classes), self.options.get("dropout", 0.0))

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["options"]["source_overrides"] = [str(o) for o in (self.options.get("source_overrides") or [])]
        meta["source_model"] = getattr(self, "_source", None)
        return meta
