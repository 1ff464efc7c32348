"""Two objectives: the squared distances from (x, y) to the points (-1, 0) and (1, 0). No point
is nearest to both; the best trade-offs lie on the segment between them (y = 0, -1 <= x <= 1),
and the study keeps the trials that no other trial beats on both (`study.best_trials`).

    python examples/optuna_sweeper/multi_objective.py -m

The task returns one value per entry of `hydra.sweeper.direction`. The same files run under
hydra-optuna-sweeper with `zipnet_optuna` changed to `optuna` in conf/multi_objective.yaml.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="multi_objective")
def two_points(cfg: DictConfig) -> tuple[float, float]:
    x, y = float(cfg.x), float(cfg.y)
    return (x + 1) ** 2 + y**2, (x - 1) ** 2 + y**2


if __name__ == "__main__":
    two_points()
