"""What a trial's bookkeeping costs beside its training: the small-trial study, end to end.

    .venv/bin/python benchmarks/bench_harness.py                    # 400 trials in batches of 100
    .venv/bin/python benchmarks/bench_harness.py --trials 2000      # does the cost grow with the study?

The study is the real command, in a fresh temp folder with sqlite stores (MLflow and Optuna):

    zipnet-train -m sweeps=paper_open_choices hydra.sweeper.n_trials=400 hydra.sweeper.batch=100 \
        data.n_train=500 data.n_test=300 trainer.passes=3

Small trials (a few milliseconds of training each in a population of 100) make everything
around training visible: Hydra's per-job setup, Optuna's asks, reports, pruning and tells,
MLflow's runs. The sweeper prints where each batch's time went; this prints them per batch,
the split per trial, and the two targets: the whole process (start to exit) within 5x the
study's training plus evaluation, and the last batch's bookkeeping within 1.25x the first's.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

KINDS = ("training", "evaluation", "hydra", "optuna", "tracking", "output")
BATCH = re.compile(r"batch of (\d+) done in ([\d.]+) s: (.*)")
WORKER = re.compile(r"this worker: (\d+) trials in ([\d.]+) s: (.*)")
WRITER = re.compile(r"MLflow writer: ([\d.]+) s busy")


def parts(text: str) -> dict[str, float]:
    return {kind: float(s) for kind, s in re.findall(r"(\w+) ([\d.]+) s", text)}


def command(args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "zipnet.cli.train",
        "-m",
        "sweeps=paper_open_choices",
        f"hydra.sweeper.study_name=harness-{args.trials}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.batch={args.batch}",
        f"data.n_train={args.n_train}",
        f"data.n_test={args.n_test}",
        f"trainer.passes={args.passes}",
        *args.overrides,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--n-train", type=int, default=500)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="more zipnet-train overrides")
    args = parser.parse_args()
    cmd = command(args)
    print("command: zipnet-train " + " ".join(cmd[4:]))
    with tempfile.TemporaryDirectory(prefix="bench-harness-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        print(out[-4000:])
        raise SystemExit(f"the study failed (exit {proc.returncode})")
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)

    batches = [(int(n), float(s), parts(rest)) for n, s, rest in BATCH.findall(out)]
    if not batches:
        print(out[-3000:])
        raise SystemExit("no batch lines in the study's output")
    print(
        f"{'batch':>5} {'trials before':>13} {'wall s':>7} {'train+eval s':>12} {'bookkeeping s':>13} "
        f"{'ms/trial':>8}  " + " ".join(f"{k:>10}" for k in KINDS[2:]) + "   (ms per trial)"
    )
    done = 0
    bookkeeping = []
    for i, (n, seconds, split) in enumerate(batches, start=1):
        compute = split.get("training", 0.0) + split.get("evaluation", 0.0)
        other = seconds - compute
        bookkeeping.append(other / n)
        per_kind = " ".join(f"{1000 * split.get(k, 0.0) / n:10.1f}" for k in KINDS[2:])
        print(f"{i:5d} {done:13d} {seconds:7.1f} {compute:12.2f} {other:13.2f} {1000 * other / n:8.1f}  {per_kind}")
        done += n

    total = {k: sum(b[2].get(k, 0.0) for b in batches) for k in (*KINDS, "other")}
    compute = total["training"] + total["evaluation"]
    worker = WORKER.findall(out)
    inside = float(worker[-1][1]) if worker else sum(b[1] for b in batches)
    writer = WRITER.findall(out)
    trials = done
    print()
    print(
        f"{trials} trials in {wall:.1f} s wall, process start to exit ({trials / wall:.1f} trials/s), "
        f"{cpu:.1f} CPU-s ({1000 * cpu / trials:.1f} ms per trial)"
    )
    print(
        "per trial, ms: "
        + ", ".join(
            f"{k} {1000 * total[k] / trials:.2f}" for k in (*KINDS, "other") if total[k] or k in ("hydra", "optuna")
        )
        + f"; outside the sweeper (start-up, imports, exit) {1000 * (wall - inside) / trials:.2f}"
    )
    if writer:
        print(
            f"  MLflow writer thread (beside training, on the other core): {float(writer[-1]):.1f} s busy, "
            f"{1000 * float(writer[-1]) / trials:.1f} ms per trial"
        )
    ratio = wall / compute if compute else float("inf")
    print(f"wall / (training + evaluation) = {wall:.1f} / {compute:.2f} = {ratio:.1f}x (target <= 5x)")
    growth = bookkeeping[-1] / bookkeeping[0] if len(bookkeeping) > 1 and bookkeeping[0] else 1.0
    print(
        f"bookkeeping per trial: first batch {1000 * bookkeeping[0]:.1f} ms, "
        f"last batch {1000 * bookkeeping[-1]:.1f} ms -> {growth:.2f}x (target <= 1.25x)"
    )


if __name__ == "__main__":
    main()
