"""One training pass: the reference autograd loop against the engine at K=1, same data, same process.

    .venv/bin/python benchmarks/bench_train.py [--n-train 7291] [--threads 1]

Prints steps/s for each and the ratios (target: the engine at K=1 >= 5x the reference). The engine
runs twice: with torch ops, and as a single run does by default (the kernel's one-member path).
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from zipnet.data import load_digits
from zipnet.engine import Member, Population, input_patches
from zipnet.kernel import padded_inputs
from zipnet.net import connection_table
from zipnet.reference import Net1989, train_pass
from zipnet.train import CONF_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=7291)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data_cfg = OmegaConf.load(CONF_DIR / "data" / "embedded.yaml")
    data_cfg.n_train, data_cfg.n_test = args.n_train, 10
    digits = load_digits(data_cfg)
    x, y, n = digits.train_x, digits.train_y, len(digits.train_y)

    member = Member()
    pop = Population([member])
    targets = pop.targets[0, y]
    ref = Net1989(pop.member_params(0), connection_table(member.table), member.activation)

    started = time.perf_counter()
    train_pass(ref, x, targets, lr=member.optim.lr, mse=member.mse)
    ref_s = time.perf_counter() - started

    patches, order, inputs = input_patches(x), y.tolist(), padded_inputs(x)
    seconds = {}
    for backend in ("torch", "c"):
        pop = Population([member], backend=backend)
        pop.optim.start_pass(0)
        with torch.no_grad():
            started = time.perf_counter()
            pop.train_pass(patches, order, inputs)
            seconds[backend] = time.perf_counter() - started

    print(f"one pass over {n} digits, torch threads {args.threads}")
    print(f"reference autograd loop: {ref_s:7.2f} s  {n / ref_s:8.0f} steps/s")
    for backend, name in (("torch", "engine K=1, torch ops "), ("c", "engine K=1, kernel    ")):
        print(
            f"{name}: {seconds[backend]:7.2f} s  {n / seconds[backend]:8.0f} steps/s  "
            f"{ref_s / seconds[backend]:6.2f}x the reference (target >= 5x)"
        )


if __name__ == "__main__":
    main()
