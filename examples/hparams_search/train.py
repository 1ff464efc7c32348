"""A tiny training run in lightning-hydra-template's shape, for its `hparams_search` pattern:
fit the line y = 2x - 1 to noisy points by minibatch SGD, and return the metric the config names.

    python examples/hparams_search/train.py                                  # one run
    python examples/hparams_search/train.py hparams_search=line_optuna       # a study (no -m: the file sets MULTIRUN)

Nothing here knows the sweeper: the value a sweep optimises is `optimized_metric`, named in
configs/hparams_search/line_optuna.yaml, and train.py returns that metric.
"""

import random

import hydra
from omegaconf import DictConfig

SLOPE, INTERCEPT = 2.0, -1.0  # the line the points are drawn about


def points(n: int, noise: float, rng: random.Random) -> list[tuple[float, float]]:
    xs = [rng.uniform(-1.0, 1.0) for _ in range(n)]
    return [(x, SLOPE * x + INTERCEPT + rng.gauss(0.0, noise)) for x in xs]


def mse(a: float, b: float, data: list[tuple[float, float]]) -> float:
    return sum((a * x + b - y) ** 2 for x, y in data) / len(data)


def fit(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate; every draw comes from generators seeded by the config, so a run's
    metrics follow from its config alone."""
    train = points(cfg.data.n_train, cfg.data.noise, random.Random(cfg.data.seed))
    val = points(cfg.data.n_val, cfg.data.noise, random.Random(cfg.data.seed + 1))
    order = random.Random(cfg.trainer.seed)
    a = b = 0.0
    for _ in range(cfg.trainer.steps):
        batch = order.sample(train, cfg.trainer.batch_size)
        grad_a = sum(2 * (a * x + b - y) * x for x, y in batch) / len(batch)
        grad_b = sum(2 * (a * x + b - y) for x, y in batch) / len(batch)
        a, b = a - cfg.optim.lr * grad_a, b - cfg.optim.lr * grad_b
    return {"train/loss": mse(a, b, train), "val/loss": mse(a, b, val), "model/slope": a}


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = fit(cfg)
    print(" ".join(f"{k}={v:.6f}" for k, v in metrics.items()))
    if cfg.optimized_metric is None:
        return None
    if cfg.optimized_metric not in metrics:
        measured = ", ".join(metrics)
        raise ValueError(f"optimized_metric: {cfg.optimized_metric!r} is not measured; choose one of {measured}")
    return metrics[cfg.optimized_metric]


if __name__ == "__main__":
    main()
