"""zipnet-report and zipnet-reproduce on a real store: a tiny sweep plus a single run."""

import os
import statistics
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from zipnet import tracking
from zipnet.cli import report
from zipnet.cli.reproduce import COMPARED, ReproduceError, rebuild_overrides, reproduce
from zipnet.cli.sweep import run_sweep

TINY = ["data.n_train=200", "data.n_test=100", "trainer.passes=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A 6-trial study (two factors) and one plain zipnet-train run in one sqlite store."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    study = root / "rep.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "study": "rep",
                "n_trials": 6,
                "batch": 3,
                "sampler": {"name": "random", "seed": 5},
                "overrides": TINY,
                "space": {
                    "model.init": {"choices": ["sqrt", "linear"]},
                    "optim.lr": {"low": 0.01, "high": 0.1, "log": True},
                },
            }
        )
    )
    run_sweep(study, [f"tracking.uri={uri}", "tracking.figures=false"], log=lambda line: None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zipnet.cli.train",
            *TINY,
            "trainer.progress=off",
            "seed=3",
            f"tracking.uri={uri}",
            f"hydra.run.dir={root}/single",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    single = proc.stdout.strip().splitlines()[-1].split()[2]
    return {"root": root, "uri": uri, "client": MlflowClient(tracking_uri=uri), "single": single}


def _independent(client, filter_string):
    """Per run, from MLflow's API directly: last value of every metric, status and overrides."""
    exp = client.get_experiment_by_name("zipnet")
    rows = []
    for run in client.search_runs([exp.experiment_id], filter_string):
        if run.data.tags.get("zipnet.role") in ("study", "multirun"):
            continue
        last = {
            key: max(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step).value
            for key in ("train/error", "test/error", "train/misses", "test/misses", "train/loss", "test/loss")
        }
        rows.append(
            {
                "run_id": run.info.run_id,
                "status": run.data.tags["zipnet.status"],
                "overrides": run.data.tags["zipnet.overrides"],
                "params": run.data.params,
                **last,
            }
        )
    return rows


def test_the_leaderboard_matches_mlflow(store):
    df = report.load_runs(study="rep", tracking_uri=store["uri"])
    board = report.leaderboard(df, top=4)
    expected = sorted(
        _independent(store["client"], "tags.`zipnet.study` = 'rep'"),
        key=lambda r: (r["test/error"], r["test/loss"], r["run_id"]),
    )[:4]
    assert list(board["run_id"]) == [r["run_id"] for r in expected]
    for (_, row), exp in zip(board.iterrows(), expected):
        assert row["test/error"] == exp["test/error"] and row["train/error"] == exp["train/error"]
        assert row["test/misses"] == exp["test/misses"] and row["train/misses"] == exp["train/misses"]
        assert row["test/mse"] == exp["test/loss"] and row["train/mse"] == exp["train/loss"]
        assert row["overrides"] == exp["overrides"] and row["passes"] == 2
    assert list(board["rank"]) == [1, 2, 3, 4]


def test_the_effect_table_matches_mlflow(store):
    df = report.load_runs(study="rep", tracking_uri=store["uri"])
    table = report.effects(df)
    runs = _independent(store["client"], "tags.`zipnet.study` = 'rep'")
    assert set(table["factor"]) == {"model.init", "optim.lr"}
    for level in ("sqrt", "linear"):
        values = [r["test/error"] for r in runs if r["params"]["model.init"] == level]
        row = table[(table["factor"] == "model.init") & (table["level"] == level)]
        if not values:
            assert row.empty
            continue
        assert int(row["runs"].iloc[0]) == len(values)
        assert row["mean test/error"].iloc[0] == pytest.approx(statistics.mean(values))
        if len(values) > 1:
            assert row["std test/error"].iloc[0] == pytest.approx(statistics.stdev(values))
    lr = table[table["factor"] == "optim.lr"]
    assert lr["runs"].sum() == 6 and len(lr) <= 4  # six distinct lrs fall into quartile bins


def test_ranking_by_the_gap_to_the_paper_and_the_summary_match_mlflow(store):
    from zipnet import paper

    df = report.load_runs(study="rep", tracking_uri=store["uri"])
    runs = [r for r in _independent(store["client"], "tags.`zipnet.study` = 'rep'") if r["status"] == "finished"]
    gaps = {r["run_id"]: paper.gap(r, 200, 100) for r in runs}  # recomputed from the logged figures
    board = report.leaderboard(df, top=3, by="paper/gap")
    assert list(board["run_id"]) == sorted(gaps, key=lambda k: (gaps[k], k))[:3]
    assert list(board["paper/gap"]) == pytest.approx([gaps[k] for k in board["run_id"]], rel=1e-6)
    totals = report.summary(df).set_index("metric")
    for metric in ("train/error", "test/error", "test/loss"):
        values = [r[metric] for r in runs]
        assert totals.loc[metric, "runs"] == len(values)
        assert totals.loc[metric, "mean"] == pytest.approx(statistics.mean(values))
        assert totals.loc[metric, "std"] == pytest.approx(statistics.stdev(values))
        assert (totals.loc[metric, "min"], totals.loc[metric, "max"]) == (min(values), max(values))


def test_the_cli_writes_csv_and_markdown_and_filters_by_tag(store, tmp_path):
    out = tmp_path / "rep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zipnet.cli.report",
            "--tracking-uri",
            store["uri"],
            "--tag",
            "zipnet.role=run",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board["run_id"]) == [store["single"]]
    assert (out / "leaderboard.md").read_text().startswith("| rank | run_id |")
    assert (out / "effects.md").exists() and (out / "effects.csv").exists() and (out / "summary.md").exists()
    assert "## Leaderboard" in proc.stdout and store["single"] in proc.stdout
    by_param = report.load_runs(params={"seed": "3"}, tracking_uri=store["uri"])  # the single run's config
    assert list(by_param["run_id"]) == [store["single"]]


