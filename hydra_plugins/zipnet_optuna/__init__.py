"""zipnet's Hydra sweeper: hydra/sweeper=zipnet_optuna (Optuna 5, pruning per pass, populations)."""
