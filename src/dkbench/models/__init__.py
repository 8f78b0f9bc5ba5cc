"""Lightning modules per task; they call strategy hooks and never branch on strategy names."""

from dkbench.models.classification import ClassificationModule
from dkbench.models.detection import DetectionModule
from dkbench.models.segmentation import SegmentationModule

__all__ = ["ClassificationModule", "DetectionModule", "SegmentationModule"]
