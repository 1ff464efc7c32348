"""The servers many machines share: PostgreSQL with passwords, MLflow with basic auth and proxied artifacts.

What is checked here is the ground the multi-machine sweep stands on: credentials reach clients
from the environment, an unauthenticated client is refused, artifacts travel through the server,
and Optuna's heartbeat fails the trial of a worker that died (and re-queues its parameters).
"""

import os
import signal
import socket
import subprocess
import sys
import time

import hosts
import mlflow
import optuna
import psycopg
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from servers import http_status, start_postgres


@pytest.fixture
def mlflow_env(mlflow_server, monkeypatch):
    """This process as an MLflow client of the server, with the worker account's credentials."""
    for key, value in mlflow_server.env.items():
        monkeypatch.setenv(key, value)
    return MlflowClient(tracking_uri=mlflow_server.url)


def test_postgres_needs_the_password(postgres, tmp_path, monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))  # not the user's ~/.pgpass
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(postgres.url("optuna"), connect_timeout=10).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.url("optuna"), password="wrong", connect_timeout=10).close()

    monkeypatch.setenv("PGPASSFILE", postgres.env["PGPASSFILE"])  # the password from .pgpass, not the URL
    assert postgres.password not in postgres.url("optuna")
    with psycopg.connect(postgres.url("optuna"), connect_timeout=10) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("zipnet", "optuna")
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)


def test_mlflow_refuses_unauthenticated_clients(mlflow_server, tmp_path, monkeypatch):
    search = f"{mlflow_server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(f"{mlflow_server.url}/health") == 200  # liveness needs no account
    assert http_status(search) == 401
    assert http_status(search, auth=(mlflow_server.username, "wrong")) == 401
    assert http_status(search, auth=(mlflow_server.username, mlflow_server.password)) == 200

    # the client library: refused without credentials, accepted with MLflow's credentials file
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    client = MlflowClient(tracking_uri=mlflow_server.url)
    with pytest.raises(MlflowException, match="401"):
        client.search_experiments()
    mlflow_server.credentials_file(tmp_path)
    assert [e.name for e in client.search_experiments(filter_string="name = 'Default'")] == ["Default"]


def test_mlflow_run_and_artifact_through_the_server(mlflow_env, mlflow_server, tmp_path):
    client = mlflow_env
    experiment = client.create_experiment("servers-test")
    run = client.create_run(experiment)
    for step, value in enumerate([0.5, 0.25, 0.125]):
        client.log_metric(run.info.run_id, "test/error", value, step=step)
    note = tmp_path / "note.txt"
    note.write_text("sent through the server\n")
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id, "FINISHED")

    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: no path the client could open
    assert [m.value for m in client.get_metric_history(run.info.run_id, "test/error")] == [0.5, 0.25, 0.125]
    on_server = list(mlflow_server.artifacts.rglob("note.txt"))
    assert len(on_server) == 1  # the server wrote it under --artifacts-destination

    back = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id,
        artifact_path="note.txt",
        dst_path=str(tmp_path / "back"),
        tracking_uri=mlflow_server.url,
    )
    assert open(back).read() == "sent through the server\n"


WORKER = """
import sys, time, optuna
storage = optuna.storages.RDBStorage(sys.argv[1], heartbeat_interval=1, grace_period=2)
study = optuna.load_study(study_name="stale", storage=storage)
trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)})
trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("stale"), trial.number)
storage.record_heartbeat(trial_id)
print(trial.number, flush=True)
while True:
    time.sleep(0.5)
    storage.record_heartbeat(trial_id)
"""


@pytest.mark.filterwarnings(
    "ignore::optuna.exceptions.ExperimentalWarning",
    "ignore:Heartbeat of storage is supposed to be used with Study.optimize",
)
def test_optuna_heartbeat_fails_and_requeues_a_dead_workers_trial(postgres, monkeypatch):
    """A worker asks a trial and beats; it is SIGKILLed; fail_stale_trials fails its trial and re-queues the params.

    A live trial in the same study that keeps beating stays RUNNING.
    """
    monkeypatch.setenv("PGPASSFILE", postgres.env["PGPASSFILE"])
    storage = optuna.storages.RDBStorage(
        postgres.url("optuna"),
        heartbeat_interval=1,
        grace_period=2,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
    )
    study = optuna.create_study(study_name="stale", storage=storage)
    live = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)})
    live_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("stale"), live.number)
    storage.record_heartbeat(live_id)

    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, postgres.url("optuna")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **postgres.env},
    )
    try:
        number = int(worker.stdout.readline())
    finally:
        worker.kill()
        worker.wait()
    died = time.monotonic()
    lost = study.trials[number]
    assert lost.state == optuna.trial.TrialState.RUNNING

    while study.trials[number].state == optuna.trial.TrialState.RUNNING:
        assert time.monotonic() - died < 30, "the dead worker's trial was never failed"
        storage.record_heartbeat(live_id)  # this worker is alive
        optuna.storages.fail_stale_trials(study)
        time.sleep(0.2)
    detected = time.monotonic() - died

    trials = study.trials
    assert trials[number].state == optuna.trial.TrialState.FAIL
    assert trials[live.number].state == optuna.trial.TrialState.RUNNING
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert [t.params for t in waiting] == [lost.params]  # asked again with the same parameters
    again = study.ask()
    assert again.params == lost.params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(study.trials[again.number]) == number
    assert 1.5 <= detected < 30  # not before the grace period (less the 0.5 s between its beats); printed below
    print(f"heartbeat: trial failed and re-queued {detected:.1f} s after its worker died (grace 2 s)")


