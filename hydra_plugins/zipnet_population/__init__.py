"""zipnet's Hydra launcher: hydra/launcher=population."""
