"""PostgreSQL connections held by N workers of one study: each worker straight to PostgreSQL,
against all of them through one zipnet-storage-proxy (storage=grpc://...).

    .venv/bin/python benchmarks/bench_proxy.py [--workers 4] [--trials-per-worker 4]

Starts its own PostgreSQL 15 and proxy on 127.0.0.1 with tests/servers.py, runs N `zipnet-train -m`
workers of tiny trials (tests/sweep_helpers.py's TINY and SPACE, batch 2) for each way in, and
prints the peak number of connections to the study's database (pg_stat_activity, read every
0.1 s), the wall time, the trials counted and those given back as surplus.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import sqlalchemy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import postgres_missing, start_postgres, start_storage_proxy  # noqa: E402
from sweep_helpers import SPACE, TINY, env_for, study_args  # noqa: E402

from zipnet.sweeps.storage import SURPLUS, tally  # noqa: E402


def watch_connections(pg, stop: threading.Event, peak: list[int]) -> None:
    """The most connections to the `optuna` database seen until `stop` (read from the `mlflow` one)."""
    import psycopg

    with psycopg.connect(
        host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname="mlflow", autocommit=True
    ) as conn:
        while not stop.is_set():
            count = conn.execute("select count(*) from pg_stat_activity where datname = 'optuna'").fetchone()[0]
            peak[0] = max(peak[0], count)
            stop.wait(0.1)


def run_workers(pg, storage: str, name: str, env: dict, cwd: Path, workers: int, n_trials: int) -> dict:
    cwd.mkdir()
    args = [
        sys.executable,
        "-m",
        "zipnet.cli.train",
        *study_args(name, n_trials=n_trials, batch=2, storage=storage, heartbeat_interval=1),
        *TINY,
        *SPACE,
    ]
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=watch_connections, args=(pg, stop, peak))
    watcher.start()
    started = time.perf_counter()
    procs = [
        subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(workers)
    ]
    outs = [p.communicate(timeout=1200)[0] for p in procs]
    wall = time.perf_counter() - started
    stop.set()
    watcher.join()
    failed = [out[-2000:] for p, out in zip(procs, outs) if p.returncode != 0]
    if failed:
        raise SystemExit(f"{name}: a worker failed:\n{failed[0]}")
    reader = optuna.storages.RDBStorage(
        pg.url("optuna", password=True), engine_kwargs={"poolclass": sqlalchemy.pool.NullPool}
    )
    trials = optuna.load_study(study_name=name, storage=reader).get_trials()
    return {
        "peak": peak[0],
        "wall": wall,
        "counted": tally(trials).counted,
        "surplus": sum(1 for t in trials if t.user_attrs.get(SURPLUS)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials-per-worker", type=int, default=4)
    args = parser.parse_args()
    reason = postgres_missing()
    if reason:
        raise SystemExit(reason)
    n_trials = args.workers * args.trials_per_worker
    root = Path(tempfile.mkdtemp(prefix="zipnet-bench-proxy-"))
    rows = {}
    with start_postgres(durable=True) as pg:
        direct_env = {**env_for(root), **pg.env}  # straight in: every worker needs the password
        rows["postgresql://"] = run_workers(
            pg, pg.url("optuna"), "direct", direct_env, root / "direct", args.workers, n_trials
        )
        with start_storage_proxy(pg.url("optuna"), pg.env) as proxy:  # only the proxy has it
            rows["grpc:// proxy"] = run_workers(
                pg, proxy.url, "proxied", env_for(root), root / "proxied", args.workers, n_trials
            )
    print(f"{args.workers} workers, {n_trials} trials, batch 2 (load {os.getloadavg()[0]:.1f})")
    print(f"{'storage':<16}{'peak conns':>12}{'per worker':>12}{'wall s':>9}{'counted':>9}{'surplus':>9}")
    for way, r in rows.items():
        per = r["peak"] / args.workers
        print(f"{way:<16}{r['peak']:>12}{per:>12.2f}{r['wall']:>9.0f}{r['counted']:>9}{r['surplus']:>9}")


if __name__ == "__main__":
    main()
