"""MLflow tracking against real stores in temp dirs: single runs, multiruns, after-the-fact
population logging, how runs end, stores that cannot open, filters, system metrics, the
experiment's UI view and an Optuna study's views."""

import contextlib
import csv
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from zipnet import config as checks
from zipnet import tracking
from zipnet.cli.train import CONF_DIR, tracked_run
from zipnet.data import load_digits
from zipnet.engine import Member, RunResult, train
from zipnet.errors import StoreError
from zipnet.tracking import runs as tracked_runs

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
    "test_misses.json",
}


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "zipnet.cli.train", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
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
    wrong = json.loads(open(f"{local}/test_misses.json").read())
    assert wrong["n_test"] == 100 and len(wrong["misses"]) == misses[2] == len(set(wrong["misses"]))
    labels = load_digits(cfg.data).test_y
    assert wrong["labels_sha256"] == hashlib.sha256(labels.numpy().astype("<i8").tobytes()).hexdigest()
    true_label = {int(i): int(labels[i]) for i in wrong["misses"]}
    off_diagonal = sum(matrix[i][j] for i in range(10) for j in range(10) if i != j)
    assert off_diagonal == len(true_label) and all(0 <= i < 100 for i in true_label)
    for digit in range(10):  # the misses of each true digit: its row of the confusion matrix less the diagonal
        assert sum(v == digit for v in true_label.values()) == sum(matrix[digit]) - matrix[digit][digit]
    # the process ends without closing its connections: its write-ahead log is in the database file
    shutil.copyfile(tmp_path / "mlruns" / "mlflow.db", tmp_path / "alone.db")
    with contextlib.closing(sqlite3.connect(tmp_path / "alone.db")) as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("FINISHED",)]


def _schema(path):
    """Each table's columns (name, type, not null, key) and indexes (name, unique, columns): the
    CREATE statements' text is left out, as alembic's table rebuilds may word a CHECK differently."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        out = {}
        for table in sorted(t for t in tables if not t.startswith("sqlite_")):
            columns = [(c[1], c[2], c[3], c[5]) for c in db.execute(f"PRAGMA table_info('{table}')")]
            indexes = []
            for _, name, unique, *_ in db.execute(f"PRAGMA index_list('{table}')"):
                indexes.append((name, unique, [c[2] for c in db.execute(f"PRAGMA index_info('{name}')")]))
            out[table] = (columns, sorted(indexes))
        return out


def test_a_new_sqlite_store_is_a_copy_of_a_template_at_mlflows_head_made_once_per_version(tmp_path, monkeypatch):
    import mlflow
    from mlflow.store.db import utils

    monkeypatch.setenv("ZIPNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    head = utils._get_latest_schema_revision()
    stale = tmp_path / "cache" / f"mlflow-0.0.1-{head}.db"  # another MLflow's: never read
    stale.parent.mkdir()
    stale.write_text("not a database")
    uri = tracking.resolve_uri(f"sqlite:///{tmp_path}/a/mlflow.db")
    client = tracked_runs.store.open_client(uri)
    made = tmp_path / "cache" / f"mlflow-{mlflow.__version__}-{head}.db"
    assert made.is_file() and stale.read_text() == "not a database"
    # MLflow's own new store, from the same folder: the same tables, revision and Default experiment
    own = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/b/mlflow.db")
    own.search_experiments()
    assert _schema(tmp_path / "a" / "mlflow.db") == _schema(tmp_path / "b" / "mlflow.db")
    with contextlib.closing(sqlite3.connect(tmp_path / "a" / "mlflow.db")) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
    assert client.get_experiment("0").artifact_location == own.get_experiment("0").artifact_location
    # a run logs into it and reads back
    experiment = tracked_runs.store.experiment_id(client, "zipnet", uri)
    run_id = client.create_run(experiment).info.run_id
    client.log_metric(run_id, "test/error", 5.0, step=1)
    client.set_terminated(run_id)
    again = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert again.info.status == "FINISHED" and again.data.metrics == {"test/error": 5.0}
    before = made.stat().st_mtime_ns  # the next new store copies the same template
    tracked_runs.store.open_client(tracking.resolve_uri(f"sqlite:///{tmp_path}/c/mlflow.db"))
    assert made.stat().st_mtime_ns == before and _schema(tmp_path / "c" / "mlflow.db") == _schema(made)


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


@pytest.fixture
def one_thread():
    """As trainer.threads does; tiny ops on 2 busy cores crawl with 2 threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_population_members_are_logged_after_the_fact_under_a_parent(tmp_path, one_thread):
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
            "test_misses.json",
        }
        assert len(run.outputs.model_outputs) == 1 and len(run.inputs.dataset_inputs) == 2


