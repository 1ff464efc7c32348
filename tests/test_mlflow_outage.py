"""The MLflow tracking server SIGKILLed mid-batch, kept down past MLflow's own retries (shortened
to none here) and started again on the same port and stores: a sweep worker trains on, its
writes spooled on local disk and sent in order once the server answers. The study counts
exactly n_trials, all COMPLETE, each with one FINISHED run holding every pass's metrics once, its
files and its model. Down past tracking.outage_timeout, the worker stops in one line and gives
its trials back; the next worker started in its folder sends what it left, and no run stays RUNNING."""

import re
import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus
from optuna.trial import TrialState
from servers import kill_mlflow, start_mlflow, start_mlflow_again
from sweep_helpers import Output, env_for, study_args

from zipnet import metrics
from zipnet.sweeps.storage import INTERRUPTED, RUN_ID, tally
from zipnet.tracking import models
from zipnet.tracking.spool import Spool

N_TRIALS, PASSES = 4, 4
# no retries of MLflow's own; a killed server refuses at once, a slow one (a loaded machine) is waited for
QUICK = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def _worker(cwd, env, name: str, storage: str, *extra: str, n_trials: int = N_TRIALS) -> subprocess.Popen:
    args = study_args(name, n_trials=n_trials, batch=2, pruner="{name:none}", storage=storage)
    return subprocess.Popen(
        [sys.executable, "-m", "zipnet.cli.train", *args]
        + ["data.n_train=1000", "data.n_test=100", f"trainer.passes={PASSES}", "trainer.progress=off"]
        + ["tracking.figures=false", "tracking.system_metrics=false", "tracking.flush_seconds=0"]
        + ["model.init=choice(sqrt,linear)", f"tracking.experiment={name}", *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _trial_runs(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(name)  # each test's own: its server's account made it
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"tags.`zipnet.study` = '{name}'")


def _wait_for_a_logged_pass(client: MlflowClient, name: str, out: Output, timeout: float = 600) -> None:
    """Until the server holds a trial's run with its first pass: mid-batch, more passes to come."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and out.proc.poll() is None:
        runs = [r for r in _trial_runs(client, name) if r.data.tags.get("zipnet.role") == "trial"]
        if any("test/error" in r.data.metrics for r in runs):
            return
        time.sleep(0.2)
    raise AssertionError(f"no trial of {name} logged a pass\n" + "\n".join(out.lines[-60:]))


def _passes(out: Output) -> int:
    return sum(1 for line in list(out.lines) if re.search(r": pass \d+$", line))


def _study(postgres, name: str) -> list:
    db = optuna.storages.RDBStorage(
        postgres.url("optuna", password=True), engine_kwargs={"poolclass": sqlalchemy.pool.NullPool}
    )
    return optuna.load_study(study_name=name, storage=db).get_trials()


def _assert_every_trial_has_its_whole_run(client: MlflowClient, name: str, trials: list, n: int = N_TRIALS) -> list:
    """Exactly n COMPLETE, each with one FINISHED run: every pass's metrics once and in order,
    its files and its READY model; one FINISHED parent; no run of the study left RUNNING."""
    assert tally(trials).counted == n
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == n, [(t.number, t.state) for t in trials]
    runs = _trial_runs(client, name)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    parents = [r for r in runs if r.data.tags.get("zipnet.role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    for t in done:
        mine = [r for r in runs if r.data.tags.get("zipnet.trial") == str(t.number)]
        assert len(mine) == 1, (t.number, [(r.info.run_id, r.info.status) for r in mine])
        run = mine[0]
        assert run.info.run_id == t.user_attrs[RUN_ID]
        assert run.info.status == "FINISHED", (t.number, run.data.tags.get("zipnet.error", "")[-3000:])
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        for key in metrics.PER_PASS:
            if key in run.data.metrics or key in ("test/error", "train/loss"):
                steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
                assert steps == list(range(1, PASSES + 1)), (t.number, key, steps)
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"weights.pt", "config_resolved.yaml", "overrides.yaml", "test_misses.json"} <= files, files
        model = models.model_id(client, run.info.run_id)
        assert model is not None and client.get_logged_model(model).status == LoggedModelStatus.READY
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("down", [30, 300], ids=["down-30s", "down-300s"])
def test_a_worker_trains_through_an_mlflow_outage_and_every_trial_has_its_whole_run(
    postgres, tmp_path, monkeypatch, down
):
    name = f"mlflow-outage-{down}"
    with start_mlflow(postgres) as server:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        client = MlflowClient(tracking_uri=server.url)
        env = {**env_for(tmp_path), **postgres.env, **server.env, **QUICK}
        worker = _worker(tmp_path, env, name, postgres.url("optuna"))
        out = Output(worker)
        _wait_for_a_logged_pass(client, name, out)
        kill_mlflow(server)
        out.wait_for(lambda line: "unreachable" in line, timeout=down)  # it noticed, and trains on
        time.sleep(down)  # the outage itself, well past MLflow's own (no) retries
        assert worker.poll() is None, out.text()[-4000:]
        start_mlflow_again(server)
        back, seen = time.monotonic(), _passes(out)
        out.wait_for(lambda line: "answers again" in line)
        answered = time.monotonic() - back
        while _passes(out) <= seen and worker.poll() is None:
            time.sleep(0.1)
        print(f"the worker sent its spool {answered:.1f} s and trained on {time.monotonic() - back:.1f} s after")
        code = worker.wait(timeout=600)
        text = out.text()
        assert code == 0, text[-4000:]
        assert "Traceback" not in text and "could not log" not in text, text[-4000:]
        _assert_every_trial_has_its_whole_run(client, name, _study(postgres, name))
        assert not list((tmp_path / "mlruns" / "spool").glob("*/*.json"))  # all of it sent


@pytest.mark.slow
def test_an_outage_past_the_bound_stops_the_worker_and_the_next_one_sends_what_it_left(postgres, tmp_path, monkeypatch):
    name, bound, n = "mlflow-outage-bound", 8, 6  # three batches: one is still to start when the server goes
    with start_mlflow(postgres) as server:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        client = MlflowClient(tracking_uri=server.url)
        env = {**env_for(tmp_path), **postgres.env, **server.env, **QUICK}
        first = _worker(tmp_path, env, name, postgres.url("optuna"), f"tracking.outage_timeout={bound}", n_trials=n)
        out = Output(first)
        _wait_for_a_logged_pass(client, name, out)
        kill_mlflow(server)
        code = first.wait(timeout=600)
        text = out.text()
        assert code == 2, text[-4000:]
        assert "Traceback" not in text, text[-4000:]
        said = [line for line in text.splitlines() if f"unreachable for {bound} s (tracking.outage_timeout" in line]
        assert len(said) == 1, text[-4000:]
        assert "trials were given back" in text
        trials = _study(postgres, name)
        assert not [t for t in trials if t.state == TrialState.RUNNING]
        given_back = [t.number for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED)]
        assert given_back, [(t.number, t.state, t.user_attrs) for t in trials]
        left = list((tmp_path / "mlruns" / "spool").glob("*/*.json"))
        assert [p for p in left if p.name != "store.json"]  # the runs' ends among them

        start_mlflow_again(server)
        second = _worker(tmp_path, env, name, postgres.url("optuna"), n_trials=n)
        out = Output(second)
        code = second.wait(timeout=600)
        text = out.text()
        assert code == 0, text[-4000:]
        assert "Traceback" not in text and "a stopped worker left" in text, text[-4000:]
        runs = _assert_every_trial_has_its_whole_run(client, name, _study(postgres, name), n)
        status = {r.data.tags.get("zipnet.trial"): r.info.status for r in runs}
        assert all(status[str(n)] == "KILLED" for n in given_back if str(n) in status), status  # a run, if made
        assert not list((tmp_path / "mlruns" / "spool").glob("*/*.json"))


class _Server:
    """What a spool sends to, in the spool's own terms: requests taken in order, or refused as an
    unreachable server refuses them (the error `requests` raises for a refused connection)."""

    def __init__(self):
        self.down, self.taken = True, []

    def deliver(self, request, files):
        import requests

        if self.down:
            raise requests.exceptions.ConnectionError("connection refused")
        self.taken.append((request["n"], files is not None and (files / "f.txt").read_text()))


def _put(spool, tmp_path, n: int) -> None:
    folder = tmp_path / f"files-{n}"
    folder.mkdir()
    (folder / "f.txt").write_text(str(n))
    spool.put({"op": "log_batch", "run_id": "r", "n": n}, folder if n % 2 else None)


def test_the_spool_keeps_requests_through_an_outage_and_sends_them_in_order(tmp_path):
    server, lines = _Server(), []
    spool = Spool(tmp_path / "spool", "http://x", server.deliver, lambda r, e: None, timeout=600, log=lines.append)
    for n in range(5):
        _put(spool, tmp_path, n)
    deadline = time.monotonic() + 60  # the spool marks itself away after the refusal returns: wait for that
    while not spool.away and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spool.away and len(list(spool.folder.glob("0*.json"))) == 5
    server.down = False
    assert spool.drain()
    assert server.taken == [(0, False), (1, "1"), (2, False), (3, "3"), (4, False)]
    assert not list(spool.folder.glob("0*")) and any("answers again" in line for line in lines)
    spool.close()
    assert not (tmp_path / "spool").exists() or not list((tmp_path / "spool").iterdir())


def test_a_spool_past_its_bound_stays_on_disk_for_the_next_one(tmp_path):
    server, lines = _Server(), []
    first = Spool(tmp_path / "spool", "http://x", server.deliver, lambda r, e: None, timeout=0, log=lines.append)
    for n in range(3):
        _put(first, tmp_path, n)
    assert not first.drain()  # at once: gave up, nothing sent
    assert first.gave_up and any("unreachable for 0 s (tracking.outage_timeout" in line for line in lines)
    other = Spool(tmp_path / "spool", "http://y", server.deliver, lambda r, e: None, timeout=600, log=lines.append)
    other.close()  # another server's spool: not its business
    first.close()  # its worker ends: the folder stays, unlocked
    server.down = False
    second = Spool(tmp_path / "spool", "http://x", server.deliver, lambda r, e: None, timeout=600, log=lines.append)
    _put(second, tmp_path, 3)
    assert second.drain()
    assert [n for n, _ in server.taken] == [0, 1, 2, 3]  # the stopped worker's first, in order
    second.close()
    assert not list((tmp_path / "spool").glob("*/*.json"))


def test_tracking_outage_settings_name_the_key():
    from omegaconf import OmegaConf

    from zipnet.errors import ConfigError
    from zipnet.tracking import settings

    assert settings(OmegaConf.create({"tracking": {}})).outage_timeout == 600
    for key, value in (("outage_timeout", -1), ("spool_dir", "")):
        with pytest.raises(ConfigError) as err:
            settings(OmegaConf.create({"tracking": {key: value}}))
        assert err.value.key == f"tracking.{key}"
