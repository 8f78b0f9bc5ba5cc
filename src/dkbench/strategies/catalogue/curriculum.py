"""`curriculum`: doctors learn easy cases first — train on the easiest samples, then grow the pool.

Follows Jiménez-Sánchez et al., "Medical-based Deep Curriculum Learning for Improved Fracture
Classification", MICCAI 2019 (a difficulty ranking from medical knowledge orders the training
samples) with the pacing functions of Hacohen & Weinshall, "On The Power of Curriculum
Learning in Training Deep Networks", ICML 2019 (the training pool at time t is the easiest
fraction p(t) of the data; samples are drawn uniformly from the pool).

Difficulty (higher = harder), in this order (`options.difficulty: auto`):

1. ``dataset``: the dataset's own ``difficulty`` extra (the probe's lesion size/contrast score);
2. ``teacher``: Hacohen & Weinshall's "self-taught" scoring — a plain baseline run of the same
   dataset / backbone / seed for ``teacher_epochs`` epochs (its own run folder under
   ``<cache_dir>/curriculum/<dataset>/<backbone>/seed_<k>``), whose best-validation checkpoint
   scores every TRAIN sample by its task loss. The scores are cached in that folder as
   ``difficulty_<teacher config hash>.npy``, so later runs (other pacings, resumes) neither
   retrain nor rescore.

metadata.json records which source was used (``difficulty_source``) and the pool size of
every epoch actually trained.

Pacing (``pacing``): with progress t = min(1, epoch / (full_at · max_epochs)) and start
fraction s, p(t) = s + (1 - s) t (``linear``), sqrt(s² + (1 - s²) t) (``root``, Platanios
et al. 2019's competence), or s + (1 - s) floor(t · steps) / steps (``step``, Hacohen &
Weinshall's staircase with equal increments). The pool is the first ceil(p · N) train samples
of the difficulty order, which (``balance_classes``, default on, as Hacohen & Weinshall's code)
is class-stratified: the pool holds the easiest fraction p of every class, in the classes'
train proportions (multilabel: not stratified).

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

import copy
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from dkbench.data.spec import DatasetSpec
from dkbench.metrics.classification import per_sample_loss
from dkbench.strategies.prestage import preserved_rng
from dkbench.strategies.base import ALL_TASKS, SEGMENTATION_TASKS, Strategy, StrategyContext
from dkbench.strategies.registry import register_strategy

log = logging.getLogger("dkbench")

PACINGS = ("linear", "root", "step")
DIFFICULTY_SOURCES = ("auto", "dataset", "teacher")


def pacing_fraction(
    epoch: int, max_epochs: int, pacing: str = "linear", start_fraction: float = 0.3,
    full_at: float = 0.7, steps: int = 3,
) -> float:
    """Fraction p(epoch) of the train split (easiest first) in the pool at `epoch` (0-based)."""
    if pacing not in PACINGS:
        raise ValueError(f"curriculum: pacing must be one of {PACINGS}, got {pacing!r}")
    s = float(start_fraction)
    if not 0.0 < s <= 1.0:
        raise ValueError(f"curriculum: start_fraction must be in (0, 1], got {s}")
    full_epoch = float(full_at) * int(max_epochs)
    t = 1.0 if full_epoch <= 0 else min(1.0, max(0.0, epoch / full_epoch))
    if pacing == "linear":
        p = s + (1.0 - s) * t
    elif pacing == "root":
        p = math.sqrt(s * s + (1.0 - s * s) * t)
    else:
        n = max(1, int(steps))
        p = s + (1.0 - s) * math.floor(t * n + 1e-9) / n
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




def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npy")
    os.close(fd)
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@register_strategy("curriculum")
class Curriculum(Strategy):
    name = "curriculum"
    requires = frozenset()  # labels only: the dataset's difficulty is used when it has one
    #: segmentation too: the teacher's per-image DiceCE ranks the images; pools are not
    #: class-stratified there (a label is a mask)
    tasks = ALL_TASKS
    citation = (
        "Jiménez-Sánchez et al., Medical-based Deep Curriculum Learning for Improved Fracture "
        "Classification, MICCAI 2019; pacing: Hacohen & Weinshall, ICML 2019"
    )

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.pacing = str(options.get("pacing", "linear"))
        self.start_fraction = float(options.get("start_fraction", 0.3))
        self.full_at = float(options.get("full_at", 0.7))
        self.steps = int(options.get("steps", 3))
        self.source_option = str(options.get("difficulty", "auto"))
        self.teacher_epochs = int(options.get("teacher_epochs", 5))
        self.balance_classes = bool(options.get("balance_classes", True))
        if self.source_option not in DIFFICULTY_SOURCES:
            raise ValueError(f"curriculum: difficulty must be one of {DIFFICULTY_SOURCES}, got {self.source_option!r}")
        pacing_fraction(0, 1, self.pacing, self.start_fraction, self.full_at, self.steps)  # validate
        self.seed = 0
        self.max_epochs: int | None = None
        self.epoch = 0
        self.difficulty: np.ndarray | None = None
        self.difficulty_source: str | None = None
        self.labels: np.ndarray | None = None
        self.teacher: dict[str, Any] = {}
        self.sampler: CurriculumSampler | None = None
        self._difficulty_t: torch.Tensor | None = None

    # --- compatibility -------------------------------------------------------------------
    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason is None and self.source_option == "dataset" and "difficulty" not in spec.provides:
            reason = (
                f"strategy '{self.name}' with options.difficulty=dataset needs a dataset that provides "
                f"'difficulty'; '{spec.name}' does not (use difficulty=auto or teacher for a teacher-loss ranking)"
            )
        return reason

    # --- pacing --------------------------------------------------------------------------
    def pool_fraction(self, epoch: int) -> float:
        if self.max_epochs is None:
            raise RuntimeError("curriculum: max_epochs unknown (prepare() or on_train_epoch_start() sets it)")
        return pacing_fraction(epoch, self.max_epochs, self.pacing, self.start_fraction, self.full_at, self.steps)

    def set_difficulty(self, difficulty: np.ndarray, source: str, labels: np.ndarray | None = None) -> None:
        """Difficulty over the train split (higher = harder); `labels` for class-stratified pools."""
        difficulty = np.asarray(difficulty, dtype=np.float64)
        if difficulty.ndim != 1 or not np.all(np.isfinite(difficulty)):
            raise ValueError("curriculum: difficulty must be a finite 1-D array over the train split")
        self.difficulty = difficulty
        self.difficulty_source = source
        self.labels = None if labels is None else np.asarray(labels)
        self._difficulty_t = torch.as_tensor(difficulty, dtype=torch.float32)

    # --- hooks ---------------------------------------------------------------------------
    def prepare(self, context: StrategyContext) -> None:
        self.seed = int(context.seed)
        trainer = (context.config or {}).get("trainer") or {}
        if trainer.get("max_epochs") is not None:
            self.max_epochs = int(trainer["max_epochs"])
        spec = context.arrays.spec
        train = context.arrays.splits["train"]
        has_own = "difficulty" in spec.provides and "difficulty" in train.extras
        if self.source_option == "dataset" or (self.source_option == "auto" and has_own):
            if not has_own:
                raise ValueError(f"curriculum: dataset '{spec.name}' provides no difficulty")
            self.set_difficulty(train.extras["difficulty"], "dataset", self._class_labels(spec, train.label))
        else:
            self.set_difficulty(self._teacher_difficulty(context), "teacher", self._class_labels(spec, train.label))

    @staticmethod
    def _class_labels(spec: DatasetSpec, label: np.ndarray) -> np.ndarray | None:
        """Labels to stratify pools by; none for segmentation (a label is a mask, not a class)."""
        return None if spec.task in SEGMENTATION_TASKS else label

    def train_sampler(self, dataset: Any) -> Sampler | None:
        if self.difficulty is None:
            raise RuntimeError("curriculum: prepare() must run before the train sampler is built")
        if len(dataset) != len(self.difficulty):
            raise ValueError(f"curriculum: {len(self.difficulty)} difficulty scores for {len(dataset)} train samples")
        labels = self.labels if self.balance_classes else None
        order = curriculum_order(self.difficulty, labels)  # easiest first
        self.sampler = CurriculumSampler(order, self.pool_fraction, seed=self.seed)
        return self.sampler

    def on_train_epoch_start(self, epoch: int, max_epochs: int) -> None:
        self.epoch = int(epoch)
        self.max_epochs = int(max_epochs)

    def extra_metrics(self, outputs: dict, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        if stage != "train" or self._difficulty_t is None or self.sampler is None:
            return {}
        index = batch["index"]
        if self._difficulty_t.device != index.device:
            self._difficulty_t = self._difficulty_t.to(index.device)
        cached = getattr(self, "_pool_fraction_t", None)
        if cached is None or cached[0] != (self.epoch, index.device):
            # built once per epoch: a host→device copy in every step would synchronise the stream
            fraction = self.sampler.pool_size(self.epoch) / len(self.sampler)
            cached = self._pool_fraction_t = ((self.epoch, index.device), torch.tensor(fraction, device=index.device))
        return {
            "curriculum_pool_fraction": cached[1],
            "curriculum_difficulty": self._difficulty_t[index].mean(),
        }

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["difficulty_source"] = self.difficulty_source
        meta["class_balanced"] = bool(self.balance_classes and self.labels is not None and self.labels.ndim == 1)
        if self.difficulty is not None:
            d = self.difficulty
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
    def teacher_config(self, context: StrategyContext):
        """The teacher's run config: the run's dataset, backbone, data, trainer and optimizer,
        with the baseline strategy, `teacher_epochs` epochs and the default LR schedule. The whole
        `trainer` block is inherited, so the teacher trains where the run does
        (``trainer.accelerator=cpu`` keeps it off a GPU that happens to be present)."""
        from omegaconf import OmegaConf

        from dkbench.runner.compose import compose_config

        run = context.config or {}
        compose = context.compose or compose_config
        # the run's dataset choice, so its config defaults apply (segmentation sets model=segmentation)
        dataset_choice = (run.get("dataset") or {}).get("name")
        cfg = compose(["strategy=baseline", *([f"dataset={dataset_choice}"] if dataset_choice else [])])
        OmegaConf.set_struct(cfg, False)
        for key in ("dataset", "backbone", "data", "trainer", "monitor"):
            if key in run:
                cfg[key] = copy.deepcopy(run[key])
        if "model" in run and "optimizer" in run["model"]:
            cfg.model.optimizer = copy.deepcopy(run["model"]["optimizer"])
        for key in ("threads", "ui"):
            if key in run:
                cfg[key] = copy.deepcopy(run[key])
        cfg.trainer.max_epochs = self.teacher_epochs
        cfg.seed = self.seed
        cfg.tag = ""
        cfg.keep_checkpoints = True  # the teacher's checkpoint scores the train split
        if cfg.get("logger"):
            cfg.logger = {k: v for k, v in cfg.logger.items() if k == "csv"}  # never a W&B run
        if "paths" in run and run["paths"].get("data_dir"):
            cfg.paths.data_dir = str(run["paths"]["data_dir"])
        cfg.paths.cache_dir = str(context.cache_dir)
        cfg.paths.run_dir = str(self.teacher_dir(context))
        OmegaConf.set_struct(cfg, True)
        return cfg

    def teacher_dir(self, context: StrategyContext) -> Path:
        run = context.config or {}
        dataset = (run.get("dataset") or {}).get("name") or context.arrays.spec.name
        backbone = (run.get("backbone") or {}).get("name") or "backbone"
        return Path(context.cache_dir) / "curriculum" / str(dataset) / str(backbone) / f"seed_{self.seed}"

    def _teacher_difficulty(self, context: StrategyContext) -> np.ndarray:
        from dkbench.runner import train as train_module
        from dkbench.runner.run_folder import RunLockedError, config_hash

        cfg = self.teacher_config(context)
        digest = config_hash(cfg)
        run_dir = Path(cfg.paths.run_dir)
        scores_path = run_dir / f"difficulty_{digest}.npy"
        self.teacher = {"run_dir": str(run_dir), "config_hash": digest, "epochs": self.teacher_epochs,
                        "scores": str(scores_path), "score": "per-sample task loss of the best-validation "
                        "checkpoint on the train split", "cached": scores_path.exists()}
        n_train = len(context.arrays.splits["train"])
        if scores_path.exists():
            scores = np.load(scores_path)
            if len(scores) == n_train:
                self._record_teacher_score(run_dir, cfg)
                return scores
        with preserved_rng():
            while True:
                try:
                    train_module.train(cfg)
                    break
                except RunLockedError:  # another run is training this teacher: wait, then reuse it
                    log.info("curriculum: teacher %s is being trained by another process; waiting", run_dir)
                    time.sleep(10)
            scores = self._score_train_split(context, run_dir)
        _save_npy(scores_path, scores)
        self._record_teacher_score(run_dir, cfg)
        return scores

    def _record_teacher_score(self, run_dir: Path, cfg: Any) -> None:
        """The teacher's model-selection score (e.g. val/auroc), for metadata.json."""
        from dkbench.runner.run_folder import RunFolder

        if RunFolder(run_dir).done_hash != self.teacher.get("config_hash"):
            return  # the folder now holds another teacher config (the cached scores are still ours)
        try:
            selection = json.loads((run_dir / "metrics.json").read_text())["selection"]
            self.teacher[str(cfg.monitor.metric)] = selection["best_score"]
        except (OSError, KeyError, ValueError):
            pass

    def _score_train_split(self, context: StrategyContext, run_dir: Path) -> np.ndarray:
        from dkbench.data.datamodule import InMemoryDataset
        from dkbench.strategies import create_strategy

        from dkbench.runner.checkpointing import BEST_WEIGHTS

        spec = context.arrays.spec
        # the teacher's selected weights (best by validation, else its last), written once by the
        # runner as weights only: no pickled objects are loaded from the cache
        ckpt = run_dir / "checkpoints" / BEST_WEIGHTS
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        net = create_strategy("baseline").build_net(context.make_backbone(), spec)
        net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
        device = context.device  # the run's device (trainer.accelerator), never "cuda if present"
        net.to(device).eval()
        data = (context.config or {}).get("data") or {}
        ds = InMemoryDataset(context.arrays.splits["train"], spec.task, float(data.get("mean", 0.5)),
                             float(data.get("std", 0.5)), frozenset(spec.label_derived)).to(device)
        step = int(data.get("eval_batch_size") or data.get("batch_size") or 256)
        losses = []
        with torch.no_grad():
            for start in range(0, len(ds), step):
                batch = ds.__getitems__(list(range(start, min(start + step, len(ds)))))
                logits = net(batch)["logits"].float()
                losses.append(per_sample_loss(logits, batch["label"], spec.task).cpu())
        return torch.cat(losses).numpy().astype(np.float64)
