"""Batched TPE against random sampling, on the cheap real objective.

    .venv/bin/python benchmarks/bench_sampler.py [--trials 100] [--seeds 5] [--batches 10,25,50]

zipnet asks a batch of trials at once and trains them as one population. With TPE, every
trial asked while fewer than `n_startup_trials` are complete is drawn at random, and the
trials of one batch are asked before any of them is told; Optuna's constant liar counts the
batch's RUNNING trials as poor results so that a batch spreads out. This measures what
that costs: the best test error after N trials, over several sampler seeds, for batch sizes
against random sampling. The objective is the real one, made cheap: paper_open_choices'
space on 1,000 training digits, 3 passes.

It also checks the liar: a batch asked after the start-up trials, with constant_liar on and
off, and the spread of its learning rates.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from zipnet import config as checks
from zipnet.sweeps.study import from_sweeper
from zipnet.sweeps.sweep import Sweep

SPACE = {
    "model.init": "choice(sqrt, linear)",
    "loss.mse": "choice(mean, sum, half_sum)",
    "targets": "choice(pm1.0, pm0.8, pm0.6)",
    "optim.lr": "tag(log, interval(0.001, 0.3))",
}
FIXED = [
    "data.n_train=1000",
    "data.n_test=1000",
    "trainer.passes=3",
    "tracking.enabled=false",
    "trainer.progress=off",
    "trainer.threads=0",
]


def sweep(folder: Path, name: str, sampler: dict, batch: int, trials: int) -> list[float]:
    """Run one study; the best value after each trial number (in trial order)."""
    from zipnet.cli.sweep import local_launch

    settings = {
        "study_name": name,
        "storage": f"sqlite:///{folder}/optuna.db",
        "n_trials": trials,
        "batch": batch,
        "sampler": sampler,
        "pruner": {"name": "none"},
        "params": SPACE,
        "max_failure_rate": 1.0,
    }
    spec = from_sweeper(settings, FIXED)
    with checks.Composer() as composer:
        Sweep(spec, local_launch(composer, log=None), composer, log=lambda line: None).run()
    study = optuna.load_study(study_name=name, storage=settings["storage"])
    best, out = float("inf"), []
    for t in sorted(study.get_trials(), key=lambda t: t.number):
        if t.value is not None:
            best = min(best, t.value)
        out.append(best)
    return out


def liar_spread(seed: int) -> tuple[float, float]:
    """The spread (std of log10 lr) of 16 trials asked at once after 10 complete ones, with
    the liar off and on, on a 1-d objective with its optimum at lr = 0.03."""
    import math

    spreads = []
    for liar in (False, True):
        study = optuna.create_study(
            sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=liar, n_startup_trials=10)
        )
        dist = {"lr": optuna.distributions.FloatDistribution(1e-3, 0.3, log=True)}
        for _ in range(10):
            t = study.ask(dist)
            study.tell(t, (math.log10(t.params["lr"]) - math.log10(0.03)) ** 2)
        batch = [study.ask(dist) for _ in range(16)]  # asked together, none told yet
        spreads.append(statistics.pstdev(math.log10(t.params["lr"]) for t in batch))
    return spreads[0], spreads[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batches", default="10,25,50")
    parser.add_argument("--startup", type=int, default=10, help="TPE's n_startup_trials")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    print("liar check: std of log10(lr) over a batch of 16 asked after 10 complete trials")
    for seed in range(3):
        off, on = liar_spread(seed)
        print(f"  seed {seed}: constant_liar off {off:.3f}, on {on:.3f}")

    checkpoints = [n for n in (20, 50, args.trials) if n <= args.trials]
    rows = [("random", {"name": "random"}, max(map(int, args.batches.split(","))))]
    for batch in map(int, args.batches.split(",")):
        rows.append(
            (f"tpe batch {batch}", {"name": "tpe", "n_startup_trials": args.startup, "multivariate": True}, batch)
        )
    print(
        f"\nbest test error (%) after N trials, mean over {args.seeds} sampler seeds (min-max); "
        f"TPE n_startup_trials={args.startup}"
    )
    print(f"{'sampler':<16}" + "".join(f"{f'N={n}':>22}" for n in checkpoints) + f"{'s/study':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, sampler, batch in rows:
            curves, seconds = [], []
            for seed in range(args.seeds):
                started = time.perf_counter()
                name = f"{label.replace(' ', '_')}_{seed}"
                curves.append(sweep(Path(tmp), name, {**sampler, "seed": seed}, batch, args.trials))
                seconds.append(time.perf_counter() - started)
            cells = []
            for n in checkpoints:
                values = [c[n - 1] for c in curves]
                cells.append(f"{statistics.mean(values):6.2f} ({min(values):.2f}-{max(values):.2f})")
            print(f"{label:<16}" + "".join(f"{c:>22}" for c in cells) + f"{statistics.mean(seconds):10.1f}", flush=True)


if __name__ == "__main__":
    main()