def _skip_unless_hosts(network: bool = False, pid: bool = False) -> None:
    reason = hosts.unavailable(network=network, pid=pid)
    if reason:
        pytest.skip(reason)


def test_a_host_has_its_own_hostname_and_pids():
    _skip_unless_hosts(pid=True)
    assert hosts.host("box-7").run(["hostname"], capture_output=True, text=True).stdout == "box-7\n"
    assert socket.gethostname() != "box-7"  # this machine's name is untouched

    # in its own pid namespace the command is not pid 1 (sh is its init) and gets signals as anywhere
    show = "import os, socket, time; print(socket.gethostname(), os.getpid(), flush=True); time.sleep(60)"
    with hosts.host("box-8", pid=True) as box:
        proc = box.popen([sys.executable, "-c", show], stdout=subprocess.PIPE, text=True)
        name, inner_pid = proc.stdout.readline().split()
        assert name == "box-8" and 1 < int(inner_pid) < 10  # pids count from 1 there
        assert proc.pid != int(inner_pid) and hosts.command_line(proc.pid)[:2] == [sys.executable, "-c"]
        proc.terminate()
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM


def test_a_host_reaches_postgres_through_its_veth():
    _skip_unless_hosts(network=True)
    query = (
        "import psycopg, socket, sys; c = psycopg.connect(sys.argv[1], connect_timeout=10); "
        "print(socket.gethostname(), c.execute('SELECT inet_client_addr()').fetchone()[0])"
    )
    with hosts.start_network() as net:
        made = (net.bridge, net.host("worker-1").netns)
        with start_postgres(listen=("127.0.0.1", net.address), clients=("127.0.0.1/32", net.cidr)) as pg:
            worker = net.hosts[0]
            env = {**os.environ, **pg.env}
            seen = worker.run(
                [sys.executable, "-c", query, pg.url("optuna", host=net.address)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert seen.returncode == 0, seen.stderr
            assert seen.stdout.split() == ["worker-1", worker.address]  # the server saw the host's own address
            # the host's loopback is its own: this machine's 127.0.0.1 is out of its reach
            local = worker.run(
                [sys.executable, "-c", query, pg.url("optuna")], env=env, capture_output=True, text=True, timeout=60
            )
            assert local.returncode != 0 and "refused" in local.stderr
    assert made[1] not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", made[0]], capture_output=True).returncode != 0


def test_cluster_hosts_use_both_servers(cluster, monkeypatch):
    """What a worker on another host does first: open the study in PostgreSQL and a run on the MLflow server."""
    first = (
        "import socket, sys, mlflow, optuna; "
        "study = optuna.create_study(study_name='cluster', storage=sys.argv[1], load_if_exists=True); "
        "mlflow.set_experiment('cluster'); run = mlflow.start_run(run_name=socket.gethostname()); "
        "mlflow.log_metric('test/error', 0.05); mlflow.end_run(); print(study.study_name, run.info.run_id)"
    )
    done = cluster.host("worker-1").run(
        [sys.executable, "-c", first, cluster.storage], env=cluster.env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    name, run_id = done.stdout.split()[-2:]
    assert name == "cluster"
    for key, value in cluster.mlflow.env.items():
        monkeypatch.setenv(key, value)
    run = MlflowClient(cluster.mlflow.url).get_run(run_id)
    assert (run.info.run_name, run.info.status, run.data.metrics) == ("worker-1", "FINISHED", {"test/error": 0.05})
    if cluster.network is not None:  # the servers listen on the bridge: the host reached them through its veth
        assert cluster.mlflow.url.startswith(f"http://{cluster.network.address}:")
