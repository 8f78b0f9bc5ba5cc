"""Data: readers (one per dataset family), saved splits, the in-memory DataModule."""
