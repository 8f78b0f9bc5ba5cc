"""Lightning modules per task; they call strategy hooks and never branch on strategy names."""

from dkbench.models.classification import ClassificationModule

__all__ = ["ClassificationModule"]
