"""Adds the study definitions (top-level sweeps/) to Hydra's search path: `sweeps=NAME`."""
