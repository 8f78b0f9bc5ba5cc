"""`curriculum`: doctors learn easy cases first — train on the easiest samples, then grow the pool.

Follows Jiménez-Sánchez et al., "Medical-based Deep Curriculum Learning for Improved Fracture
Classification", MICCAI 2019 (a difficulty ranking from medical knowledge orders the training
samples) with the pacing functions of Hacohen & Weinshall, "On The Power of Curriculum
Learning in Training Deep Networks", ICML 2019 (the training pool at time t is the easiest
fraction p(t) of the data; samples are drawn uniformly from the pool).

Difficulty (higher = harder), in this order (`options.difficulty: auto`):

1. ``dataset``: the dataset's own ``difficulty`` extra (the probe's lesion size/contrast score);
2. ``teacher``: Hacohen & Weinshall's "self-taught" scoring — a plain baseline run of the same
   dataset / backbone / seed for ``teacher_epochs`` epochs (a pre-stage run the runner trains
   first, `prestage_runs`: its own run folder under
   ``<cache_dir>/curriculum/<dataset>/<backbone>/seed_<k>``), whose best-validation checkpoint
   scores every TRAIN sample by the run's task loss (segmentation: the run's DiceCE weights,
   which the teacher also trains with; detection: the detector's per-image classification +
   box-regression loss, `dkbench.models.detector.detection_loss`, the sum the detection module
   trains with). The scores are cached in that folder as
   ``difficulty_<teacher config hash>.npy`` (written atomically, under a lock that cells
   sharing the teacher wait on), so later runs (other pacings, resumes) neither retrain nor
   rescore.

The scores and the curriculum order are buffers of the strategy (on the run's device, in every
checkpoint); metadata.json records which source was used (``difficulty_source``) and the pool
size of every epoch actually trained.

Pacing (``pacing``): with progress t = min(1, epoch / (full_at · max_epochs)) and start
fraction s, p(t) = s + (1 - s) t (``linear``), sqrt(s² + (1 - s²) t) (``root``, Platanios
et al. 2019's competence), or s + (1 - s) floor(t · steps) / steps (``step``, Hacohen &
Weinshall's staircase with equal increments). The pool is the first ceil(p · N) train samples
of the difficulty order, which (``balance_classes``, default on, as Hacohen & Weinshall's code)
is class-stratified: the pool holds the easiest fraction p of every class, in the classes'
train proportions (multilabel, segmentation: not stratified).

Detection ("easy lesions first"): an image's difficulty is the dataset's (the probe's lesion
size/contrast score; the probe gives every image without a lesion the constant 0.5, a placeholder,
not a measured difficulty) or the teacher's per-image detector loss, where a negative image (no
lesion) has no box term: its difficulty is its classification loss only (the hard-negative
sampler's anchors). Neither places negatives on the lesions' scale, so with ``balance_classes``
the pools are stratified by lesion presence instead of by class (a label is a set of box rows):
every pool holds the easiest fraction p of the lesion images and of the negatives, in their train
proportions, so the probe's placeholder or a negative's lower loss never decides when the
negatives enter. Without it, the raw ranking decides (the probe's negatives then all enter
together, at difficulty 0.5). The teacher's hard-negative sampler draws random anchors; the
scoring draws them from a stream seeded by the run's seed and forked off the run's own, so the
scores are reproducible and the run's random stream is untouched.

Simplified relative to the papers: Jiménez-Sánchez et al. sample with probabilities derived
from the difficulty ranking that a scheduler moves toward uniform, and their difficulty comes
from medical knowledge (the AO classification's decision tree, disagreement between several
experts' annotations); here the pool is a hard threshold on a dataset-given or teacher-loss
ranking. Hacohen & Weinshall pace per mini-batch iteration; here the pool changes at epoch
boundaries (Lightning fixes the number of batches per epoch, so every epoch draws
N = len(train) indices from the pool, cycling through it without replacement). The teacher is
trained on the whole train split (self-taught scoring), not on held-out folds, so its losses
partly reflect memorisation; keep ``teacher_epochs`` small.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler

from dkbench.data.spec import DatasetSpec
from dkbench.storage import atomic_file, file_lock
from dkbench.strategies.base import (
    ALL_TASKS, DETECTION_TASKS, SEGMENTATION_TASKS, BuildContext, StepContext, Strategy,
)
from dkbench.strategies.options import Bounds, StrategyOptions
from dkbench.strategies.registry import register_strategy

Pacing = Literal["linear", "root", "step"]


def pacing_fraction(
    epoch: int, max_epochs: int, pacing: Pacing = "linear", start_fraction: float = 0.3,
    full_at: float = 0.7, steps: int = 3,
) -> float:
    """Fraction p(epoch) of the train split (easiest first) in the pool at `epoch` (0-based)."""
    s = float(start_fraction)
    full_epoch = float(full_at) * int(max_epochs)
    t = 1.0 if full_epoch <= 0 else min(1.0, max(0.0, epoch / full_epoch))
    if pacing == "linear":
        p = s + (1.0 - s) * t
    elif pacing == "root":
        p = math.sqrt(s * s + (1.0 - s * s) * t)
    elif pacing == "step":
        n = max(1, int(steps))
        p = s + (1.0 - s) * math.floor(t * n + 1e-9) / n
    else:
        raise ValueError(f"curriculum: pacing must be 'linear', 'root' or 'step', got {pacing!r}")
    return min(1.0, p)


def curriculum_order(difficulty: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Train indices from easiest to hardest; with 1-D `labels`, class-stratified.

    Stratified as Hacohen & Weinshall's `balance_order` (GuyHacohen/curriculum_learning, run
    with balance=True in main_reproduce_paper.py: the classes are interleaved so that every
    prefix of the order is class-balanced), generalised to unequal class sizes:
    a sample's key is its within-class difficulty quantile (rank + 0.5) / n_class, so any
    prefix holds each class in its train-split proportion (±1), and each class's easiest.
    Without it, a teacher's loss ranking on imbalanced data puts one class first.
    """
    d = np.asarray(difficulty, dtype=np.float64)
    index = np.arange(len(d))
    if labels is None or np.asarray(labels).ndim != 1:
        return np.lexsort((index, d))
    labels = np.asarray(labels)
    key = np.empty(len(d))
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        ranked = members[np.lexsort((members, d[members]))]
        key[ranked] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((index, d, key))  # by key, then difficulty, then index


