"""Population training against the seed's algorithm, in one process on the same data.

    .venv/bin/python benchmarks/bench_population.py [--ks 1,2,4,8,16,32,64,128,256] [--passes 1]
    .venv/bin/python benchmarks/bench_population.py --device cuda --ks 1,16,256,4096

Times (1) the reference per-example autograd loop (zipnet/reference.py), (2) a single run on
torch ops, and (3) engine.train at each K with the default backend (the compiled kernel on the
CPU; torch ops on CUDA), each over `--passes` passes: training plus the per-pass evaluation of
train and test, as the engine reports them (`seconds`, `eval_seconds`). A 23-pass trial is
extrapolated from those per-pass times. Prints seconds per pass, the evaluation's share,
seconds per trial (amortised over K), trials per hour, peak RSS, ratios to (1), and the targets.
The CPU columns count the processor time of every thread (time.process_time): on a machine
shared with other work they show the cost of the computation itself, where the wall-clock
ratios move with the load.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
from omegaconf import OmegaConf

from zipnet.cli.train import CONF_DIR
from zipnet.data import load_digits
from zipnet.engine import Member, Population, kernel, train
from zipnet.net import InitSpec, connection_table
from zipnet.optim import OptimSpec
from zipnet.reference import Net1989, train_pass

PASSES_PER_TRIAL = 23


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def kernel_threads(threads: int) -> int:
    return threads or os.cpu_count() or 1


def machine(device: str, threads: int) -> str:
    if device.startswith("cuda"):
        return f"device: {torch.cuda.get_device_name(device)}; host CPU {kernel.cpu_model()}"
    found = kernel.load()
    build = f"kernel build {found.build}" if found else "no kernel (torch ops)"
    return (
        f"CPU: {kernel.cpu_model()}; {kernel.vector_width(found)}-bit vectors; {os.cpu_count()} cores, "
        f"kernel threads {kernel_threads(threads)}; {build}"
    )


def time_reference(digits, passes: int) -> tuple[float, float, float]:
    member = Member()
    pop = Population([member])
    model = Net1989(pop.member_params(0), connection_table(member.table), member.activation)
    targets = pop.targets[0, digits.train_y]
    train_s = eval_s = 0.0
    cpu = time.process_time()
    for _ in range(passes):
        started = time.perf_counter()
        train_pass(model, digits.train_x, targets, lr=member.optim.lr, mse=member.mse)
        train_s += time.perf_counter() - started
        started = time.perf_counter()
        with torch.no_grad():
            for x in (digits.train_x, digits.test_x):
                model(x)
        eval_s += time.perf_counter() - started
    return train_s / passes, eval_s / passes, (time.process_time() - cpu) / passes


def time_engine(
    digits, K: int, passes: int, backend: str, device: str, threads: int
) -> tuple[float, float, float, str]:
    """Per-pass training and evaluation seconds of K members trained together, and CPU seconds per pass."""
    members = [Member(init=InitSpec(seed=k), optim=OptimSpec(lr=0.01 + 0.04 * k / max(K - 1, 1))) for k in range(K)]
    cpu = time.process_time()
    results = train(members, digits, passes=passes, device=device, log=None, backend=backend, threads=threads)
    cpu = (time.process_time() - cpu) / passes
    rows = results[0].history
    train_s = sum(row["seconds"] for row in rows) / len(rows)
    eval_s = sum(row["eval_seconds"] for row in rows) / len(rows)
    return train_s, eval_s, cpu, results[0].backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="1,2,4,8,16,32,64,128,256")
    parser.add_argument("--passes", type=int, default=1, help="passes timed per configuration")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU path (torch ops)")
    parser.add_argument("--threads", type=int, default=0, help="kernel threads (0: every core)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads for (1) and (2)")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    data_cfg = OmegaConf.load(CONF_DIR / "data" / "embedded.yaml")
    digits = load_digits(data_cfg)
    print(machine(args.device, args.threads))
    print(
        f"data: {len(digits.train_y)} train / {len(digits.test_y)} test; torch threads {args.torch_threads} for "
        f"(1) and (2); {args.passes} timed pass(es) each, trials extrapolated to {PASSES_PER_TRIAL} passes"
    )
    header = (
        f"{'run':<24}{'backend':>8}{'train s/pass':>14}{'eval s/pass':>13}{'eval %':>8}{'s/trial':>10}"
        f"{'trials/h':>11}{'x (1)':>9}{'CPU s/trial':>13}{'x (1) CPU':>11}{'peak RSS MB':>13}"
    )
    print(header)
    rows: dict[str, tuple[float, float, float]] = {}

    def report(name, backend, train_s, eval_s, cpu, K):
        per_trial, cpu_trial = PASSES_PER_TRIAL * (train_s + eval_s) / K, PASSES_PER_TRIAL * cpu / K
        rows[name] = (per_trial, eval_s / (train_s + eval_s), cpu_trial)
        ratio, cpu_ratio = rows["reference"][0] / per_trial, rows["reference"][2] / cpu_trial
        print(
            f"{name if name != 'reference' else '(1) reference autograd':<24}{backend:>8}{train_s:>14.3f}"
            f"{eval_s:>13.3f}{100 * eval_s / (train_s + eval_s):>8.1f}{per_trial:>10.3f}{3600 / per_trial:>11.0f}"
            f"{ratio:>9.1f}{cpu_trial:>13.3f}{cpu_ratio:>11.1f}{peak_rss_mb():>13.0f}",
            flush=True,
        )

    train_s, eval_s, cpu = time_reference(digits, args.passes)
    report("reference", "torch", train_s, eval_s, cpu, 1)
    if args.device == "cpu":
        train_s, eval_s, cpu, used = time_engine(digits, 1, args.passes, "torch", "cpu", args.threads)
        report("(2) engine K=1, torch", used, train_s, eval_s, cpu, 1)
    ks = [int(k) for k in args.ks.split(",")]
    for K in ks:
        train_s, eval_s, cpu, used = time_engine(digits, K, args.passes, "auto", args.device, args.threads)
        report(f"(3) engine K={K}", used, train_s, eval_s, cpu, K)
    ref, ref_cpu = rows["reference"][0], rows["reference"][2]
    engine = {K: rows[f"(3) engine K={K}"] for K in ks}
    best = min(engine, key=lambda K: engine[K][0])
    print(
        f"best: K={best}, {engine[best][0]:.3f} s per {PASSES_PER_TRIAL}-pass trial, "
        f"{ref / engine[best][0]:.0f}x the trials per hour of (1) (target >= 300x); {ref_cpu / engine[best][2]:.0f}x "
        f"fewer CPU seconds per trial (the engine on {kernel_threads(args.threads)} threads, (1) on 1)"
    )
    for K in (1, 64):
        if K in engine:
            print(
                f"K={K}: {ref / engine[K][0]:.1f}x (1); evaluation {100 * engine[K][1]:.0f}% of the trial's time "
                f"(target <= 20%)"
            )
    if 256 in engine:
        print(f"peak RSS after K=256: {peak_rss_mb():.0f} MB (target <= 1024 MB)")


if __name__ == "__main__":
    main()
