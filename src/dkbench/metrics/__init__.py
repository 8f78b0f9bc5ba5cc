"""Task → metric sets (torchmetrics), configured to equal the published evaluators."""
