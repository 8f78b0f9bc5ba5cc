"""The strategy interface: how a piece of domain knowledge enters training.

The task modules call these hooks and never branch on a strategy's name, so a new strategy is
one subclass + one YAML. Each hook's default is plain supervised training; a strategy
overrides only the hooks its knowledge needs:

- `Options`          a frozen dataclass of the strategy's typed options (`self.options`);
- `backbone_kwargs`  change how the backbone is built (pretrained weights, 2.5D input channels);
- `build_net(ctx)`   build the network from `ctx.make_backbone` (extra heads, fusion branches,
                     decoders) and compute what the strategy keeps from the data (feature
                     tables, priors, pre-stage outputs) as registered buffers / modules;
- `on_train_epoch_start`  pacing that depends on the epoch (self-paced thresholds);
- `train_sampler`    change which samples are drawn (curriculum);
- `transform_batch`  change a batch before the forward pass (ROI crops, extra channels);
- `loss_terms`       weight samples / add loss terms (self-paced, attention supervision);
- `postprocess`      change outputs before metrics (decision-level fusion, clean-up); a strategy
                     that changes nothing else sets `post_hoc` and shares the baseline's training;
- `extra_metrics`    strategy-specific numbers logged as val/… and test/… (auxiliary Dice, …);
- `metadata`         facts the run folder must record (e.g. which ROI is used at test time).

Per-step hooks receive a `StepContext` (stage, task, spec, the run's task loss, device, epoch),
so no strategy stores the task or a factory for later. A `Strategy` is an `nn.Module`, a child
of the LightningModule: its buffers and modules move to the run's device with the network and
are saved in (and restored from) every checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Sampler

from dkbench.backbones.base import Backbone, IncompatibleInputError
from dkbench.backbones.registry import dense_backbones
from dkbench.data.spec import DatasetArrays, DatasetSpec
from dkbench.errors import UserError
from dkbench.losses.task import TaskLoss
from dkbench.data.spec import num_outputs
from dkbench.strategies.options import StrategyOptions, parse_options

CLASSIFICATION_TASKS = frozenset({"binary", "multiclass", "multilabel"})
SEGMENTATION_TASKS = frozenset({"segmentation"})
#: the classification and segmentation tasks; detection is opted into per strategy (DETECTION_TASKS),
#: once the strategy's mechanism has been checked on a detector
ALL_TASKS = CLASSIFICATION_TASKS | SEGMENTATION_TASKS
DETECTION_TASKS = frozenset({"detection"})


class IncompatibleStrategyError(UserError, ValueError):
    """A strategy cannot run on a dataset; the message names what is missing."""


@dataclass
class BuildContext:
    """What `build_net` may use: the data, the backbone factory, the run's task loss, a cache
    folder and the device the Trainer will use."""

    arrays: DatasetArrays
    #: (**overrides) -> Backbone, with the run's backbone settings + the strategy's backbone_kwargs
    make_backbone: Callable[..., Backbone]
    seed: int = 0
    cache_dir: Path | None = None
    #: the run's per-sample task loss (model.lambda_* for segmentation); from the spec if not given
    task_loss: TaskLoss | None = None
    config: dict = field(default_factory=dict)
    #: (overrides) -> composed run config, e.g. to pre-train on another dataset
    compose: Any = None
    #: The device the run's Trainer will use (`dkbench.runner.devices.trainer_device`): pre-stage
    #: networks train and infer there, then hand back / cache CPU tensors, so cache files do not
    #: depend on it. CPU by default (tests, and callers that build a context by hand).
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: role → folder of a finished pre-stage run (`Strategy.prestage_runs`), trained by the runner
    prestages: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task_loss is None:
            self.task_loss = TaskLoss(self.spec.task)

    @property
    def spec(self) -> DatasetSpec:
        return self.arrays.spec


@dataclass(frozen=True)
class StepContext:
    """What a per-step hook needs besides the batch and the outputs."""

    stage: str  # "train" | "val" | "test"
    spec: DatasetSpec
    task_loss: TaskLoss
    device: torch.device
    epoch: int = 0
    max_epochs: int = 1
    #: whether this stage scores HD95 (segmentation: at test; at validation only with model.val_hd95),
    #: so a strategy's own HD95 variants (hd95_raw) cost a distance transform only where the task's does
    hd95: bool = False
    #: the network being trained / tested (e.g. to score the val split with the tested weights)
    net: nn.Module | None = None

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def training(self) -> bool:
        return self.stage == "train"

    @classmethod
    def for_stage(cls, stage: str, spec: DatasetSpec, device: torch.device | str = "cpu", **kwargs: Any) -> StepContext:
        """A context with the spec's default task loss (tests, and code outside a run)."""
        return cls(stage, spec, kwargs.pop("task_loss", None) or TaskLoss(spec.task), torch.device(device), **kwargs)


