"""zipnet-report --paired on a real store: a grid of tiny runs trained by zipnet-train -m with
tracking on, checked against what MLflow's API and the runs' artifacts say, worked out here."""

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from scipy import stats as scipy_stats

from zipnet.cli import report

TINY = ["data.n_train=200", "data.n_test=100", "trainer.passes=2", "trainer.progress=off", "tracking.figures=false"]
SEEDS, DATA_SEEDS = (0, 1, 2), (0, 1)


def _cli(module, *args, cwd):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """12 runs of one grid (model.init x seed x data.seed, one parent) and one run at another lr
    that pairs with none of them, in one sqlite store."""
    root = tmp_path_factory.mktemp("paired")
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    grid = [
        "-m",
        "hydra/launcher=population",
        "model.init=sqrt,linear",
        f"seed={','.join(map(str, SEEDS))}",
        f"data.seed={','.join(map(str, DATA_SEEDS))}",
    ]
    for args in (grid, ["model.init=linear", "optim.lr=0.05", f"hydra.run.dir={root}/single"]):
        proc = _cli("zipnet.cli.train", *args, *TINY, f"tracking.uri={uri}", f"hydra.sweep.dir={root}/grid", cwd=root)
        assert proc.returncode == 0, proc.stderr
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("zipnet")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`zipnet.role` = 'multirun'")
    return {"root": root, "uri": uri, "client": client, "experiment": exp, "parent": parent.info.run_id}


def _final(client, run_id, key):
    return max(client.get_metric_history(run_id, key), key=lambda m: m.step).value


def _expected(client, experiment):
    """Per (seed, data.seed), the sqrt and linear runs of the grid, from MLflow's API: their final
    test error and test loss, and their misclassified test digits from test_misses.json."""
    cells = {}
    for run in client.search_runs([experiment.experiment_id], "tags.`zipnet.role` = 'job'"):
        p = run.data.params
        assert p["data.deslant"] == "false"  # the key is in the run's config (JSON for bools)
        local = client.download_artifacts(run.info.run_id, "test_misses.json")
        with open(local) as fh:
            misses = json.load(fh)
        assert len(misses["misses"]) == _final(client, run.info.run_id, "test/misses")
        cells.setdefault((p["seed"], p["data.seed"]), {})[p["model.init"]] = {
            "error": _final(client, run.info.run_id, "test/error"),
            "loss": _final(client, run.info.run_id, "test/loss"),
            "misses": set(misses["misses"]),
            "labels": misses["labels_sha256"],
        }
    assert len(cells) == len(SEEDS) * len(DATA_SEEDS)
    return cells


def _interval(d):
    half = scipy_stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d))
    return np.mean(d), np.mean(d) - half, np.mean(d) + half


@pytest.mark.parametrize("selection", ["parent", "experiment"])
def test_paired_differences_match_the_runs_metrics_and_misses(store, selection, tmp_path):
    out = tmp_path / "report"
    where = ["--parent", store["parent"]] if selection == "parent" else []
    proc = _cli(
        "zipnet.cli.report",
        *where,
        "--paired",
        "model.init",
        "--tracking-uri",
        store["uri"],
        "--out",
        str(out),
        cwd=store["root"],
    )
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "paired.csv")
    assert len(table) == 1  # two levels, in text order: linear, then sqrt
    row = table.iloc[0]
    assert (row["factor"], row["a"], row["b"], row["pairs"], row["left out"]) == ("model.init", "linear", "sqrt", 6, 0)
    cells = _expected(store["client"], store["experiment"])
    for metric, name in (("test/error", "error"), ("test/loss", "loss")):
        d = [cell["sqrt"][name] - cell["linear"][name] for cell in cells.values()]
        mean, low, high = _interval(d)
        assert row[f"mean Δ {metric}"] == pytest.approx(mean, rel=1e-9, abs=1e-12)
        assert row[f"low Δ {metric}"] == pytest.approx(low, rel=1e-6, abs=1e-9)
        assert row[f"high Δ {metric}"] == pytest.approx(high, rel=1e-6, abs=1e-9)
    assert all(cell["sqrt"]["labels"] == cell["linear"]["labels"] for cell in cells.values())
    a_only = sum(len(c["sqrt"]["misses"] - c["linear"]["misses"]) for c in cells.values())  # right only under linear
    b_only = sum(len(c["linear"]["misses"] - c["sqrt"]["misses"]) for c in cells.values())
    assert (row["a only"], row["b only"], row["mcnemar pairs"]) == (a_only, b_only, 6)
    p = 1.0 if a_only + b_only == 0 else scipy_stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert row["mcnemar p"] == pytest.approx(min(1.0, p), rel=1e-9)
    assert "## Paired differences: model.init" in proc.stdout and "| linear | sqrt | 6 |" in proc.stdout
    assert (out / "paired.md").read_text().startswith("Δ = b - a over runs that share every config key but model.init")


def test_a_run_without_test_misses_leaves_mcnemar_and_the_intervals_stand(store):
    df = report.load_runs(parent=store["parent"], tracking_uri=store["uri"])
    read = report.run_misses(store["uri"])
    dropped = df["run_id"].iloc[0]
    table = report.paired(df, "model.init", misses=lambda run_id: None if run_id == dropped else read(run_id))
    full = report.paired(df, "model.init", misses=read)
    assert table.iloc[0]["mcnemar pairs"] == 5 and full.iloc[0]["mcnemar pairs"] == 6
    assert table.iloc[0]["mean Δ test/error"] == full.iloc[0]["mean Δ test/error"]
    none = report.paired(df, "model.init")  # no reader: no McNemar at all
    assert none.iloc[0]["mcnemar pairs"] == 0 and "n/a" in report.paired_markdown(none, report.PAIR_BY)