def test_an_exception_fails_the_run_with_its_text_and_ctrl_c_kills_it(tmp_path, monkeypatch):
    import zipnet.runner as app

    tracker = tracking.Tracker(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "zipnet", figures=False)
    cfg = _compose(TINY + ["trainer.passes=1"])
    for raised in (RuntimeError("the trainer broke"), KeyboardInterrupt()):

        def broken(*args, raised=raised, **kwargs):
            raise raised

        monkeypatch.setattr(app, "train", broken)
        with pytest.raises(type(raised)):
            tracked_run(cfg, tracker, [], log=lambda line: None)
    runs = sorted(_runs(tracker.client), key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs] == ["FAILED", "KILLED"]
    assert "the trainer broke" in runs[0].data.tags["zipnet.error"]
    assert runs[1].data.tags["zipnet.status"] == "killed"
    assert not tracked_runs._OPEN


# -- stores that cannot open: one line naming the store and the way out, nothing trained --


def _one_line_naming(err: StoreError, *words: str) -> None:
    text = str(err)
    assert "\n" not in text and "tracking.enabled=false" in text, text
    for word in words:
        assert word in text, text


def test_a_corrupt_sqlite_store_is_one_line_before_anything_runs(tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(b"this is not an sqlite database" * 100)
    cfg = _compose(TINY + [f"tracking.uri=sqlite:///{db}"])
    with pytest.raises(StoreError) as caught:
        tracking.Tracker.from_config(cfg)
    _one_line_naming(caught.value, str(db), "not a readable SQLite database")


def test_an_sqlite_file_of_another_program_is_refused(tmp_path):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(StoreError) as caught:
        tracking.Tracker(f"sqlite:///{db}")
    _one_line_naming(caught.value, str(db), "not an MLflow store")


def test_a_read_only_store_folder_is_one_line(tmp_path):
    """Root writes through any mode bits, so as root the folder is a read-only bind mount in a
    mount namespace of the child's own; otherwise its mode bits make it read-only."""
    folder = tmp_path / "ro"
    folder.mkdir()
    code = textwrap.dedent(f"""
        from zipnet import tracking
        from zipnet.errors import StoreError
        try:
            tracking.Tracker("sqlite:///{folder}/mlflow.db")
        except StoreError as err:
            print(err)
            raise SystemExit(2)
    """)
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare(1): no way to make a folder read-only to root")
        mount = f'mount --bind -o ro {folder} {folder} && exec "$0" "$@"'
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, *command]
    else:
        folder.chmod(0o555)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        folder.chmod(0o755)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stdout.strip().splitlines()
    assert str(folder) in line and "cannot write" in line and "tracking.enabled=false" in line
    assert sorted(p.name for p in folder.iterdir()) == []


def test_an_unreachable_server_is_one_line(tmp_path):
    from servers import free_port

    port = free_port()  # nothing listens on it
    with pytest.raises(StoreError) as caught:
        tracking.Tracker(f"http://127.0.0.1:{port}")
    _one_line_naming(caught.value, f"http://127.0.0.1:{port}", "does not answer")


# -- the store, filters, the UI ------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One store for the tests below (a new sqlite store costs seconds); each test its own experiment."""
    root = tmp_path_factory.mktemp("shared")
    return {"root": root, "uri": f"sqlite:///{root}/mlruns/mlflow.db"}


def test_the_experiment_opens_on_mlflows_runs_view(shared):
    tracker = tracking.Tracker(shared["uri"], "it's a view", figures=False)
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location == (shared["root"] / "mlruns" / "artifacts" / "it_s_a_view").as_uri()
    link = tracking.ui_link("http://127.0.0.1:5000", tracker.experiment_id)
    assert link == f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"


