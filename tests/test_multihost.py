"""Sweeps across machines: workers on hosts of their own (UTS, pid and network namespaces) share
one study in PostgreSQL and one MLflow tracking server, both behind passwords. One worker is
SIGKILLed mid-batch and one SIGTERMed; the study still ends with exactly n_trials."""

import os
import socket
import subprocess
import sys
import time

import hosts
import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.trial import TrialState
from servers import http_status
from sweep_helpers import SPACE, Output, assert_study_and_runs_agree, env_for, study_args

from zipnet.sweeps.storage import RUN_ID, WORKER, tally


def _worker_args(storage: str, name: str, n_trials: int, grace: int = 3) -> list[str]:
    return [
        sys.executable,
        "-m",
        "zipnet.cli.train",
        *study_args(name, n_trials=n_trials, batch=2, storage=storage, heartbeat_interval=1, grace_period=grace),
        "data.n_train=3000",
        "data.n_test=200",
        "trainer.passes=4",
        "tracking.figures=false",
        *SPACE,
    ]


def _held(study: optuna.Study, hostname: str) -> int:
    return sum(
        1
        for t in study.get_trials(states=(TrialState.RUNNING,))
        if str(t.user_attrs.get(WORKER, "")).startswith(f"{hostname}:")
    )


def test_workers_on_three_hosts_reach_exactly_n_trials_through_a_kill_and_a_preemption(cluster, tmp_path):
    started = time.perf_counter()
    n_trials, name = 14, "multihost"
    env = cluster.env(env_for(tmp_path))
    # this test reads the study directly, through one storage that holds no connection between reads
    # (a storage per read leaves its pool to the garbage collector, and PostgreSQL runs out of slots)
    storage = optuna.storages.RDBStorage(
        cluster.postgres.url("optuna", password=True), engine_kwargs={"poolclass": sqlalchemy.pool.NullPool}
    )
    workers = {}
    for hostname in ("worker-a", "worker-b", "worker-c"):
        cwd = tmp_path / hostname  # the workers share no folder
        cwd.mkdir()
        workers[hostname] = cluster.host(hostname, pid=True).popen(
            _worker_args(cluster.storage, name, n_trials),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    outputs = {h: Output(w) for h, w in workers.items()}
    batches = {"worker-a": 1, "worker-b": 1}
    while True:  # a and b both hold trials mid-batch: one that is between batches is waited for again
        for hostname, count in batches.items():
            outputs[hostname].wait_for(lambda line: "batch: trials" in line, count=count)
        study = optuna.load_study(study_name=name, storage=storage)
        idle = [h for h in batches if not _held(study, h)]
        if not idle:
            break
        for hostname in idle:
            batches[hostname] += 1
    killed = _held(study, "worker-a")
    killed_at = time.time()
    workers["worker-a"].kill()
    workers["worker-b"].terminate()
    codes = {h: w.wait(timeout=600) for h, w in workers.items()}
    outs = {h: o.text() for h, o in outputs.items()}
    assert codes["worker-b"] == 143, outs["worker-b"][-3000:]
    assert "given back" in outs["worker-b"]
    assert codes["worker-c"] == 0, outs["worker-c"][-3000:]
    assert "its worker stopped beating for 3 s; asked again" in outs["worker-c"]

    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials()
    assert tally(trials).counted == n_trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(1 for t in trials if t.state == TrialState.FAIL) >= killed  # the killed worker's, asked again
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    stale = {t.number for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("zipnet.interrupted")}
    asked_again = [t.datetime_start.timestamp() - killed_at for t in trials if Retry.retried_trial_number(t) in stale]
    detected = [t.datetime_complete.timestamp() - killed_at for t in trials if t.number in stale]
    assert detected and min(detected) > 0  # failed as stale only after the kill
    originals = {t.number: t for t in trials}
    for t in trials:  # and asked again only once failed
        if Retry.retried_trial_number(t) in stale:
            assert t.datetime_start >= originals[Retry.retried_trial_number(t)].datetime_complete

    client = MlflowClient(tracking_uri=cluster.mlflow.url)
    os.environ.update(cluster.mlflow.env)  # this process authenticates as the workers do
    try:
        exp = client.get_experiment_by_name("zipnet")
        runs = client.search_runs([exp.experiment_id], f"tags.`zipnet.study` = '{name}'", max_results=1000)
        parents = [r for r in runs if r.data.tags["zipnet.role"] == "study"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert not [r for r in runs if r.info.status == "RUNNING"]
        by_id = {r.info.run_id: r for r in runs}
        for t in trials:
            if t.state == TrialState.COMPLETE:
                run = by_id[t.user_attrs[RUN_ID]]
                assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        done = next(t for t in trials if t.state == TrialState.COMPLETE)
        local = client.download_artifacts(done.user_attrs[RUN_ID], "config_resolved.yaml", str(tmp_path))
        assert f"number: {done.number}" in open(local).read()  # proxied by the server: no shared folder
        # no password anywhere a user of the UI can read it
        secrets = (cluster.postgres.password, cluster.mlflow.env["MLFLOW_TRACKING_PASSWORD"])
        for run in runs:
            for text in [*run.data.params.values(), *run.data.tags.values()]:
                assert not any(secret in text for secret in secrets), run.info.run_id
    finally:
        for key in cluster.mlflow.env:
            os.environ.pop(key, None)
    # an unauthenticated client is refused
    assert http_status(f"{cluster.mlflow.url}/api/2.0/mlflow/experiments/search?max_results=1") == 401

    report = subprocess.run(
        [sys.executable, "-m", "zipnet.cli.report", "--study", name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "reports" / name / "leaderboard.csv").is_file()
    again = subprocess.run(
        [sys.executable, "-m", "zipnet.cli.reproduce", "--best", name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0 and "reproduced" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    print(
        f"multi-host test: {time.perf_counter() - started:.0f} s wall; the killed worker's trials failed as stale "
        f"{max(detected):.1f} s after the kill and were asked again after {min(asked_again):.1f} s (at a batch's "
        "start), with heartbeat_interval 1 s and grace_period 3 s"
    )


def test_a_server_tracking_store_without_a_study_storage_is_refused(cluster, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zipnet.cli.train",
            *study_args("nostorage"),
            "optim.lr=choice(0.01,0.03)",
            "data.n_train=200",
            "trainer.passes=1",
        ],
        cwd=tmp_path,
        env=cluster.env(env_for(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "storage: MLflow tracks to http" in proc.stderr and "postgresql://" in proc.stderr


def test_a_live_worker_in_another_pid_namespace_keeps_its_trials(tmp_path):
    """Same hostname, another pid namespace (containers with host networking, cloned VMs): both
    workers are alive, so nothing is taken from either."""
    reason = hosts.unavailable(pid=True)
    if reason:
        pytest.skip(reason)
    # liveness is the heartbeat alone, so a generous grace: on a loaded machine a 3 s gap between
    # heartbeats (a sqlite write waiting on the other worker's) failed live trials in CI
    args = _worker_args(f"sqlite:///{tmp_path}/mlruns/optuna.db", "pidns", 8, grace=30)
    args[args.index("data.n_train=3000")] = "data.n_train=1000"
    (tmp_path / "mlruns").mkdir()
    inside = hosts.host(socket.gethostname(), pid=True).popen(
        args, cwd=tmp_path, env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    outside = subprocess.Popen(
        args, cwd=tmp_path, env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    outs = [outside.communicate(timeout=600)[0], inside.stdout.read()]
    why = [[line for line in o.splitlines() if "failed" in line or "Error" in line][-12:] for o in outs]
    assert [outside.returncode, inside.wait(timeout=60)] == [0, 0], why
    study = optuna.load_study(study_name="pidns", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")
    assert not [t for t in study.get_trials() if t.state == TrialState.FAIL]  # nothing stolen, nothing failed
    assert_study_and_runs_agree(tmp_path, "pidns", 8)


def test_a_grid_through_the_submitit_local_launcher(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zipnet.cli.train",
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            "data.n_train=200",
            "data.n_test=100",
            "trainer.passes=1",
            "tracking.figures=false",
            "optim.lr=0.01,0.03",
        ],
        cwd=tmp_path,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("zipnet").experiment_id])
    (parent,) = [r for r in runs if r.data.tags["zipnet.role"] == "multirun"]
    jobs = [r for r in runs if r.data.tags["zipnet.role"] == "job"]
    assert parent.info.status == "FINISHED" and len(jobs) == 2
    assert sorted(r.info.run_name for r in jobs) == ["optim.lr=0.01", "optim.lr=0.03"]
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in jobs)


def test_a_password_in_the_storage_url_reaches_no_log_param_tag_or_artifact(postgres, tmp_path):
    url = postgres.url("optuna", password=True)  # given inline, as a user might; no .pgpass in the env
    assert postgres.password in url
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zipnet.cli.train",
            *study_args("inline", n_trials=2, batch=2, storage=url),
            "data.n_train=200",
            "data.n_test=100",
            "trainer.passes=1",
            "optim.lr=choice(0.01,0.03)",
        ],
        cwd=tmp_path,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert postgres.password not in proc.stdout + proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("zipnet").experiment_id])
    assert len(runs) == 3
    for run in runs:
        assert not [v for v in [*run.data.params.values(), *run.data.tags.values()] if postgres.password in v]
        local = client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id))
        for path in (p for p in __import__("pathlib").Path(local).rglob("*") if p.is_file()):
            assert postgres.password.encode() not in path.read_bytes(), path
    assert not [p for p in tmp_path.rglob("*.yaml") if postgres.password in p.read_text()]  # Hydra's .hydra/ files
