"""Asynchronous successive halving (refill: true) against today's batches, on the
paper_open_choices study (sweeps/paper_open_choices.yaml: 100 trials, batches of 25, the median
pruner, TPE), both in this process, one after the other.

    .venv/bin/python benchmarks/bench_refill.py [--trials 100] [--batch 25] [--passes 23] [--n-train 7291]

Batches: a batch's pruned trials leave lanes empty until its last member ends. Refill: each lane
a trial leaves (pruned or finished) takes a newly asked trial at the next pass boundary. Printed
per mode: the wall time, the trials complete and pruned, the member-passes trained, and the best
test error among the first N trials asked, for N at a quarter, half, three quarters and all of them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna
from omegaconf import OmegaConf

from zipnet import config as checks
from zipnet.cli.sweep import local_launch
from zipnet.sweeps.study import from_sweeper
from zipnet.sweeps.sweep import Sweep

STUDY = Path(__file__).resolve().parents[1] / "sweeps" / "paper_open_choices.yaml"


def fixed_overrides(args) -> list[str]:
    fixed = [f"data.n_train={args.n_train}", f"data.n_test={args.n_test}", f"trainer.passes={args.passes}"]
    return fixed + ["tracking.enabled=false", "trainer.progress=off", "trainer.threads=0"]


def warm_up(args) -> None:
    """Each data.seed's digits into the data cache and the kernel built, so neither mode pays for them."""
    from zipnet.data import load_digits
    from zipnet.engine import kernel

    kernel.load()
    with checks.Composer() as composer:
        for seed in (0, 1, 2):
            load_digits(composer.compose(fixed_overrides(args) + [f"data.seed={seed}"]).data)


def study(folder: Path, refill: bool, args) -> dict:
    """One study to its end in a store of its own; its figures."""
    settings = OmegaConf.to_container(OmegaConf.load(STUDY).hydra.sweeper, resolve=True)
    name = "refill" if refill else "batches"
    settings.update(
        study_name=name,
        storage=f"sqlite:///{folder}/{name}.db",
        n_trials=args.trials,
        batch=args.batch,
        refill=refill,
        max_failure_rate=1.0,
    )
    spec = from_sweeper(settings, fixed_overrides(args))
    lines: list[str] = []
    started = time.perf_counter()
    with checks.Composer() as composer:
        Sweep(spec, local_launch(composer, log=lines.append), composer, log=lines.append).run()
    seconds = time.perf_counter() - started
    trials = optuna.load_study(study_name=name, storage=settings["storage"]).trials
    states = [t.state.name for t in trials]
    best = {}
    for n in sorted({max(1, args.trials * q // 4) for q in (1, 2, 3, 4)}):
        values = [t.value for t in trials if t.number < n and t.value is not None]
        best[n] = min(values) if values else float("nan")
    return {
        "seconds": seconds,
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "member_passes": sum(len(t.intermediate_values) for t in trials),
        "best": best,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--passes", type=int, default=23)
    parser.add_argument("--n-train", type=int, default=7291)
    parser.add_argument("--n-test", type=int, default=2007)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"paper_open_choices: {args.trials} trials, batch {args.batch}, {args.passes} passes, "
        f"{args.n_train} train / {args.n_test} test digits"
    )
    warm_up(args)
    with tempfile.TemporaryDirectory() as tmp:
        found = {label: study(Path(tmp), refill, args) for label, refill in (("batches", False), ("refill", True))}
    ns = list(found["batches"]["best"])
    head = f"{'mode':<9}{'wall s':>8}{'complete':>10}{'pruned':>8}{'member-passes':>15}"
    print(head + "".join(f"{'best@' + str(n):>10}" for n in ns))
    for label, f in found.items():
        row = f"{label:<9}{f['seconds']:8.1f}{f['complete']:10d}{f['pruned']:8d}{f['member_passes']:15d}"
        print(row + "".join(f"{f['best'][n]:9.2f}%" for n in ns), flush=True)


if __name__ == "__main__":
    main()