def test_filters_match_values_with_quotes_and_backslashes_exactly(shared):
    tracker = tracking.Tracker(shared["uri"], "filters", figures=False)
    names = ["it's", 'say "hi"', "back\\slash", "it", "plain"]
    ids = {name: tracker.start(name, tags={"zipnet.study": name}, watch=False) for name in names}
    for name in names:
        found = tracking.search_runs(
            tracker.uri,
            experiment_ids=[tracker.experiment_id],
            filter_string=tracking.where(tags={"zipnet.study": name}),
        )
        assert list(found["run_id"]) == [ids[name]], name
    others = tracking.search_runs(
        tracker.uri,
        experiment_ids=[tracker.experiment_id],
        filter_string=tracking.where(not_tags={"zipnet.study": ["it's", "plain"]}),
    )
    assert set(others["run_id"]) == {ids[n] for n in names if n not in ("it's", "plain")}
    with pytest.raises(ValueError, match="both"):
        tracking.quote('it\'s "both"')
    for run_id in ids.values():
        tracker.end(run_id)


# -- the background writer: ends after artifacts, never exits with work pending ------------


def test_a_process_that_exits_at_once_still_ends_its_run_after_the_artifacts(tmp_path):
    code = textwrap.dedent(f"""
        import torch
        from hydra import compose, initialize_config_dir
        from zipnet import config as checks, tracking
        from zipnet.data import load_digits
        from zipnet.engine import train
        from zipnet.cli.train import CONF_DIR
        torch.set_num_threads(1)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides={TINY + ["trainer.passes=1"]!r})
        digits = load_digits(cfg.data)
        (result,) = train([checks.member(cfg)], digits, passes=1, log=None)
        tracker = tracking.Tracker("sqlite:///{tmp_path}/mlruns/mlflow.db")
        print(tracker.log_result(result, cfg, [], digits))   # queued: figures, model, end
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _client(tmp_path).get_run(proc.stdout.split()[-1])
    assert run.info.status == "FINISHED" and run.data.tags["zipnet.status"] == "finished"
    assert {a.path for a in _client(tmp_path).list_artifacts(run.info.run_id)} == ARTIFACTS
    assert len(run.outputs.model_outputs) == 1


def test_a_pruned_trial_keeps_metrics_and_config_and_draws_nothing(shared, one_thread):
    tracker = tracking.Tracker(shared["uri"], "pruned")
    cfg = _compose(TINY)
    digits = load_digits(cfg.data)
    (result,) = train([checks.member(cfg)], digits, passes=2, log=None, on_pass=lambda n, live: {0})
    assert result.status == "pruned"
    run_id = tracker.log_result(result, cfg, [], digits, role="trial")
    client = tracker.client
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["pruned_at_pass"] == "1"
    assert [m.step for m in client.get_metric_history(run_id, "test/error")] == [1]
    assert {a.path for a in client.list_artifacts(run_id)} == {
        "config_resolved.yaml",
        "overrides.yaml",
        "weights.pt",
        "confusion.csv",
        "rejection.csv",
        "test_misses.json",
    }
    assert not run.outputs.model_outputs


def test_what_the_writer_cannot_log_fails_the_run_with_the_reason(shared):
    tracker = tracking.Tracker(shared["uri"], "broken", figures=False)
    history = [{"pass": 1, **{key: 1.0 for key in tracking.METRICS}}]
    broken = RunResult(member=Member(), history=history, status="finished", params={"H1w": torch.zeros(3)})
    run_id = tracker.log_result(broken, _compose(TINY), [])
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["zipnet.error"].startswith("tracking: ")


def test_abort_open_runs_ends_them_killed_and_waits(shared):
    tracker = tracking.Tracker(shared["uri"], "aborted", figures=False)
    run_id = tracker.start("interrupted")
    tracker.log_pass(run_id, {"pass": 1, "train/loss": 0.5})
    tracking.abort_open_runs("KILLED", KeyboardInterrupt())
    run = tracker.client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["zipnet.status"] == "killed"
    assert run.data.metrics["train/loss"] == 0.5


# -- system metrics ------------------------------------------------------------------------


def test_runs_that_train_here_log_cpu_and_memory_trials_do_not(shared, monkeypatch):
    """MLflow's monitor, sampling every 0.1 s here (10 s by default): wait for its first sample."""
    import time

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    tracker = tracking.Tracker(shared["uri"], "system", figures=False)
    watched = {role: tracker.start(role, role=role) for role in ("run", "study")}
    trial = tracker.start("trial", role="trial")
    client = tracker.client
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
        client.get_metric_history(run_id, "system/cpu_utilization_percentage") for run_id in watched.values()
    ):
        time.sleep(0.1)
    for run_id in [*watched.values(), trial]:
        tracker.end(run_id)
    tracker.flush()
    for run_id in watched.values():
        metrics = client.get_run(run_id).data.metrics
        assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100 * os.cpu_count()
        assert metrics["system/system_memory_usage_megabytes"] > 0
    assert not any(key.startswith("system/") for key in client.get_run(trial).data.metrics)


