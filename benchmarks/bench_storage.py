"""Per-trial overhead of the shared stores many machines use, against the local sqlite files.

    .venv/bin/python benchmarks/bench_storage.py [--trials 30] [--runs 10]

Starts its own PostgreSQL 15 (durable: fsync on, as a real server) and `mlflow server` (basic
auth, proxied artifacts, runs in PostgreSQL) on 127.0.0.1 with tests/servers.py, then times in
this process, the sqlite baseline each time first:
  optuna  one trial as a sweep drives it: ask, a heartbeat, 23 passes each with `report` and a
          heartbeat, tell. RDBStorage on sqlite vs on PostgreSQL (heartbeat_interval set on both).
  mlflow  one run as zipnet logs it: params (a flattened config), tags, 23 passes of 8 metrics
          (one log_batch per pass), two artifacts, end. sqlite store vs the server, and the server
          with MLflow's asynchronous logging (log_batch(synchronous=False), awaited before the end).
One untimed warm-up trial and run go first (table creation, the server's first password check).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import postgres_missing, start_mlflow, start_postgres  # noqa: E402

PASSES = 23
METRICS = ["train/loss", "train/error", "train/misses", "test/loss", "test/error", "test/misses", "lr", "seconds"]


def optuna_trial(study: optuna.Study, storage: optuna.storages.RDBStorage, seed: int) -> float:
    """One trial; returns the seconds its passes took (report and heartbeat)."""
    trial = study.ask(
        {
            "lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True),
            "init": optuna.distributions.CategoricalDistribution(["sqrt", "linear"]),
        }
    )
    study_id = storage.get_study_id_from_name(study.study_name)  # public API: no trial._trial_id
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    storage.record_heartbeat(trial_id)
    value = 0.1 + seed * 1e-4
    start = time.perf_counter()
    for step in range(1, PASSES + 1):
        value *= 0.95
        trial.report(value, step)
        storage.record_heartbeat(trial_id)
    passes = time.perf_counter() - start
    study.tell(trial, value)
    return passes


def time_optuna(url: str, trials: int) -> tuple[list[float], list[float]]:
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=10, grace_period=30)
    study = optuna.create_study(study_name="bench", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    optuna_trial(study, storage, -1)  # warm-up
    times, passes = [], []
    for i in range(trials):
        start = time.perf_counter()
        passes.append(optuna_trial(study, storage, i) / PASSES)
        times.append(time.perf_counter() - start)
    return times, passes


def mlflow_run(client: MlflowClient, experiment_id: str, files: list[Path], i: int, synchronous: bool = True) -> float:
    """One run; returns the seconds its passes took (one log_batch each; queued when not `synchronous`)."""
    run = client.create_run(experiment_id, tags={"zipnet.study": "bench", "zipnet.trial": str(i)})
    run_id = run.info.run_id
    params = [Param(f"group{g}.key{k}", str(g * k + i)) for g in range(8) for k in range(6)]
    client.log_batch(run_id, params=params, tags=[RunTag("zipnet.git_commit", "0" * 40)])
    start, pending = time.perf_counter(), []
    for step in range(1, PASSES + 1):
        now = int(time.time() * 1000)
        pending.append(
            client.log_batch(
                run_id,
                metrics=[Metric(name, 1.0 / (step + j), now, step) for j, name in enumerate(METRICS)],
                synchronous=synchronous,
            )
        )
    passes = time.perf_counter() - start
    for operation in pending:
        if operation is not None:
            operation.wait()
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return passes


def time_mlflow(
    uri: str, runs: int, files: list[Path], synchronous: bool = True, artifacts: Path | None = None
) -> tuple[list[float], list[float]]:
    """`artifacts`: where a local store keeps them (a server decides for itself)."""
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(
        f"bench-{time.time_ns()}", artifact_location=artifacts.as_uri() if artifacts else None
    )
    mlflow_run(client, experiment_id, files, -1)  # warm-up
    times, passes = [], []
    for i in range(runs):
        start = time.perf_counter()
        passes.append(mlflow_run(client, experiment_id, files, i, synchronous) / PASSES)
        times.append(time.perf_counter() - start)
    return times, passes


def row(name: str, timed: tuple[list[float], list[float]], base: tuple[list[float], list[float]]) -> str:
    (times, passes), (base_times, base_passes) = timed, base
    mean, per_pass = statistics.mean(times), statistics.mean(passes)
    return (
        f"{name:<32} {mean * 1000:10.1f} {statistics.median(times) * 1000:10.1f} {per_pass * 1000:10.2f}"
        f" {mean / statistics.mean(base_times):8.2f}x {per_pass / statistics.mean(base_passes):8.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30, help="timed Optuna trials per storage")
    parser.add_argument("--runs", type=int, default=10, help="timed MLflow runs per store")
    args = parser.parse_args()
    if reason := postgres_missing():
        sys.exit(f"bench_storage: {reason}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # else an ended run prints its URL (one more request)

    with tempfile.TemporaryDirectory(prefix="zipnet-bench-") as tmp:
        tmp = Path(tmp)
        files = [tmp / "weights.pt", tmp / "config_resolved.yaml"]
        files[0].write_bytes(os.urandom(40_000))  # the 9,760 float32 weights: ~40 kB
        files[1].write_text("".join(f"key{k}: {k}\n" for k in range(60)))
        with start_postgres(durable=True) as pg:
            os.environ.update(pg.env)
            t0 = time.perf_counter()
            with start_mlflow(pg) as server:
                started = time.perf_counter() - t0
                sqlite_optuna = time_optuna(f"sqlite:///{tmp / 'optuna.db'}", args.trials)
                pg_optuna = time_optuna(pg.url("optuna"), args.trials)
                sqlite_mlflow = time_mlflow(f"sqlite:///{tmp / 'mlflow.db'}", args.runs, files, artifacts=tmp / "art")
                os.environ.update(server.env)
                server_mlflow = time_mlflow(server.url, args.runs, files)
                server_async = time_mlflow(server.url, args.runs, files, synchronous=False)

    print(f"mlflow server start-up (PostgreSQL backend, basic auth): {started:.1f} s")
    print(f"{'store':<32} {'ms/trial':>10} {'median':>10} {'ms/pass':>10} {'x sqlite':>9} {'per pass':>9}")
    print(row(f"optuna sqlite ({args.trials} trials)", sqlite_optuna, sqlite_optuna))
    print(row(f"optuna postgresql ({args.trials} trials)", pg_optuna, sqlite_optuna))
    print(row(f"mlflow sqlite ({args.runs} runs)", sqlite_mlflow, sqlite_mlflow))
    print(row(f"mlflow server ({args.runs} runs)", server_mlflow, sqlite_mlflow))
    print(row("mlflow server, synchronous=False", server_async, sqlite_mlflow))
    print(
        f"(a trial: ask, {PASSES + 2} heartbeats, {PASSES} reports, tell; a run: 48 params, {PASSES} x "
        f"{len(METRICS)} metrics in {PASSES} batches, 2 artifacts ~40 kB)"
    )


if __name__ == "__main__":
    main()
