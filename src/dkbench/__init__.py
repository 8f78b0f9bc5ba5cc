"""dkbench."""
