"""One objective: the lowest point of a bowl, f(x, y) = x^2 + y^2, at (0, 0).

    python examples/optuna_sweeper/sphere.py -m
    python examples/optuna_sweeper/sphere.py -m hydra.sweeper.storage=sqlite:///sphere.db hydra.sweeper.n_trials=40

The same files run under hydra-optuna-sweeper with `zipnet_optuna` changed to `optuna` in
conf/sphere.yaml; what differs is written there.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="sphere")
def sphere(cfg: DictConfig) -> float:
    return float(cfg.x) ** 2 + float(cfg.y) ** 2  # the trial's value: what the sweeper minimises


if __name__ == "__main__":
    sphere()
