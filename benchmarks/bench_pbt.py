"""Population-based training against plain TPE and random search at the same member-pass budget.

    .venv/bin/python benchmarks/bench_pbt.py [--members 16] [--passes 6] [--seeds 5] [--usps ../shared/data/usps.h5]

Every study trains `members` x `passes` member-passes of the paper's net on the cheap real
objective (1,000 embedded training digits, 1,000 test, SGD over optim.lr in [0.001, 0.3] log
and the init formula; with `--usps`, the real USPS digits instead: 7,291 training, 2,007 test):
- random: one batch of `members`, random search;
- TPE: `members` trials in batches of 4, so TPE sees complete trials after its start-up;
- PBT: one batch of `members` drawn at random, every `--interval` passes the bottom quarter
  copying the top quarter with its lr times 0.8 or 1.25 (a quarter of the time drawn afresh).
Printed per row: the best final test error (%) of the study, mean (min-max) over sampler seeds,
the mean over the study's members, and the seconds per study. All three select on the test
error they report (as the sweeps here do), so the figures compare the searches, not the nets.
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

SPACE = {"optim.lr": "tag(log, interval(0.001, 0.3))", "model.init": "choice(sqrt, linear)"}


def study(folder: Path, name: str, passes: int, trials: int, batch: int, sampler: dict, scheduler, data: list[str]):
    """One study to its end; (best final value, mean final value)."""
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
        "scheduler": scheduler,
    }
    fixed = [*data, f"trainer.passes={passes}", "trainer.backend=c"]
    fixed += ["tracking.enabled=false", "trainer.progress=off", "trainer.threads=0"]
    spec = from_sweeper(settings, fixed)
    with checks.Composer() as composer:
        Sweep(spec, local_launch(composer, log=None), composer, log=lambda line: None).run()
    values = [t.value for t in optuna.load_study(study_name=name, storage=settings["storage"]).trials]
    values = [v for v in values if v is not None]
    return min(values), statistics.mean(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--passes", type=int, default=6)
    parser.add_argument("--interval", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--usps", type=Path, help="usps.h5: the real USPS digits instead of 1,000 embedded ones")
    args = parser.parse_args()
    data = ["data.n_train=1000", "data.n_test=1000"]
    if args.usps is not None:
        data = ["data=usps", f"data.path={args.usps.resolve()}", "data.cache_dir=null"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pbt = {"name": "pbt", "interval": args.interval, "quantile": 0.25, "perturb": {"optim.lr": [0.8, 1.25]}}
    rows = [
        ("random", args.members, {"name": "random"}, None),
        ("TPE, batch 4", 4, {"name": "tpe", "n_startup_trials": 4}, None),
        (f"PBT, every {args.interval}", args.members, {"name": "random"}, {**pbt, "resample_probability": 0.25}),
    ]
    budget = args.members * args.passes
    digits = "USPS (7291 train, 2007 test)" if args.usps else "embedded (1000 train, 1000 test)"
    print(
        f"{budget} member-passes per study ({args.members} members x {args.passes} passes), "
        f"{args.seeds} seeds, {digits}"
    )
    print(f"{'search':<16}{'best test error':>22}{'mean over members':>22}{'s/study':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, batch, sampler, scheduler in rows:
            best, mean, seconds = [], [], []
            for seed in range(args.seeds):
                started = time.perf_counter()
                name = f"{label.split(',')[0]}_{seed}"
                found = study(
                    Path(tmp), name, args.passes, args.members, batch, {**sampler, "seed": seed}, scheduler, data
                )
                best.append(found[0])
                mean.append(found[1])
                seconds.append(time.perf_counter() - started)
            cells = [f"{statistics.mean(v):6.2f} ({min(v):.2f}-{max(v):.2f})" for v in (best, mean)]
            print(f"{label:<16}" + "".join(f"{c:>22}" for c in cells) + f"{statistics.mean(seconds):10.1f}", flush=True)


if __name__ == "__main__":
    main()
