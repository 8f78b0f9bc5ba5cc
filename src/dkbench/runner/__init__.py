"""Runs: one config → one run folder (train), and grids of them (sweep)."""
