"""`topology_loss`: a topology-aware term (soft clDice) that penalises broken or disconnected
predictions more than a slightly wrong but intact one (SURVEY.md family G).

After Shit S., Paetzold J.C., Sekuboyina A., Ezhov I., Unger A., Zhylka A., Pluim J.P.W.,
Bauer U., Menze B.H., "clDice - a novel topology-preserving loss function for tubular structure
segmentation", CVPR 2021, pp. 16560-16569 (the survey row also names Clough et al. 2019, a
persistent-homology loss; clDice is the cheap differentiable one). clDice compares skeletons
with volumes: topology precision = |S(P) ∩ T| / |S(P)|, topology sensitivity = |S(T) ∩ P| / |S(T)|;
a gap cut through a structure removes part of the ground truth's skeleton from the prediction
even when it costs almost no volume, so Dice barely moves but clDice drops.

The term is ``weight`` × (1 − soft clDice), computed per image on the softmax probability of each
foreground class against the one-hot target (soft skeletons by ``iterations`` rounds of
min/max-pool erosion and opening, `dkbench.losses.cldice`), averaged over foreground classes and
images, and added to the DiceCE task loss (the paper likewise pairs clDice with soft Dice:
(1 − α)·L_Dice + α·L_clDice; here the task loss is kept whole and the term is added).

Simplified / chosen here: ``iterations`` 10 and ``smooth`` 1 (the reference code's smoothing);
``iterations`` should reach the largest half-thickness of the structures (in pixels), otherwise
their centres never enter the skeleton. Our lesions are blobs rather than tubes, which is the
benchmark's question: does a connectivity prior help there too?
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dkbench.losses import foreground_probabilities, foreground_targets, soft_cldice_loss
from dkbench.strategies.base import SEGMENTATION_TASKS, StepContext, Strategy
from dkbench.strategies.options import NonNegative, NonNegativeInt, Positive, StrategyOptions
from dkbench.strategies.registry import register_strategy


@register_strategy("topology_loss")
class TopologyLoss(Strategy):
    name = "topology_loss"
    family = "G"
    knowledge = "connectivity, clDice (training)"
    requires = frozenset()  # the segmentation label is the mask
    tasks = SEGMENTATION_TASKS
    citation = ("clDice: Shit S., Paetzold J.C., Sekuboyina A., Ezhov I., Unger A., Zhylka A., Pluim J.P.W., "
                "Bauer U., Menze B.H., clDice - a novel topology-preserving loss function for tubular structure "
                "segmentation, CVPR 2021, pp. 16560-16569")

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: weight of (1 - soft clDice), per image, mean over foreground classes
        weight: NonNegative = 0.5
        #: soft-skeleton erosion rounds: must reach the structures' half-thickness (px)
        iterations: NonNegativeInt = 10
        #: added to clDice's numerators and denominators (reference code's value)
        smooth: Positive = 1.0  # > 0: 0 would divide 0 by 0 on an empty skeleton

    def cldice_loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """(B,) 1 − soft clDice of the prediction against the mask."""
        num_classes = max(int(logits.shape[1]), 2)
        return soft_cldice_loss(foreground_probabilities(logits), foreground_targets(label, num_classes),
                                iterations=self.options.iterations, smooth=self.options.smooth)

    def loss_terms(self, per_sample_loss: torch.Tensor, outputs: dict, batch: dict,
                   step: StepContext) -> dict[str, torch.Tensor]:
        cl = self.cldice_loss(outputs["logits"], batch["label"]).mean()
        return {"task": per_sample_loss.mean(), "cldice": self.options.weight * cl.to(per_sample_loss.dtype)}