class CurriculumSampler(Sampler[int]):
    """Draws len(order) indices per epoch from the easiest `fraction(epoch)` of `order`.

    `order` lists the train indices from easiest to hardest. The length never changes
    (Lightning computes the number of training batches once); a small pool is cycled through
    as whole shuffled passes (without replacement inside a pass). Deterministic per
    (seed, epoch).

    Lightning calls `set_epoch` on the train DataLoader's sampler at the start of every epoch:
    pytorch_lightning 2.6.6, loops/fit_loop.py:445 (`FitLoop.on_advance_start` →
    `_set_sampler_epoch(dl, self.epoch_progress.current.processed)`), which calls
    `sampler.set_epoch(epoch)` in lightning_fabric/utilities/data.py:434-436. For epoch 0 (and
    on resume) the DataLoader iterator is created earlier, in `FitLoop.setup_data`
    (fit_loop.py:276), but `__iter__` below is a generator: the pool is chosen at the first
    batch, after `set_epoch`.
    """

    def __init__(self, order: np.ndarray, fraction: Callable[[int], float], seed: int = 0):
        self.order = np.asarray(order, dtype=np.int64)
        self.fraction = fraction
        self.seed = int(seed)
        self.epoch = 0
        #: epoch → pool size, for every epoch iterated (recorded in metadata.json)
        self.history: dict[int, int] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def pool_size(self, epoch: int) -> int:
        n = len(self.order)
        return int(min(n, max(1, math.ceil(self.fraction(epoch) * n - 1e-9))))

    def pool(self, epoch: int) -> np.ndarray:
        return self.order[: self.pool_size(epoch)]

    def indices(self, epoch: int) -> np.ndarray:
        """The len(order) indices drawn at `epoch`."""
        pool = self.pool(epoch)
        rng = np.random.default_rng([self.seed, int(epoch)])
        passes = -(-len(self.order) // len(pool))
        drawn = np.concatenate([pool[rng.permutation(len(pool))] for _ in range(passes)])
        return drawn[: len(self.order)]

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        drawn = self.indices(epoch)
        self.history[epoch] = self.pool_size(epoch)
        yield from drawn.tolist()



@register_strategy("curriculum")
class Curriculum(Strategy):
    name = "curriculum"
    family = "B"
    knowledge = "a difficulty ranking: the dataset's or a teacher's loss (training)"
    requires = frozenset()  # labels only: the dataset's difficulty is used when it has one
    #: segmentation too: the teacher's per-image task loss (the run's DiceCE) ranks the images;
    #: pools are not class-stratified there (a label is a mask). Detection: the teacher's per-image
    #: detector loss; pools stratified by lesion presence (module docstring)
    tasks = ALL_TASKS | DETECTION_TASKS
    citation = (
        "Jiménez-Sánchez et al., Medical-based Deep Curriculum Learning for Improved Fracture "
        "Classification, MICCAI 2019; pacing: Hacohen & Weinshall, ICML 2019"
    )

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: auto: the dataset's `difficulty` when it provides one, else the teacher's loss
        difficulty: Literal["auto", "dataset", "teacher"] = "auto"
        #: how the pool fraction p grows with the epoch
        pacing: Pacing = "linear"
        #: p at epoch 0
        start_fraction: Annotated[float, Bounds(gt=0, le=1)] = 0.3
        #: p reaches 1 at this fraction of trainer.max_epochs
        full_at: float = 0.7
        #: class-stratified pools (not for multilabel or segmentation; detection: by lesion presence)
        balance_classes: bool = True
        #: step pacing only: equal increments from start_fraction to 1
        steps: int = 3
        #: teacher path: epochs of the baseline run whose per-sample train loss is the difficulty
        teacher_epochs: int = 5

    def __init__(self, **options: Any):
        super().__init__(**options)
        #: difficulty of every train sample (higher = harder); float64, as the order is ranked from it
        self.register_buffer("difficulty", torch.empty(0, dtype=torch.float64))
        #: the train indices from easiest to hardest (class-stratified with balance_classes)
        self.register_buffer("order", torch.empty(0, dtype=torch.int64))
        #: the current epoch's pool fraction, set at the epoch start: logged every step without a
        #: host→device copy
        self.register_buffer("epoch_pool_fraction", torch.tensor(0.0))
        self.seed = 0
        self.max_epochs: int | None = None
        self.difficulty_source: str | None = None
        self.class_balanced = False
        #: what the pools are stratified by ("class", "lesion presence"), None when not stratified
        self.stratified_by: str | None = None
        self.teacher: dict[str, Any] = {}
        self.sampler: CurriculumSampler | None = None

    # --- compatibility -------------------------------------------------------------------
    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason is None and self.options.difficulty == "dataset" and "difficulty" not in spec.provides:
            reason = (
                f"strategy '{self.name}' with options.difficulty=dataset needs a dataset that provides "
                f"'difficulty'; '{spec.name}' does not (use difficulty=auto or teacher for a teacher-loss ranking)"
            )
        return reason

    # --- pacing --------------------------------------------------------------------------
    def pool_fraction(self, epoch: int) -> float:
        if self.max_epochs is None:
            raise RuntimeError("curriculum: max_epochs unknown (build_net() or on_train_epoch_start() sets it)")
        o = self.options
        return pacing_fraction(epoch, self.max_epochs, o.pacing, o.start_fraction, o.full_at, o.steps)

    def set_difficulty(self, difficulty: np.ndarray, source: str, labels: np.ndarray | None = None,
                       strata: str = "class") -> None:
        """Difficulty over the train split (higher = harder); `labels` (1-D) for stratified pools,
        `strata` naming what they are (metadata.json)."""
        difficulty = np.asarray(difficulty, dtype=np.float64)
        if difficulty.ndim != 1 or not np.all(np.isfinite(difficulty)):
            raise ValueError("curriculum: difficulty must be a finite 1-D array over the train split")
        labels = np.asarray(labels) if labels is not None and self.options.balance_classes else None
        self.class_balanced = labels is not None and labels.ndim == 1
        self.stratified_by = strata if self.class_balanced else None
        self.difficulty = torch.from_numpy(difficulty)
        self.order = torch.from_numpy(curriculum_order(difficulty, labels).astype(np.int64))  # easiest first
        self.difficulty_source = source

    # --- hooks ---------------------------------------------------------------------------
    def build_net(self, ctx: BuildContext) -> nn.Module:
        self.seed = int(ctx.seed)
        trainer = ctx.config.get("trainer") or {}
        if trainer.get("max_epochs") is not None:
            self.max_epochs = int(trainer["max_epochs"])
        spec = ctx.spec
        train = ctx.arrays.splits["train"]
        labels, strata = (None if spec.task in SEGMENTATION_TASKS else train.label), "class"  # a mask is not a class
        if spec.task in DETECTION_TASKS:  # box rows are not a class: stratify by lesion presence
            from dkbench.data.detection import box_counts

            labels, strata = (box_counts(train.label) > 0).astype(np.int64), "lesion presence"
        has_own = "difficulty" in spec.provides and "difficulty" in train.extras
        if self.options.difficulty == "dataset" or (self.options.difficulty == "auto" and has_own):
            if not has_own:
                raise ValueError(f"curriculum: dataset '{spec.name}' provides no difficulty")
            self.set_difficulty(train.extras["difficulty"], "dataset", labels, strata)
        else:
            self.set_difficulty(self._teacher_difficulty(ctx), "teacher", labels, strata)
        return super().build_net(ctx)

    def _uses_teacher(self, spec: DatasetSpec) -> bool:
        return self.options.difficulty == "teacher" or (
            self.options.difficulty == "auto" and "difficulty" not in spec.provides)

    def prestage_runs(self, run: Any) -> dict[str, Any]:
        """The teacher, when the ranking comes from one: a pre-stage run the runner trains first
        (once per teacher config, shared by every pacing and cell with the same config)."""
        from dkbench.data.loading import spec_from_config

        if not self._uses_teacher(spec_from_config(run.dataset)):
            return {}
        return {"teacher": self.teacher_config(run)}

    def train_sampler(self, dataset: Any) -> Sampler | None:
        if len(dataset) != len(self.order):
            raise ValueError(f"curriculum: {len(self.order)} difficulty scores for {len(dataset)} train samples")
        self.sampler = CurriculumSampler(self.order.cpu().numpy(), self.pool_fraction, seed=self.seed)
        return self.sampler

    def on_train_epoch_start(self, epoch: int, max_epochs: int) -> None:
        self.max_epochs = int(max_epochs)
        if self.sampler is not None:
            self.epoch_pool_fraction.fill_(self.sampler.pool_size(epoch) / len(self.sampler))

    def extra_metrics(self, outputs: dict, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        if not step.training or self.sampler is None:
            return {}
        return {
            "curriculum_pool_fraction": self.epoch_pool_fraction,
            # float32, as logged before the scores were a float64 buffer
            "curriculum_difficulty": self.difficulty[batch["index"]].float().mean(),
        }

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["difficulty_source"] = self.difficulty_source
        meta["class_balanced"] = self.class_balanced
        meta["stratified_by"] = self.stratified_by
        if len(self.difficulty):
            d = self.difficulty.cpu().numpy()
            meta["difficulty_summary"] = {"n": int(len(d)), "min": float(d.min()), "median": float(np.median(d)),
                                          "max": float(d.max())}
        if self.teacher:
            meta["teacher"] = dict(self.teacher)
        if self.sampler is not None:
            n = len(self.sampler)
            meta["pool_sizes"] = {str(e): k for e, k in sorted(self.sampler.history.items())}
            meta["pool_fractions"] = {str(e): k / n for e, k in sorted(self.sampler.history.items())}
        return meta

    # --- teacher ("self-taught" scoring) -------------------------------------------------
    def teacher_config(self, run: Any):
        """The teacher's run config from the run's config `run`: the run's dataset, backbone,
        data, trainer, optimizer and task loss weights (detection: the detector settings and
        `froc_iou`, so it trains the run's detector), with the baseline strategy,
        `teacher_epochs` epochs and the default LR schedule. The whole `trainer` block is
        inherited, so the teacher trains where the run does (``trainer.accelerator=cpu`` keeps it
        off a GPU that happens to be present); the loss weights, so the teacher learns and scores
        with the run's task loss and its config hash (which names the cached scores) changes with
        them."""
        from omegaconf import OmegaConf

        from dkbench.runner.compose import compose_config

        def plain(key: str) -> Any:  # resolved key by key: a sweep's `hydra` node only resolves in its job
            value = OmegaConf.select(run, key)
            return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

        # the run's dataset choice, so its config defaults apply (segmentation sets model=segmentation,
        # detection model=detection)
        dataset_choice = plain("dataset.name")
        cfg = compose_config(["strategy=baseline", *([f"dataset={dataset_choice}"] if dataset_choice else [])])
        OmegaConf.set_struct(cfg, False)
        for key in ("dataset", "backbone", "data", "trainer", "monitor", "threads", "ui"):
            if key in run:
                cfg[key] = plain(key)
        for key in ("optimizer", "lambda_dice", "lambda_ce", "detector", "froc_iou"):
            if OmegaConf.select(run, f"model.{key}") is not None:
                cfg.model[key] = plain(f"model.{key}")
        cfg.trainer.max_epochs = self.options.teacher_epochs
        cfg.seed = int(run.seed)
        cfg.tag = ""
        cfg.keep_checkpoints = True  # the teacher's checkpoint scores the train split
        if cfg.get("logger"):
            cfg.logger = {k: v for k, v in cfg.logger.items() if k == "csv"}  # never a W&B run
        if plain("paths.data_dir"):
            cfg.paths.data_dir = str(plain("paths.data_dir"))
        cache_dir = Path(plain("paths.cache_dir"))
        cfg.paths.cache_dir = str(cache_dir)
        cfg.paths.run_dir = str(cache_dir / "curriculum" / str(dataset_choice) / str(plain("backbone.name"))
                                / f"seed_{int(run.seed)}")
        OmegaConf.set_struct(cfg, True)
        return cfg

    def _teacher_difficulty(self, ctx: BuildContext) -> np.ndarray:
        """The teacher's scores of the train split, cached in the teacher's run folder (trained
        by the runner before this run: ``ctx.prestages["teacher"]``)."""
        from dkbench.runner.run_folder import RunFolder

        run_dir = Path(ctx.prestages["teacher"])
        digest = RunFolder(run_dir).done_hash
        # named by the teacher run's config hash (the runner's identity of the teacher, loss
        # weights included), so a cache written before keeps its name
        scores_path = run_dir / f"difficulty_{digest}.npy"
        n_train = len(ctx.arrays.splits["train"])
        loss = ("per-image detector loss (classification + box regression; negatives: classification only)"
                if ctx.spec.task in DETECTION_TASKS else "per-sample task loss")
        self.teacher = {"run_dir": str(run_dir), "config_hash": digest, "epochs": self.options.teacher_epochs,
                        "scores": str(scores_path), "score": f"{loss} of the best-validation checkpoint on the "
                        "train split", "cached": scores_path.exists()}
        # cells that share the teacher: the first scores the train split, the others wait, then read
        with file_lock(scores_path.with_suffix(".lock")):
            scores = np.load(scores_path, allow_pickle=False) if scores_path.exists() else None  # never pickled objects
            if scores is None or len(scores) != n_train:
                scores = self._score_train_split(ctx, run_dir)
                with atomic_file(scores_path, "wb") as fh:
                    np.save(fh, scores)
        self._record_teacher_score(run_dir)
        return scores

    def _record_teacher_score(self, run_dir: Path) -> None:
        """The teacher's model-selection score (e.g. val/auroc), for metadata.json."""
        try:
            selection = json.loads((run_dir / "metrics.json").read_text())["selection"]
            self.teacher[str(selection["monitor"])] = selection["best_score"]
        except (OSError, KeyError, ValueError):
            pass

    def _score_train_split(self, ctx: BuildContext, run_dir: Path) -> np.ndarray:
        """Every train sample's loss under the teacher, with the run's task loss (`ctx.task_loss`:
        for segmentation, the run's DiceCE weights; detection: `detection_loss`, the detection
        module's loss, its hard-negative sampler seeded by the run's seed on a forked stream)."""
        from dkbench.data.datamodule import InMemoryDataset
        from dkbench.runner.checkpointing import BEST_WEIGHTS
        from dkbench.strategies import create_strategy

        spec = ctx.spec
        # the teacher's selected weights (best by validation, else its last), written once by the
        # runner as weights only: no pickled objects are loaded from the cache
        ckpt = run_dir / "checkpoints" / BEST_WEIGHTS
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        # built on the meta device: no weights initialised, so no random numbers drawn from the
        # run's (already seeded) stream; the teacher's weights are then assigned in place
        with torch.device("meta"):
            net = create_strategy("baseline").build_net(ctx)
        net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}, assign=True)
        device = ctx.device  # the run's device (trainer.accelerator), never "cuda if present"
        net.to(device).eval()
        data = ctx.config.get("data") or {}
        ds = InMemoryDataset(ctx.arrays.splits["train"], spec.task, float(data.get("mean", 0.5)),
                             float(data.get("std", 0.5)), frozenset(spec.label_derived)).to(device)
        step = int(data.get("eval_batch_size") or data.get("batch_size") or 256)
        detection = spec.task in DETECTION_TASKS
        if detection:
            from dkbench.models.detector import detection_loss
        losses = []
        # forked: the detector's hard-negative sampler draws random numbers, which must neither move
        # the run's (already seeded) stream nor make the cached scores differ between runs
        forked = [device] if device.type != "cpu" else []
        with torch.no_grad(), torch.random.fork_rng(devices=forked, device_type=device.type if forked else "cuda"):
            torch.manual_seed(int(ctx.seed))
            for start in range(0, len(ds), step):
                batch = ds.__getitems__(list(range(start, min(start + step, len(ds)))))
                outputs = net(batch)
                if detection:
                    loss = detection_loss(net, outputs, batch["label"])[0]
                else:
                    loss = ctx.task_loss(outputs["logits"].float(), batch["label"])
                losses.append(loss.float().cpu())
        return torch.cat(losses).numpy().astype(np.float64)