# -- an Optuna study's views on its parent run -----------------------------------------------


def test_a_studys_views_are_logged_onto_its_parent(shared, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="views", storage=storage, sampler=optuna.samplers.RandomSampler(0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(
        lambda t: (
            (t.suggest_float("lr", 1e-3, 1e-1, log=True) - 0.01) ** 2
            + 0.1 * (t.suggest_categorical("init", ["sqrt", "linear"]) == "sqrt")
        ),
        n_trials=12,
    )
    tracker = tracking.Tracker(shared["uri"], "views", figures=False)
    parent = tracker.start("views", role="study", tags={"zipnet.study": "views"}, watch=False)
    reloaded = optuna.load_study(study_name="views", storage=storage)
    assert tracking.log_study(tracker, parent, reloaded) == {}
    tracker.end(parent)
    client = tracker.client
    names = {a.path for a in client.list_artifacts(parent)}
    assert names == {
        "trials.csv",
        "param_importances.csv",
        "optimization_history.png",
        "param_importances.png",
        "slice.png",
        "parallel_coordinate.png",
    }
    local = client.download_artifacts(parent, "", str(tmp_path / "dl"))
    with open(f"{local}/trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["number"]) for r in rows) == list(range(12))
    assert [float(r["value"]) for r in sorted(rows, key=lambda r: int(r["number"]))] == [t.value for t in study.trials]
    with open(f"{local}/param_importances.csv") as fh:
        importances = {r["param"]: float(r["importance"]) for r in csv.DictReader(fh)}
    assert importances == pytest.approx(optuna.importance.get_param_importances(reloaded))
    assert set(importances) == {"lr", "init"}
    for name in names - {"trials.csv", "param_importances.csv"}:
        with open(f"{local}/{name}", "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_make_dashboard_serves_the_studies_storage(tmp_path):
    """`make dashboard` runs optuna-dashboard over the sweep's plain Optuna storage, on 127.0.0.1."""
    import json
    import signal

    from servers import free_port, wait_for

    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="it's here", storage=storage).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2
    )
    port = free_port()
    dashboard = os.path.join(os.path.dirname(sys.executable), "optuna-dashboard")
    server = subprocess.Popen(
        [dashboard, storage, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        studies = json.loads(wait_for(f"http://127.0.0.1:{port}/api/studies", server, 60))["study_summaries"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert [s["study_name"] for s in studies] == ["it's here"]


def test_the_main_thread_imports_mlflow_only_once_the_trackers_worker_has(tmp_path):
    """A tracker imports mlflow on its worker while the data loads; a main-thread call that imports
    from mlflow before that import is done can get a half-initialised mlflow (CI saw reopen fail
    with "cannot import name 'Run' from partially initialized module 'mlflow.entities'"). The
    worker's open is held until the main thread first waits for the store, so a main-thread import
    ahead of it is seen every time, not by chance; Python's audit hook sees every fresh import."""
    script = textwrap.dedent(
        f"""
        import sys, threading
        from zipnet.tracking import runs

        go, opened, early = threading.Event(), threading.Event(), []

        def hook(event, args):
            if event == "import" and str(args[0]).startswith("mlflow") and not opened.is_set():
                if threading.current_thread() is threading.main_thread():
                    early.append(args[0])

        sys.addaudithook(hook)
        real_open, real_store = runs.Tracker._open, runs.Tracker._store

        def held_open(self):
            go.wait()
            try:
                return real_open(self)
            finally:
                opened.set()

        def store(self):
            go.set()  # the main thread waits for the store: the worker may open it now
            return real_store(self)

        runs.Tracker._open, runs.Tracker._store = held_open, store
        tracker = runs.Tracker("sqlite:///{tmp_path}/mlflow.db", figures=False, weights=False)
        assert tracker.reopen("0" * 32) is None  # no such run: the caller would start one
        tracker.close()
        print("early", early[:3])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "early []" in proc.stdout.splitlines(), proc.stdout
