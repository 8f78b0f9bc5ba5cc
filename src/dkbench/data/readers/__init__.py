"""Dataset readers: one module per dataset family; each registers itself in DATASETS."""
