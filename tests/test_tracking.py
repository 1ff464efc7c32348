"""MLflow tracking against a real sqlite store in a temp dir: single runs, multiruns,
after-the-fact population logging, and how runs end."""

import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from zipnet import config as checks
from zipnet import tracking
from zipnet.data import load_digits
from zipnet.engine import train
from zipnet.train import CONF_DIR, tracked_run

TINY = ["data.n_train=200", "data.n_test=100", "trainer.progress=off"]
ARTIFACTS = {
    "config_resolved.yaml",
    "overrides.yaml",
    "weights.pt",
    "learning_curve.png",
    "misclassified.png",
    "confusion.png",
    "confusion.csv",
    "rejection_curve.png",
    "rejection.csv",
}


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "zipnet.train", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def _client(tmp_path):
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")


def _runs(client, filter_string=""):
    exp = client.get_experiment_by_name("zipnet")
    return client.search_runs([exp.experiment_id], filter_string=filter_string)


def test_resolve_uri_prefers_config_then_environment_then_the_project_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri() == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve_uri() == "http://127.0.0.1:5000"
    assert tracking.resolve_uri("sqlite:///other/x.db") == f"sqlite:///{tmp_path}/other/x.db"


def test_settings_reject_bad_values_naming_the_key():
    with pytest.raises(Exception, match="tracking.enabled"):
        tracking.settings(_compose(["tracking.enabled=maybe"]))
    assert tracking.settings(_compose(["tracking.enabled=false"])).enabled is False


def test_a_cli_run_logs_params_tags_per_pass_metrics_and_artifacts(tmp_path):
    proc = _cli(*TINY, "trainer.passes=2", "model.init=linear", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    client = _client(tmp_path)
    (run,) = _runs(client)
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    cfg = _compose(TINY + ["trainer.passes=2", "model.init=linear"])
    flat = tracking.flatten(cfg)
    assert {k for k in flat if not k.startswith("data.cache_dir")} <= set(params)
    assert params["model.init"] == "linear" and params["data.n_train"] == "200" and params["optim.lr_by_pass"] == "null"
    assert tags["zipnet.status"] == "finished" and tags["zipnet.role"] == "run"
    assert tags["zipnet.version"] and tags["zipnet.git_commit"] and tags["zipnet.git_dirty"] in ("true", "false")
    assert tags["zipnet.data_fingerprint"] == load_digits(cfg.data).fingerprint
    assert "model.init=linear" in tags["zipnet.overrides"].split()
    for key in tracking.METRICS:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
    errors = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test/error")}
    misses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test/misses")}
    assert errors[2] == pytest.approx(100.0 * misses[2] / 100)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == ARTIFACTS
    local = client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl"))
    weights = torch.load(f"{local}/weights.pt", weights_only=True)
    assert weights["H1w"].shape[-2:] == (12, 25) or weights["H1w"].numel() == 12 * 25
    rows = [line.split(",") for line in open(f"{local}/confusion.csv").read().splitlines()[1:]]
    matrix = [[int(v) for v in row[1:]] for row in rows]
    assert sum(map(sum, matrix)) == 100
    assert 100 - sum(matrix[i][i] for i in range(10)) == misses[2]


def test_tracking_disabled_leaves_no_store(tmp_path):
    proc = _cli(*TINY, "trainer.passes=1", "tracking.enabled=false", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "mlruns").exists()


def test_a_diverged_run_is_failed_with_its_pass(tmp_path):
    proc = _cli(
        *TINY, "trainer.passes=3", "optim.lr=1e38", "loss.mse=sum", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = _runs(_client(tmp_path))
    assert run.info.status == "FAILED"
    assert run.data.tags["diverged_at_pass"] == "1" and run.data.tags["zipnet.status"] == "diverged"
    assert [m.step for m in _client(tmp_path).get_metric_history(run.info.run_id, "train/loss")] == [1]


def test_a_grid_multirun_is_one_parent_with_a_child_per_job(tmp_path):
    proc = _cli(
        "-m",
        "model.init=sqrt,linear",
        "loss.mse=mean,sum",
        *TINY,
        "trainer.passes=1",
        f"hydra.sweep.dir={tmp_path}/multi",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    client = _client(tmp_path)
    (parent,) = _runs(client, "tags.`zipnet.role` = 'multirun'")
    children = _runs(client, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED" and len(children) == 4
    combos = {(c.data.params["model.init"], c.data.params["loss.mse"]) for c in children}
    assert combos == {("sqrt", "mean"), ("sqrt", "sum"), ("linear", "mean"), ("linear", "sum")}
    assert {c.data.tags["zipnet.job"] for c in children} == {"0", "1", "2", "3"}
    best = min(children, key=lambda c: c.data.metrics["test/error"])
    assert parent.data.metrics["sweep/children"] == 4
    assert parent.data.metrics["sweep/best_test/error"] == best.data.metrics["test/error"]


def test_population_members_are_logged_after_the_fact_under_a_parent(tmp_path):
    torch.set_num_threads(1)  # as trainer.threads does; tiny ops on 2 busy cores crawl with 2 threads
    tracker = tracking.Tracker(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "zipnet", figures=False)
    cfgs = [_compose(TINY + [f"optim.lr={lr}"]) for lr in (0.01, 0.05)]
    digits = load_digits(cfgs[0].data)
    results = train([checks.member(c) for c in cfgs], digits, passes=2, log=None)
    parent = tracker.start("population", role="multirun")
    ids = [
        tracker.log_result(r, c, [f"optim.lr={lr}"], digits, parent_run_id=parent)
        for r, c, lr in zip(results, cfgs, (0.01, 0.05))
    ]
    tracker.end(parent)
    client = tracker.client
    for run_id, result in zip(ids, results):
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent and run.info.status == "FINISHED"
        stored = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
        assert stored == [(row["pass"], row["train/loss"]) for row in result.history]
        assert {a.path for a in client.list_artifacts(run_id)} == {
            "config_resolved.yaml",
            "overrides.yaml",
            "weights.pt",
            "confusion.csv",
            "rejection.csv",
        }


def test_an_exception_fails_the_run_with_its_text_and_ctrl_c_kills_it(tmp_path, monkeypatch):
    import zipnet.runner as app

    tracker = tracking.Tracker(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "zipnet", figures=False)
    cfg = _compose(TINY + ["trainer.passes=1"])
    for raised, _ in ((RuntimeError("the trainer broke"), "FAILED"), (KeyboardInterrupt(), "KILLED")):

        def broken(*args, raised=raised, **kwargs):
            raise raised

        monkeypatch.setattr(app, "train", broken)
        with pytest.raises(type(raised)):
            tracked_run(cfg, tracker, [], log=lambda line: None)
    runs = sorted(_runs(tracker.client), key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs] == ["FAILED", "KILLED"]
    assert "the trainer broke" in runs[0].data.tags["zipnet.error"]
    assert runs[1].data.tags["zipnet.status"] == "killed"
    assert not tracking._OPEN
