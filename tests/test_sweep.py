"""zipnet-sweep against real sqlite Optuna and MLflow stores in a temp dir: parent and
child runs, pruning, failures, kill and resume, two workers, and bad study files."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from zipnet import tracking
from zipnet.sweep import (INTERRUPTED, RUN_ID, FailureBudgetExceeded, SweepError, load_spec, override_value,
                          run_sweep)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.n_train=200", "data.n_test=100", "trainer.passes=1"]
SPACE = {"model.init": {"choices": ["sqrt", "linear"]}, "loss.mse": {"choices": ["mean", "sum", "half_sum"]},
         "optim.lr": {"low": 0.005, "high": 0.1, "log": True}}


def study_file(tmp_path, name="tiny", **fields) -> Path:
    body = {"study": name, "metric": "test/error", "direction": "minimize", "n_trials": 6, "batch": 3,
            "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "median"}, "overrides": TINY,
            "space": SPACE}
    body.update(fields)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def load(tmp_path, name="tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")


def mlflow_children(tmp_path, study):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("zipnet")
    parents = client.search_runs([exp.experiment_id], f"tags.`zipnet.study` = '{study}' and tags.`zipnet.role` = 'study'")
    children = client.search_runs([exp.experiment_id], f"tags.`zipnet.study` = '{study}' and tags.`zipnet.role` = 'trial'")
    return client, parents, children


def counted(study):
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED))]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.set_num_threads(1)
    return tmp_path


def test_a_tiny_sweep_is_one_parent_with_a_child_per_trial_and_a_rerun_adds_nothing(here):
    lines = []
    path = study_file(here)
    run_sweep(path, ["tracking.figures=true"], log=lines.append)
    study = load(here)
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    client, parents, children = mlflow_children(here, "tiny")
    (parent,) = parents
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.n_trials"] == "6"
    assert parent.data.metrics["study/complete"] == 6
    assert len(children) == 6
    by_trial = {int(c.data.tags["zipnet.trial"]): c for c in children}
    assert sorted(by_trial) == [0, 1, 2, 3, 4, 5]
    for t in trials:
        run = by_trial[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert t.user_attrs[RUN_ID] == run.info.run_id
        assert run.data.params["model.init"] == t.params["model.init"]
        assert float(run.data.params["optim.lr"]) == t.params["optim.lr"]
        assert run.data.params["data.n_train"] == "200"
        history = client.get_metric_history(run.info.run_id, "test/error")
        assert [(m.step, m.value) for m in history] == [(1, t.value)]
        assert t.intermediate_values == {1: t.value}
        assert int(run.data.tags["zipnet.population_size"]) >= 1
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config_resolved.yaml", "overrides.yaml", "weights.pt", "learning_curve.png", "confusion.csv"} <= arts
    best = min(trials, key=lambda t: t.value)
    assert parent.data.tags["zipnet.best_run_id"] == best.user_attrs[RUN_ID]
    # the same command again: the study is at its target, nothing is asked or logged
    run_sweep(path, ["tracking.figures=true"], log=lines.append)
    assert len(load(here).get_trials()) == 6
    assert len(mlflow_children(here, "tiny")[2]) == 6


def test_a_bad_learning_rate_region_gets_pruned(here):
    space = {"optim.lr": {"low": 1e-7, "high": 0.1, "log": True}}
    path = study_file(here, "prune", n_trials=8, batch=1, space=space, overrides=["data.n_train=200", "data.n_test=100",
                      "trainer.passes=3"], pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
                      sampler={"name": "random", "seed": 3}, max_failure_rate=0.0)
    run_sweep(path, ["tracking.figures=false"], log=lambda line: None)
    trials = load(here, "prune").get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(trials) == 8 and pruned, [(t.state, t.params) for t in trials]
    _, _, children = mlflow_children(here, "prune")
    runs = {int(c.data.tags["zipnet.trial"]): c for c in children}
    for t in pruned:
        run = runs[t.number]
        assert run.data.tags["zipnet.status"] == "pruned" and run.info.status == "FINISHED"
        last = max(t.intermediate_values)
        assert run.data.tags["pruned_at_pass"] == str(last) and last < 3
        assert run.data.metrics["test/error"] == t.intermediate_values[last]


def test_a_diverging_trial_is_failed_and_the_sweep_completes(here):
    space = {"optim.lr": {"choices": [0.03, 1e38]}}
    path = study_file(here, "nan", n_trials=4, batch=4, space=space, max_failure_rate=0.5,
                      overrides=TINY + ["loss.mse=sum"], sampler={"name": "random", "seed": 2})
    run_sweep(path, ["tracking.figures=false"], log=lambda line: None)
    trials = load(here, "nan").get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(trials) == 4 and failed and all(t.params["optim.lr"] == 1e38 for t in failed)
    assert all(t.state == TrialState.COMPLETE for t in trials if t.params["optim.lr"] == 0.03)
    _, parents, children = mlflow_children(here, "nan")
    runs = {int(c.data.tags["zipnet.trial"]): c for c in children}
    for t in failed:
        assert runs[t.number].info.status == "FAILED" and runs[t.number].data.tags["diverged_at_pass"] == "1"
    assert parents[0].info.status == "FINISHED"


def test_too_many_failures_stop_the_sweep(here):
    path = study_file(here, "allnan", n_trials=6, batch=2, space={"optim.lr": {"choices": [1e38, 3e38]}},
                      overrides=TINY + ["loss.mse=sum"], max_failure_rate=0.2)
    with pytest.raises(FailureBudgetExceeded, match="allows 1"):
        run_sweep(path, ["tracking.figures=false"], log=lambda line: None)
    trials = load(here, "allnan").get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials)
    assert mlflow_children(here, "allnan")[1][0].info.status == "FAILED"


def _sweep_proc(path, cwd, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "zipnet.sweep", str(path), "tracking.figures=false", *extra],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _states(db: Path, n_params: int = 3) -> dict[str, int]:
    """Trials per state; RUNNING counts only trials whose parameters are all drawn."""
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            out = dict(con.execute("select state, count(*) from trials group by state").fetchall())
            out["RUNNING"] = con.execute(
                "select count(*) from trials t where state = 'RUNNING' and "
                "(select count(*) from trial_params p where p.trial_id = t.trial_id) = ?", (n_params,)).fetchone()[0]
            return out
    except sqlite3.OperationalError:  # tables not created yet
        return {}


def _assert_optuna_and_mlflow_agree(tmp_path, name, n_trials):
    study = load(tmp_path, name)
    good = counted(study)
    assert len(good) == n_trials
    assert not [t for t in study.get_trials() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    client, parents, children = mlflow_children(tmp_path, name)
    assert parents[0].info.status == "FINISHED"
    assert sorted(int(c.data.tags["zipnet.trial"]) for c in children) == sorted(t.number for t in good)
    assert {c.info.run_id for c in children} == {t.user_attrs[RUN_ID] for t in good}
    return study, good


def test_a_killed_sweep_resumes_to_exactly_n_trials(tmp_path):
    path = study_file(tmp_path, "resume", n_trials=8, batch=2, overrides=["data.n_train=300", "data.n_test=100",
                      "trainer.passes=2"])
    db = tmp_path / "mlruns" / "optuna.db"
    proc = _sweep_proc(path, tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline:  # at least 2 complete, and a batch in flight
        states = _states(db)
        if states.get(TrialState.COMPLETE.name, 0) >= 2 and states.get(TrialState.RUNNING.name, 0) >= 1:
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = _states(db)
    assert at_kill.get("RUNNING", 0) >= 1 and at_kill.get("COMPLETE", 0) >= 2
    again = _sweep_proc(path, tmp_path)
    out, _ = again.communicate(timeout=180)
    assert again.returncode == 0, out
    assert "marked interrupted, asked again" in out
    study, good = _assert_optuna_and_mlflow_agree(tmp_path, "resume", 8)
    interrupted = [t for t in study.get_trials() if t.user_attrs.get(INTERRUPTED) and len(t.params) == 3]
    assert len(interrupted) == at_kill["RUNNING"]
    for t in interrupted:  # each asked again with the same parameters, exactly once
        (retry,) = [g for g in good if g.user_attrs.get("zipnet.retry_of") == t.number]
        assert retry.params == t.params
    assert len({t.number for t in good}) == 8


def test_two_workers_share_one_study_and_stop_at_the_target(tmp_path):
    path = study_file(tmp_path, "pair", n_trials=10, batch=2, overrides=TINY)
    procs = [_sweep_proc(path, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study, good = _assert_optuna_and_mlflow_agree(tmp_path, "pair", 10)
    assert len(study.get_trials()) == 10  # no surplus, nothing interrupted
    workers = {t.user_attrs["zipnet.worker"] for t in good}
    assert len(workers) == 2, workers


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("fields,key,text", [
    ({"n_trails": 5}, "n_trails", "unknown key"),
    ({"space": {"model.init": {"choices": []}}}, "space.model.init.choices", "empty"),
    ({"space": {"optim.lr": {"low": 0.3, "high": 0.001}}}, "space.optim.lr.low", "above high"),
    ({"space": {"optim.lr": {"low": -1.0, "high": 0.1, "log": True}}}, "space.optim.lr.low", "log scale"),
    ({"space": {"optim.lr": {"low": 0.1, "hihg": 0.2}}}, "space.optim.lr.hihg", "unknown key"),
    ({"metric": "test/accuracy"}, "metric", "test/error"),
    ({"pruner": {"name": "median", "n_startup": 3}}, "pruner.n_startup", "n_startup_trials"),
    ({"sampler": {"name": "bayes"}}, "sampler.name", "tpe"),
    ({"batch": 0}, "batch", ">= 1"),
])
def test_a_malformed_study_file_names_the_file_and_key(tmp_path, fields, key, text):
    path = study_file(tmp_path, **fields)
    with pytest.raises(SweepError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and f": {key}:" in str(err.value) and text in str(err.value)


@pytest.mark.parametrize("space,key,text", [
    ({"model.nope": {"choices": [1, 2]}}, "space.model.nope", "not a config key"),
    ({"model.init": {"choices": ["sqrt", "cubic"]}}, "space.model.init", "'cubic'"),
    ({"data.n_train": {"choices": [100]}}, "space.data.n_train", "also set by the overrides"),
])
def test_a_space_the_config_rejects_fails_before_any_trial(here, space, key, text):
    path = study_file(here, space=space)
    with pytest.raises(SweepError) as err:
        run_sweep(path, log=lambda line: None)
    assert f": {key}:" in str(err.value) and text in str(err.value)
    assert not (here / "mlruns" / "optuna.db").exists()


def test_a_missing_or_locked_storage_gives_a_clear_message(here):
    path = study_file(here, storage=f"sqlite:///{here}/no/such/dir/optuna.db")
    with pytest.raises(SweepError, match="folder .*no/such/dir does not exist"):
        run_sweep(path, log=lambda line: None)
    db = here / "locked.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("create table t (x)")
    holder.execute("begin exclusive")
    try:
        path = study_file(here, storage=f"sqlite:///{db}", storage_timeout=0.2)
        with pytest.raises(SweepError, match="locked by another process"):
            run_sweep(path, log=lambda line: None)
    finally:
        holder.execute("rollback")
        holder.close()


def test_the_cli_reports_bad_input_without_a_traceback(tmp_path):
    path = study_file(tmp_path, space={"optim.lr": {"low": 0.3, "high": 0.001}})
    proc = subprocess.run([sys.executable, "-m", "zipnet.sweep", str(path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{path}: space.optim.lr.low: low (0.3) is above high (0.001)" in proc.stderr


def test_the_shipped_study_files_are_valid():
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        spec = load_spec(path)
        assert path.read_text().startswith("# zipnet-sweep")
        assert spec.n_trials >= 1 and spec.space


@pytest.mark.parametrize("value", [0.0123, 1e-05, 3, True, None, "sqrt", "half_sum", "1.0", "a b", "null"])
def test_override_values_parse_back_to_the_same_value(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f"k={override_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)
