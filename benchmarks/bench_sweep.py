"""A complete tracked sweep, end to end, against the reference loop in the same process run.

    .venv/bin/python benchmarks/bench_sweep.py [--trials 48] [--passes 23]

The sweep is the real command, `zipnet-train -m` with hydra/sweeper=zipnet_optuna and
hydra/launcher=population, in a fresh temp folder with sqlite stores (MLflow and Optuna):
48 trials asked as one batch, 23 passes, data.seed over three values, no pruning, every
trial logged to MLflow with its figures and model. Its wall time (process start to exit)
gives trials per hour, compared with the reference per-example autograd loop (the seed's
algorithm, zipnet/reference.py) timed here on one pass and extrapolated to a 23-pass trial.
The sweep prints where its time went (training, evaluation, tracking, optuna, other), and
this prints that split.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from zipnet.config import CONF_DIR
from zipnet.data import load_digits

sys.path.insert(0, str(Path(__file__).parent))
from bench_population import machine, time_reference  # noqa: E402  (the same timing as bench_population)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--passes", type=int, default=23)
    args = parser.parse_args()
    torch.set_num_threads(1)
    digits = load_digits(OmegaConf.load(CONF_DIR / "data" / "embedded.yaml"))
    print(machine("cpu", 0))
    train_s, eval_s, _ = time_reference(digits, 1)
    reference = args.passes * (train_s + eval_s)
    print(
        f"reference autograd loop: {train_s:.2f} s train + {eval_s:.2f} s eval per pass -> {reference:.1f} s per "
        f"{args.passes}-pass trial, {3600 / reference:.0f} trials/h",
        flush=True,
    )

    command = [
        sys.executable,
        "-m",
        "zipnet.cli.train",
        "-m",
        "hydra/sweeper=zipnet_optuna",
        "hydra/launcher=population",
        "hydra.sweeper.study_name=bench",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.batch={args.trials}",
        "hydra.sweeper.pruner={name:none}",
        "hydra.sweeper.sampler={name:random,seed:0}",
        f"trainer.passes={args.passes}",
        "trainer.threads=0",
        "model.init=choice(sqrt,linear)",
        "loss.mse=choice(mean,sum,half_sum)",
        "optim.lr=tag(log,interval(0.005,0.05))",
        "data.seed=choice(0,1,2)",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        env = {**os.environ}
        env.pop("MLFLOW_TRACKING_URI", None)
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        print(out[-4000:])
        raise SystemExit(f"the sweep failed (exit {proc.returncode})")
    per_trial = wall / args.trials
    print(
        f"sweep: {args.trials} trials x {args.passes} passes in {wall:.1f} s wall (process start to exit) -> "
        f"{per_trial:.2f} s per trial, {3600 / per_trial:.0f} trials/h, {reference / per_trial:.0f}x the reference "
        f"loop (target >= 150x)"
    )
    split = re.findall(r"this worker: \d+ trials in ([\d.]+) s: (.*)", out)
    populations = re.findall(r"population \d+/\d+: \d+ members", out)
    print(f"  populations: {', '.join(populations) or 'one'}")
    if split:
        inside, parts = split[-1]
        print(f"  inside the sweeper ({inside} s): {parts}")
        print(f"  outside (interpreter start, imports, Hydra, MLflow client): {wall - float(inside):.1f} s")


if __name__ == "__main__":
    main()