def test_reproduce_the_best_trial_of_a_study_exactly(store):
    lines = []
    assert reproduce(best="rep", tracking_uri=store["uri"], log=lines.append)
    assert lines[1].startswith("command: zipnet-train data.n_train=200 data.n_test=100 trainer.passes=2 ")
    assert all(any(line.strip().startswith(key) and "match (2 passes)" in line for line in lines) for key in COMPARED)


def test_reproduce_a_single_run_by_its_command_exactly(store):
    proc = subprocess.run(
        [sys.executable, "-m", "zipnet.cli.reproduce", store["single"], "--tracking-uri", store["uri"]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "command: zipnet-train data.n_train=200 data.n_test=100 trainer.passes=2 seed=3" in proc.stdout
    assert proc.stdout.count("match (2 passes)") == len(COMPARED) and "reproduced exactly" in proc.stdout


def test_reproduce_reports_a_mismatch_per_metric(store):
    """A run whose stored misses disagree with what its config trains is caught."""
    client, tracker = store["client"], tracking.Tracker(store["uri"], figures=False)
    source = client.get_run(store["single"])
    cfg_path = client.download_artifacts(store["single"], "config_resolved.yaml")
    from omegaconf import OmegaConf

    from zipnet.engine import RunResult

    history = []
    for step in (1, 2):
        row = {"pass": step}
        for key in tracking.METRICS:
            row[key] = [m.value for m in client.get_metric_history(store["single"], key) if m.step == step][0]
        history.append(row)
    history[1]["test/misses"] += 1
    fake = RunResult(member=None, history=history, status="finished")
    run_id = tracker.log_result(fake, OmegaConf.load(cfg_path), source.data.tags["zipnet.overrides"].split())
    tracker.flush()  # the writer logs in the background; reproduce reads through a client of its own
    lines = []
    assert not reproduce(run_id, tracking_uri=store["uri"], log=lines.append)
    bad = [line for line in lines if "MISMATCH" in line]
    assert len(bad) == 1 and "test/misses" in bad[0] and "pass 2" in bad[0]
    assert lines[-1].endswith("NOT reproduced")


def test_rebuilt_overrides_cover_a_changed_default(store):
    client = store["client"]
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(client.download_artifacts(store["single"], "config_resolved.yaml")))
    cfg["model"]["init_gain"] = 2.0  # as if conf/ had changed its default since the run
    overrides = rebuild_overrides(cfg, TINY + ["seed=3", "tracking.uri=x"])
    assert overrides == TINY + ["seed=3", "model.init_gain=2.0"]
    cfg["model"]["gone"] = 1
    with pytest.raises(ReproduceError, match="model.gone"):
        rebuild_overrides(cfg, TINY)


def test_reproduce_a_trial_whose_population_shrank_by_pruning(tmp_path):
    """12 members per batch (the compiled kernel where available); the second batch loses
    members to the pruner after pass 1, and a survivor still reproduces exactly."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    study = tmp_path / "shrink.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "study": "shrink",
                "n_trials": 24,
                "batch": 12,
                "sampler": {"name": "random", "seed": 0},
                "pruner": {"name": "median", "n_startup_trials": 0, "n_warmup_steps": 0},
                "overrides": ["data.n_train=300", "data.n_test=100", "trainer.passes=3"],
                "space": {
                    "optim.lr": {"low": 1e-6, "high": 0.1, "log": True},
                    "model.init": {"choices": ["sqrt", "linear"]},
                },
            }
        )
    )
    run_sweep(study, [f"tracking.uri={uri}", "tracking.figures=false"], log=lambda line: None)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("zipnet")
    shrunk = [
        r
        for r in client.search_runs([exp.experiment_id], "tags.`zipnet.status` = 'finished'")
        if r.data.tags["zipnet.population_sizes"].split(",")[0] == "12"
        and len(set(r.data.tags["zipnet.population_sizes"].split(","))) > 1
    ]
    assert shrunk, "the second batch should have lost members to the pruner"
    pruned = client.search_runs([exp.experiment_id], "tags.`zipnet.status` = 'pruned'")
    assert pruned
    for run in shrunk + pruned[:2]:  # survivors at their new places, and members that left
        lines = []
        assert reproduce(run.info.run_id, tracking_uri=uri, log=lines.append), lines
        assert any("rerunning it among as many copies" in line for line in lines)


def test_reading_a_store_leaves_the_environment_alone(store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    report.load_runs(study="rep", tracking_uri=store["uri"])
    assert "MLFLOW_TRACKING_URI" not in os.environ  # subprocesses must not inherit the report's store


def test_levels_bin_in_numeric_order_and_keep_runs_without_the_key():
    values = pd.Series([1e-5, 2e-5, 3e-4, 4e-4, 5e-3, 6e-3, 7e-2, 8e-2, None, None], dtype=object)
    levels = report._levels(values)
    assert list(levels[8:]) == ["(not set)", "(not set)"]
    order = list(levels.cat.categories)
    assert order[-1] == "(not set)" and len(order) == 5
    lows = [float(label.split(" to ")[0]) for label in order[:-1]]
    assert lows == sorted(lows) and lows[0] == 1e-5  # "1e-05 to ..." comes first, not last


# -- a study named with a quote, with a linked target pair, made through the Tracker API ----

SPACE = {
    "model.init": ["sqrt", "linear"],
    "optim.lr": [0.01, 0.05],
    "targets": {
        "pm0.6": ["data.target_negative=-0.6", "data.target_positive=0.6"],
        "pm1.0": ["data.target_negative=-1.0", "data.target_positive=1.0"],
    },
}


@pytest.fixture(scope="module")
def quoted(tmp_path_factory):
    """Study "it's": 6 trials of a real Optuna study in sqlite, one population, logged as a sweep does."""
    from tracked_stores import study

    root = tmp_path_factory.mktemp("quoted")
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    tracker = tracking.Tracker(uri, figures=False)
    parent, ids, optuna_study = study(tracker, "it's", f"sqlite:///{root}/mlruns/optuna.db", SPACE, n_trials=6)
    return {
        "root": root,
        "uri": uri,
        "client": MlflowClient(tracking_uri=uri),
        "parent": parent,
        "ids": ids,
        "study": optuna_study,
    }


def test_a_study_named_with_a_quote_is_reported_with_linked_keys_quartiles_and_plots(quoted, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zipnet.cli.report",
            "--study",
            "it's",
            "--tracking-uri",
            quoted["uri"],
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(board["run_id"]) == sorted(quoted["ids"])
    table = pd.read_csv(out / "effects.csv")
    trials = {t.number: t for t in quoted["study"].trials}
    runs = {
        r.info.run_id: r
        for r in quoted["client"].search_runs(
            [quoted["client"].get_experiment_by_name("zipnet").experiment_id], "tags.`zipnet.role` = 'trial'"
        )
    }
    assert set(table["factor"]) <= {"model.init", "optim.lr", "targets"} and "targets" in set(table["factor"])
    assert set(table[table["factor"] == "targets"]["level"]) == {"pm0.6", "pm1.0"}
    for label in ("pm0.6", "pm1.0"):
        values = [
            r.data.metrics["test/error"]
            for r in runs.values()
            if trials[int(r.data.tags["zipnet.trial"])].params["targets"] == label
        ]
        row = table[(table["factor"] == "targets") & (table["level"] == label)].iloc[0]
        q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
        assert row["runs"] == len(values)
        assert (row["median test/error"], row["q1 test/error"], row["q3 test/error"]) == pytest.approx((median, q1, q3))
        assert row["mean test/error"] == pytest.approx(statistics.mean(values))
    assert (out / "effect_targets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    importances = pd.read_csv(out / "importances.csv")
    assert set(importances["param"]) == set(SPACE)
    assert "median [q1, q3] test/error" in (out / "effects.md").read_text()
    logged = {a.path for a in quoted["client"].list_artifacts(quoted["parent"], "report")}
    assert {"report/effects.csv", "report/effect_targets.png", "report/importances.csv"} <= logged


def test_the_best_trial_of_a_study_named_with_a_quote_reproduces_and_registers(quoted):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zipnet.cli.reproduce",
            "--best",
            "it's",
            "--register",
            "zipnet-best",
            "--tracking-uri",
            quoted["uri"],
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    best = min(quoted["study"].trials, key=lambda t: (t.value, t.number))
    client = quoted["client"]
    (version,) = client.search_model_versions("name = 'zipnet-best'")
    run = client.get_run(version.run_id)
    assert run.data.tags["zipnet.study"] == "it's" and run.data.metrics["test/error"] == best.value
    assert version.tags["zipnet.study"] == "it's" and version.tags["zipnet.run_id"] == version.run_id
    assert version.tags["zipnet.trial"] == run.data.tags["zipnet.trial"]
    assert version.tags["zipnet.reproduction"] == "reproduced exactly"
    assert f"registered: models:/zipnet-best/{version.version}" in proc.stdout


def test_a_name_no_filter_can_hold_is_one_line(quoted):
    proc = subprocess.run(
        [sys.executable, "-m", "zipnet.cli.report", "--study", 'it\'s "quoted"', "--tracking-uri", quoted["uri"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("zipnet-report: error: ")
    assert "both ' and \"" in proc.stderr
