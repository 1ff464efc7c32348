"""A single run: the reference autograd loop against engine.train at K=1, same data, same process.

    .venv/bin/python benchmarks/bench_train.py [--passes 23] [--ref-passes 1]

Times one training pass of the reference loop (zipnet/reference.py) plus its evaluation of train
and test, and extrapolates it to a whole run; then trains a whole run with engine.train on the
default backend (the compiled kernel's one-member path) and on torch ops (one pass, extrapolated).
Prints steps/s, seconds per run, the evaluation's share, and the ratios (target: a single
23-pass run >= 60x the reference loop).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from omegaconf import OmegaConf

from zipnet.cli.train import CONF_DIR
from zipnet.data import load_digits
from zipnet.engine import Member, Population, kernel, train
from zipnet.net import connection_table
from zipnet.reference import Net1989, train_pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=23, help="passes of the engine's run")
    parser.add_argument("--ref-passes", type=int, default=1, help="passes of the reference loop timed")
    parser.add_argument("--threads", type=int, default=0, help="kernel threads (0: every core)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data_cfg = OmegaConf.load(CONF_DIR / "data" / "embedded.yaml")
    digits = load_digits(data_cfg)
    n = len(digits.train_y)
    found = kernel.load()
    print(
        f"CPU: {kernel.cpu_model()}; {kernel.vector_width(found)}-bit vectors; {os.cpu_count()} cores; "
        f"{'kernel build ' + found.build if found else 'no kernel'}; torch threads 1"
    )

    member = Member()
    pop = Population([member])
    model = Net1989(pop.member_params(0), connection_table(member.table), member.activation)
    targets = pop.targets[0, digits.train_y]
    ref_train = ref_eval = 0.0
    ref_cpu = time.process_time()
    for _ in range(args.ref_passes):
        started = time.perf_counter()
        train_pass(model, digits.train_x, targets, lr=member.optim.lr, mse=member.mse)
        ref_train += time.perf_counter() - started
        started = time.perf_counter()
        with torch.no_grad():
            model(digits.train_x), model(digits.test_x)
        ref_eval += time.perf_counter() - started
    ref_train, ref_eval = ref_train / args.ref_passes, ref_eval / args.ref_passes
    ref_run = args.passes * (ref_train + ref_eval)
    ref_cpu = args.passes * (time.process_time() - ref_cpu) / args.ref_passes

    started, cpu = time.perf_counter(), time.process_time()
    (fast,) = train([member], digits, passes=args.passes, log=None, threads=args.threads)
    fast_run, fast_cpu = time.perf_counter() - started, time.process_time() - cpu
    fast_train = sum(r["seconds"] for r in fast.history)
    fast_eval = sum(r["eval_seconds"] for r in fast.history)
    (slow,) = train([member], digits, passes=1, log=None, backend="torch")
    slow_run = args.passes * (slow.history[0]["seconds"] + slow.history[0]["eval_seconds"])

    print(f"a {args.passes}-pass run over {n} digits (evaluating train and test after every pass)")
    print(
        f"reference autograd loop : {ref_run:8.1f} s  {n / ref_train:8.0f} steps/s  (extrapolated from "
        f"{args.ref_passes} pass)"
    )
    print(
        f"engine K=1, torch ops   : {slow_run:8.1f} s  {n / slow.history[0]['seconds']:8.0f} steps/s  "
        f"{ref_run / slow_run:6.1f}x the reference (extrapolated from 1 pass)"
    )
    label = f"engine K=1, {fast.backend} (default)"
    print(
        f"{label:<24}: {fast_run:8.2f} s  {n * args.passes / fast_train:8.0f} steps/s  "
        f"{ref_run / fast_run:6.1f}x the reference (target >= 60x); evaluation "
        f"{100 * fast_eval / (fast_train + fast_eval):.0f}% of the run (target <= 20%)"
    )
    print(
        f"CPU seconds (every thread): reference {ref_cpu:.1f} s, engine {fast_cpu:.2f} s "
        f"({ref_cpu / fast_cpu:.0f}x fewer)"
    )


if __name__ == "__main__":
    main()
