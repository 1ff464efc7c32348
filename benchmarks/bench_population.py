"""Population training against the seed's algorithm, in one process on the same data.

    .venv/bin/python benchmarks/bench_population.py [--ks 8,16,32,64,128,256] [--passes 1]

Measures (1) the reference per-example autograd loop, (2) the engine at K=1 (torch ops, and
the default: the kernel's one-member path), (3) the engine at several K. Each is timed over
`--passes` training passes plus the per-pass evaluation of train and test; a 23-pass trial is
extrapolated from those per-pass times. Prints seconds per pass, seconds per trial (amortised
over K), trials per hour, peak RSS, and ratios to (1).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
from omegaconf import OmegaConf

from zipnet.data import load_digits
from zipnet.engine import Member, Population, input_patches
from zipnet.kernel import padded_inputs
from zipnet.net import InitSpec, connection_table
from zipnet.optim import OptimSpec
from zipnet.reference import Net1989, train_pass
from zipnet.train import CONF_DIR

PASSES_PER_TRIAL = 23


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_reference(digits, passes: int) -> tuple[float, float]:
    member = Member()
    pop = Population([member], backend="torch")
    model = Net1989(pop.member_params(0), connection_table(member.table), member.activation)
    targets = pop.targets[0, digits.train_y]
    train_s = eval_s = 0.0
    for _ in range(passes):
        started = time.perf_counter()
        train_pass(model, digits.train_x, targets, lr=member.optim.lr, mse=member.mse)
        train_s += time.perf_counter() - started
        started = time.perf_counter()
        with torch.no_grad():
            for x in (digits.train_x, digits.test_x):
                model(x)
        eval_s += time.perf_counter() - started
    return train_s / passes, eval_s / passes


def time_engine(digits, K: int, passes: int, backend: str) -> tuple[float, float, str]:
    members = [Member(init=InitSpec(seed=k), optim=OptimSpec(lr=0.01 + 0.04 * k / max(K - 1, 1))) for k in range(K)]
    pop = Population(members, backend=backend)
    patches, order, inputs = input_patches(digits.train_x), digits.train_y.tolist(), padded_inputs(digits.train_x)
    train_s = eval_s = 0.0
    with torch.no_grad():
        for p in range(passes):
            pop.optim.start_pass(p)
            started = time.perf_counter()
            pop.train_pass(patches, order, inputs)
            train_s += time.perf_counter() - started
            started = time.perf_counter()
            pop.evaluate(digits.train_x, digits.train_y)
            pop.evaluate(digits.test_x, digits.test_y)
            eval_s += time.perf_counter() - started
    used = "c" if pop.kernel is not None else "torch"
    return train_s / passes, eval_s / passes, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="8,16,32,64,128,256")
    parser.add_argument("--passes", type=int, default=1, help="passes timed per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for (1) and (2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_cfg = OmegaConf.load(CONF_DIR / "data" / "embedded.yaml")
    digits = load_digits(data_cfg)
    print(
        f"data: {len(digits.train_y)} train / {len(digits.test_y)} test; {os.cpu_count()} cores; "
        f"torch threads {args.threads} for (1) and (2); {args.passes} timed pass(es) each, "
        "trials extrapolated to 23 passes"
    )
    header = (
        f"{'run':<24}{'backend':>8}{'train s/pass':>14}{'eval s/pass':>13}{'s/trial':>10}{'trials/h':>11}"
        f"{'x (1)':>9}{'peak RSS MB':>13}"
    )
    print(header)
    rows = []

    def report(name, backend, train_s, eval_s, K):
        per_trial = PASSES_PER_TRIAL * (train_s + eval_s) / K
        rows.append(per_trial)
        ratio = rows[0] / per_trial
        print(
            f"{name:<24}{backend:>8}{train_s:>14.3f}{eval_s:>13.3f}{per_trial:>10.2f}{3600 / per_trial:>11.0f}"
            f"{ratio:>9.1f}{peak_rss_mb():>13.0f}",
            flush=True,
        )

    train_s, eval_s = time_reference(digits, args.passes)
    report("(1) reference autograd", "torch", train_s, eval_s, 1)
    train_s, eval_s, used = time_engine(digits, 1, args.passes, "torch")
    report("(2) engine K=1, torch", used, train_s, eval_s, 1)
    train_s, eval_s, used = time_engine(digits, 1, args.passes, "auto")  # what a single run uses
    report("(2) engine K=1", used, train_s, eval_s, 1)
    for K in (int(k) for k in args.ks.split(",")):
        train_s, eval_s, used = time_engine(digits, K, args.passes, "auto")
        report(f"(3) engine K={K}", used, train_s, eval_s, K)
    best = min(rows[3:], default=rows[2])
    print(
        f"best: {best:.2f} s per 23-pass trial, {rows[0] / best:.0f}x the trials per hour of (1); "
        f"engine K=1: {rows[0] / rows[2]:.1f}x (1) (torch ops: {rows[0] / rows[1]:.1f}x)"
    )


if __name__ == "__main__":
    main()
