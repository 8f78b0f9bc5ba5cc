"""Hydra sweeper plugin `hydra/sweeper=dkbench_suite` (discovered through `hydra_plugins`)."""