def test_a_repeated_config_is_left_out_not_paired_twice(store):
    df = report.load_runs(parent=store["parent"], tracking_uri=store["uri"])
    twice = pd.concat([df, df.iloc[[0]].assign(run_id="copy")], ignore_index=True)
    row = report.paired(twice, "model.init").iloc[0]
    assert row["pairs"] == 5 and row["left out"] == 2


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--paired", "model.int"], "--paired 'model.int' is not a config key of the selected runs"),
        (["--paired", "optim.lr"], "--paired 'optim.lr' has one value (0.03) in every selected run"),
        (["--paired", "model.init", "--pair-by", "seed,data.sed"], "--pair-by 'data.sed' is not a config key"),
    ],
)
def test_a_bad_factor_is_one_line_naming_it_and_the_keys_that_vary(store, args, expect, tmp_path):
    proc = _cli(
        "zipnet.cli.report",
        "--parent",
        store["parent"],
        *args,
        "--tracking-uri",
        store["uri"],
        "--out",
        str(tmp_path / "r"),
        cwd=store["root"],
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"zipnet-report: error: {expect}")
    assert lines[0].endswith("keys that vary between them: data.seed, model.init, seed")
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_every_two_levels_are_compared_in_numeric_order():
    rows = []
    for seed, lr in itertools.product(range(3), ("0.1", "0.02", "0.3")):
        rows.append(
            {
                "run_id": f"{seed}-{lr}",
                "tags.zipnet.status": "finished",
                "params.seed": str(seed),
                "params.data.seed": "0",
                "params.optim.lr": lr,
                "metrics.test/error": float(lr) * 10 + seed,
                "metrics.test/loss": float(lr) + 0.01 * seed * float(lr),
            }
        )
    table = report.paired(pd.DataFrame(rows), "optim.lr")
    assert [(r.a, r.b) for r in table.itertuples()] == [("0.02", "0.1"), ("0.02", "0.3"), ("0.1", "0.3")]
    assert table["mean Δ test/error"].tolist() == pytest.approx([0.8, 2.8, 2.0])
    assert table["low Δ test/error"].tolist() == pytest.approx([0.8, 2.8, 2.0])  # no spread: a point interval
    assert list(table["pairs"]) == [3, 3, 3] and table["mcnemar pairs"].tolist() == [0, 0, 0]


def test_keys_that_change_together_are_one_factor():
    """SDLM at its rate and mu against SGD at its rate: a pair cannot hold optim.lr or optim.mu
    equal, so they join the factor optim.name (they change with it in every run); named
    together, the same. A level names every value, a key SGD lacks as "(not set)"."""
    rows = []
    for seed, (name, lr, mu) in itertools.product(range(4), (("sgd", "0.02", None), ("sdlm", "0.0014", "0.1"))):
        rows.append(
            {
                "run_id": f"{seed}-{name}",
                "tags.zipnet.status": "finished",
                "params.seed": str(seed),
                "params.data.seed": "0",
                "params.optim.name": name,
                "params.optim.lr": lr,
                "params.optim.mu": mu,
                "metrics.test/error": 5.0 + seed + (0.5 if name == "sgd" else 0.0),
                "metrics.test/loss": 0.02,
            }
        )
    df = pd.DataFrame(rows)
    # the keys named first, then those that join them in their order
    for factor, keys in (
        ("optim.name", "optim.name,optim.lr,optim.mu"),
        ("optim.mu,optim.name", "optim.mu,optim.name,optim.lr"),
    ):
        table = report.paired(df, factor)
        level = {"sdlm": {"optim.name": "sdlm", "optim.lr": "0.0014", "optim.mu": "0.1"}}
        level["sgd"] = {"optim.name": "sgd", "optim.lr": "0.02", "optim.mu": "(not set)"}
        shown = {name: ", ".join(values[k] for k in keys.split(",")) for name, values in level.items()}
        assert table["factor"].tolist() == [keys]
        (row,) = table.itertuples()
        assert sorted([row.a, row.b]) == sorted(shown.values()) and row.pairs == 4
        sign = 1.0 if row.b == shown["sgd"] else -1.0  # b - a, SGD 0.5 points above SDLM in every seed
        assert table["mean Δ test/error"].tolist() == pytest.approx([0.5 * sign])
    with pytest.raises(report.PairingError, match="--paired 'seed' is also a --pair-by key"):
        report.paired(df, "optim.name,seed")


def test_a_key_one_level_lacks_changes_with_the_keys_it_goes_with():
    """SGD runs have no optim.mu: the key still groups with optim.name in the effects view, and
    its level reads "(not set)" (pandas keeps a missing value missing through astype(str))."""
    rows = [
        {"run_id": f"{s}-{n}", "tags.zipnet.status": "finished", "params.seed": str(s), "params.optim.name": n}
        | {"params.optim.mu": mu, "metrics.test/error": 5.0 + s}
        for s in range(3)
        for n, mu in (("sgd", None), ("sdlm", "0.1"))
    ]
    df = pd.DataFrame(rows)
    assert [f.keys for f in report.factors(df)] == [("optim.mu", "optim.name"), ("seed",)]
    table = report.effects(df, "test/error")
    assert set(table["level"]) >= {"(not set), sgd", "0.1, sdlm"}