class ClassifierNet(nn.Module):
    """Backbone + linear head; returns the outputs strategies and metrics read."""

    def __init__(self, backbone: Backbone, num_out: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(backbone.num_features, num_out)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        feature_map = self.backbone.forward_features(batch["image"])
        embedding = self.backbone.pool(feature_map)
        return {"logits": self.head(self.dropout(embedding)), "embedding": embedding, "feature_map": feature_map}


class SegmenterNet(nn.Module):
    """Dense backbone (full-resolution decoder features) + 1×1 convolution to class logits."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        if getattr(backbone, "output_stride", None) != 1:
            raise IncompatibleInputError(
                f"backbone {type(backbone).__name__} returns downsampled features; segmentation needs a dense "
                f"backbone (decoder at full resolution): {', '.join(dense_backbones())}"
            )
        self.backbone = backbone
        conv = nn.Conv3d if backbone.spatial_dims == 3 else nn.Conv2d
        self.head = conv(backbone.num_features, max(int(num_classes), 2), kernel_size=1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        feature_map = self.backbone.forward_features(batch["image"])
        return {"logits": self.head(feature_map), "feature_map": feature_map,
                "embedding": self.backbone.pool(feature_map)}


def task_net(backbone: Backbone, spec: DatasetSpec, dropout: float = 0.0, ctx: BuildContext | None = None) -> nn.Module:
    """The plain network of a task: classifier head, segmentation head or (with the build context:
    its train boxes size the anchors, its config holds `model.detector`) RetinaNet detector on the backbone."""
    if spec.task in DETECTION_TASKS:
        if ctx is None:
            raise ValueError("a detector is built from the run's BuildContext (train boxes, model.detector): "
                             "pass ctx= to task_net")
        from dkbench.models.detector import detector_net

        return detector_net(backbone, ctx.arrays, ctx.config)
    if spec.task in SEGMENTATION_TASKS:
        return SegmenterNet(backbone, spec.num_classes)
    return ClassifierNet(backbone, num_outputs(spec.task, spec.num_classes), dropout)


#: The survey's families (Xie et al., MedIA 69:101985, 2021; ../SURVEY.md), the leaderboard's row groups.
FAMILIES = {
    "A": "knowledge from other datasets",
    "B": "doctors' training pattern",
    "C": "doctors' diagnostic patterns",
    "D": "areas doctors attend to",
    "E": "features doctors weigh",
    "F": "other knowledge (clinical data, reports)",
    "G": "anatomical priors",
}

#: the pre-stage role of a `post_hoc` strategy: the baseline run whose network it evaluates
SHARED_TRAINING = "shared_training"


def baseline_twin(run: Any) -> Any:
    """The run config a post-hoc run shares its network with: the same config with the suite's
    plain `baseline` strategy, i.e. the baseline cell of the same dataset, backbone, seed and
    settings (same folder, same config hash), kept with its weights."""
    from omegaconf import OmegaConf

    from dkbench.runner.compose import compose_config

    # unresolved, so the run folder follows the new strategy name; the tag resolved now (an
    # optuna search's tag reads Hydra's job number, which resolves only inside the job)
    twin = OmegaConf.create({k: v for k, v in OmegaConf.to_container(run, resolve=False).items() if k != "hydra"})
    twin.strategy = compose_config(["strategy=baseline"]).strategy
    twin.tag = OmegaConf.select(run, "tag", default="")
    twin.keep_checkpoints = True  # its weights are what the post-hoc run evaluates
    return twin


class Strategy(nn.Module):
    """Base class; subclasses set `name`, `requires`, `tasks`, `citation`, `Options` and override
    hooks. State kept across batches lives in registered buffers / modules (`register_buffer`)."""

    name: ClassVar[str] = ""
    #: Keys of DatasetSpec.provides the strategy needs.
    requires: ClassVar[frozenset[str]] = frozenset()
    tasks: ClassVar[frozenset[str]] = CLASSIFICATION_TASKS
    #: The paper the strategy follows (SURVEY.md's representative method).
    citation: ClassVar[str] = ""
    #: The typed options (a frozen dataclass extending StrategyOptions).
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions
    #: The survey's family, a key of `FAMILIES` (SURVEY.md: A other datasets … G anatomical priors).
    family: ClassVar[str] = ""
    #: What the strategy feeds the network and when ("(training)", "(train + **test**)": bold
    #: where expert knowledge is needed at test time); `knowledge_used` refines it by options.
    knowledge: ClassVar[str] = ""
    #: True for a strategy that only changes test outputs (`postprocess`): its network is the
    #: baseline's — same loss, data and model selection on the raw validation outputs — so the run
    #: reuses the baseline run's weights (pre-stage `SHARED_TRAINING`) instead of training it again
    post_hoc: ClassVar[bool] = False

    def __init__(self, **options: Any):
        super().__init__()
        self.options = parse_options(self.Options, options, self.name or type(self).__name__)

    def knowledge_used(self) -> str:
        """`knowledge` for these options (the leaderboard's "knowledge used" column)."""
        return self.knowledge

    # --- compatibility -------------------------------------------------------------------
    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        """None if the strategy can run on the dataset (and backbone registry key, when given),
        else the reason, which the runner records for the cell."""
        if spec.task not in self.tasks:
            return (
                f"strategy '{self.name}' supports tasks {sorted(self.tasks)}; dataset "
                f"'{spec.name}' is a {spec.task} task"
            )
        lacking = self.requires - spec.provides
        if lacking:
            return (
                f"strategy '{self.name}' requires {sorted(self.requires)}; dataset '{spec.name}' "
                f"provides {sorted(spec.provides) or 'nothing beyond images and labels'} "
                f"(missing: {sorted(lacking)})"
            )
        return None

    def check_compatible(self, spec: DatasetSpec, backbone: str | None = None) -> None:
        reason = self.incompatibility(spec, backbone)
        if reason:
            raise IncompatibleStrategyError(reason)

    # --- hooks ---------------------------------------------------------------------------
    def backbone_kwargs(self, spec: DatasetSpec) -> dict[str, Any]:
        """Overrides for `create_backbone` (e.g. `pretrained=True`, `in_chans=3, spatial_dims=2`)."""
        return {}

    def prestage_runs(self, run: Any) -> dict[str, Any]:
        """Ordinary dkbench runs this strategy needs finished before it builds its network (a
        source model to transfer from, a curriculum teacher): role → composed run config, from
        the run's config `run`. The runner trains them first, each once per config hash and shared
        by every cell that composes the same one (a sweep plans them as jobs of their own), and
        passes their folders to `build_net` as ``ctx.prestages[role]``. They seed themselves and
        run before this run seeds, so this run's random stream does not depend on them.
        A `post_hoc` strategy's one pre-stage is the baseline run it shares (`baseline_twin`)."""
        return {SHARED_TRAINING: baseline_twin(run)} if self.post_hoc else {}

    def prestage_artefacts(self, run: Any) -> dict[str, dict[str, Any]]:
        """Cached artefacts this strategy computes from the data before training (an ROI
        predictor, a shape autoencoder): role → what identifies it (plain values from the run's
        config). `build_net` computes a missing one itself (under a lock, cached by content); a
        sweep plans each distinct one as a job of its own, run before the cells, so parallel cells
        find it cached instead of waiting for one of them to build it."""
        return {}

    def build_prestage(self, role: str, ctx: BuildContext) -> None:
        """Build (or find) the cached artefact `role` of `prestage_artefacts` and return nothing."""
        raise NotImplementedError(f"strategy '{self.name}' declares no pre-stage artefact '{role}'")

    def build_net(self, ctx: BuildContext) -> nn.Module:
        """The network, built once before training. Data-derived state (tables, priors,
        pre-stage outputs) is computed here too and registered on `self`."""
        return task_net(ctx.make_backbone(), ctx.spec, self.options.dropout, ctx)

    def train_sampler(self, dataset: Any) -> Sampler | None:
        """A sampler for the training split. Keep its length constant across epochs (Lightning
        fixes the number of batches per epoch once); implement `set_epoch(epoch)` to pace it."""
        return None

    def on_train_epoch_start(self, epoch: int, max_epochs: int) -> None:
        """Called by the module at the start of every training epoch."""

    def transform_batch(self, batch: dict, step: StepContext) -> dict:
        return batch

    def loss_terms(self, per_sample_loss: torch.Tensor, outputs: dict, batch: dict,
                   step: StepContext) -> dict[str, torch.Tensor]:
        """Named loss terms; the module sums them. Default: the mean task loss."""
        return {"task": per_sample_loss.mean()}

    def postprocess(self, outputs: dict, batch: dict, step: StepContext) -> dict:
        return outputs

    def extra_metrics(self, outputs: dict, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        """Scalars averaged over the epoch's batches and logged as `<stage>/<name>`."""
        return {}

    def metadata(self) -> dict[str, Any]:
        return {"strategy": self.name, "citation": self.citation, "options": self.options.as_dict()}
