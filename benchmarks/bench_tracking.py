"""What MLflow tracking adds: to a single `zipnet-train` run, and per trial to a sweep-like batch.

    python benchmarks/bench_tracking.py
    python benchmarks/bench_tracking.py --passes 1,23 --repeats 5 --members 32 --batches 3 --sweep-passes 5

Single run: `zipnet-train` in a fresh process (startup included), untracked and tracked in turn,
the median of --repeats each; the tracked runs go to a store that exists already (the very first
run into a new store also creates its tables, timed once on its own).

Sweep-like: --batches populations of --members trials (lr and init vary), each trained with
engine.train on every core as a sweep trains them; tracked, each member is logged with
Tracker.log_result (a child of a study run: params, datasets, metrics, figures, the model)
while the next population trains, then the parent ends and the process waits for the writer.
The untracked baseline trains the same batches in the same process first.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def single(passes: int, tracked: bool, workdir: Path, uri: str) -> tuple[float, float, dict[str, float]]:
    """Wall and CPU seconds of one `zipnet-train` process, and (tracked) the seconds its MLflow
    thread spent by kind, from its line on stderr (`tracking: MLflow's thread ...`)."""
    cmd = [
        sys.executable,
        "-m",
        "zipnet.cli.train",
        f"trainer.passes={passes}",
        "trainer.progress=off",
        f"tracking.enabled={str(tracked).lower()}",
        f"tracking.uri={uri}",
        f"hydra.run.dir={workdir}/run",
    ]
    started, cpu = time.perf_counter(), _cpu(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"zipnet-train failed:\n{proc.stderr[-3000:]}")
    return seconds, _cpu(resource.RUSAGE_CHILDREN) - cpu, _split(proc.stderr)


def _split(out: str) -> dict[str, float]:
    """{kind: seconds} from the line `tracking: MLflow's thread T s: KIND S s, KIND S s, ...`."""
    line = next((ln for ln in out.splitlines() if ln.startswith("tracking: MLflow's thread")), None)
    if line is None:
        return {}
    parts = line.split(": ", 2)[2].split(", ")
    return {part.rsplit(" ", 2)[0]: float(part.rsplit(" ", 2)[1]) for part in parts}


def sweep_like(members: int, batches: int, passes: int, uri: str | None) -> dict:
    """Train `batches` populations of `members`; with `uri`, log every member as a trial."""
    import torch
    from hydra import compose, initialize_config_dir

    from zipnet import config as checks
    from zipnet import tracking
    from zipnet.data import load_digits
    from zipnet.engine import train

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfgs = [
            [
                compose(
                    config_name="config",
                    overrides=[
                        f"trainer.passes={passes}",
                        "trainer.threads=0",
                        "trainer.progress=off",
                        f"optim.lr={0.005 * 1.5 ** ((b * members + k) % 8):.6g}",
                        f"model.init={('sqrt', 'linear')[k % 2]}",
                    ],
                )
                for k in range(members)
            ]
            for b in range(batches)
        ]
    digits = load_digits(cfgs[0][0].data)
    torch.set_num_threads(1)
    started, cpu = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
    tracker = tracking.Tracker(uri, "bench") if uri else None  # opens while the first population trains
    parent = None
    seconds_train = seconds_log = 0.0
    for b, batch in enumerate(cfgs):
        t = time.perf_counter()
        results = train([checks.member(c) for c in batch], digits, passes=passes, log=None)
        seconds_train += time.perf_counter() - t
        if tracker is not None:
            t = time.perf_counter()
            if parent is None:
                parent = tracker.start("bench", role="study", tags={"zipnet.study": "bench"})
            for k, (cfg, result) in enumerate(zip(batch, results)):
                tracker.log_result(
                    result,
                    cfg,
                    [],
                    digits,
                    parent_run_id=parent,
                    role="trial",
                    tags={"zipnet.study": "bench", "zipnet.trial": str(b * members + k)},
                )
            seconds_log += time.perf_counter() - t
    t = time.perf_counter()
    if tracker is not None:
        tracker.end(parent)
        tracker.flush()
    waited = time.perf_counter() - t
    return {
        "total": time.perf_counter() - started,
        "train": seconds_train,
        "log": seconds_log,
        "wait": waited,
        "cpu": _cpu(resource.RUSAGE_SELF) - cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", default="1,23", help="single runs: passes, comma-separated (default 1,23)")
    parser.add_argument("--repeats", type=int, default=3, help="single runs per setting (median; default 3)")
    parser.add_argument("--members", type=int, default=32, help="sweep-like: trials per population (default 32)")
    parser.add_argument("--batches", type=int, default=2, help="sweep-like: populations (default 2)")
    parser.add_argument("--sweep-passes", type=int, default=5, help="sweep-like: passes per trial (default 5)")
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work}/mlruns/mlflow.db"
        if not args.skip_single:
            single(1, False, work, uri)  # the data cache and the kernel, built once
            wall, _, split = single(1, True, work, uri)
            print(f"first tracked run, new store (tables created): {wall:6.2f} s wall")
            print("  its MLflow thread: " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))
            print(
                f"{'single zipnet-train':<20} {'untracked s':>12} {'tracked s':>10} {'added s':>8}   "
                f"{'CPU untracked s':>15} {'tracked s':>10} {'added s':>8}"
            )
            for passes in [int(p) for p in args.passes.split(",")]:
                times = {False: [], True: []}
                for _ in range(args.repeats):
                    for tracked in (False, True):
                        times[tracked].append(single(passes, tracked, work, uri))
                (off, off_cpu), (on, on_cpu) = (
                    [statistics.median(t[i] for t in times[k]) for i in (0, 1)] for k in (False, True)
                )
                print(
                    f"{f'{passes} pass(es)':<20} {off:12.2f} {on:10.2f} {on - off:8.2f}   "
                    f"{off_cpu:15.2f} {on_cpu:10.2f} {on_cpu - off_cpu:8.2f}"
                )
                kinds = times[True][0][2]
                split = {k: statistics.median(t[2].get(k, 0.0) for t in times[True]) for k in kinds}
                print("  where the tracked run's MLflow thread spent it (median):")
                print("  " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))
        if not args.skip_sweep:
            trials = args.members * args.batches
            off = sweep_like(args.members, args.batches, args.sweep_passes, None)
            on = sweep_like(args.members, args.batches, args.sweep_passes, f"sqlite:///{work}/sweep/mlflow.db")
            print(
                f"\nsweep-like: {args.batches} populations of {args.members} trials, {args.sweep_passes} passes "
                f"each ({trials} trials)"
            )
            print(
                f"{'':<10} {'total s':>8} {'training s':>11} {'logging calls s':>16} {'end wait s':>11} "
                f"{'s/trial':>8} {'CPU s':>7}"
            )
            for name, r in (("untracked", off), ("tracked", on)):
                print(
                    f"{name:<10} {r['total']:8.2f} {r['train']:11.2f} {r['log']:16.2f} {r['wait']:11.2f} "
                    f"{r['total'] / trials:8.3f} {r['cpu']:7.1f}"
                )
            print(
                f"tracking adds {(on['total'] - off['total']) / trials:.3f} s of wall time per trial "
                f"({on['total'] - off['total']:.1f} s over {trials} trials, the store's opening included) "
                f"and {(on['cpu'] - off['cpu']) / trials:.3f} s of CPU"
            )


if __name__ == "__main__":
    main()
