"""The rejection curve (zipnet/rejection.py) against brute force, and as a tracked run logs it."""

import csv

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from zipnet import figures, rejection, tracking
from zipnet.cli import report
from zipnet.cli.train import CONF_DIR, tracked_run
from zipnet.data import load_digits


def _digits(rows):
    """Outputs and labels from (label, predicted, top, second) per digit: the predicted
    class gets `top`, the next class `second`, every other class -1."""
    outputs = np.full((len(rows), 10), -1.0)
    labels = np.zeros(len(rows), dtype=np.int64)
    for i, (label, predicted, top, second) in enumerate(rows):
        outputs[i, predicted] = top
        outputs[i, (predicted + 1) % 10] = second
        labels[i] = label
    return outputs, labels


def _brute_force(outputs, labels):
    """Rejection rate and error per count k, by explicit loops: margins from Python's sorted,
    digits ordered by (margin, index), misses among the rest counted one by one."""
    rows = [[float(v) for v in row] for row in outputs]
    n = len(rows)
    margin = [sorted(row)[-1] - sorted(row)[-2] for row in rows]
    predicted = [row.index(max(row)) for row in rows]
    order = sorted(range(n), key=lambda i: (margin[i], i))
    rates, errors = [], []
    for k in range(n + 1):
        accepted = order[k:]
        misses = 0
        for i in accepted:
            if predicted[i] != labels[i]:
                misses += 1
        rates.append(100 * k / n)
        errors.append(100 * misses / len(accepted) if accepted else 0.0)
    return rates, errors, margin, predicted


def _by_threshold(outputs, labels):
    """{rejected count: error %} for every threshold t: reject exactly the digits with margin < t."""
    _, _, margin, predicted = _brute_force(outputs, labels)
    points = {}
    for t in sorted(set(margin)) + [float("inf")]:
        accepted = [i for i in range(len(margin)) if not margin[i] < t]
        misses = sum(1 for i in accepted if predicted[i] != labels[i])
        points[len(margin) - len(accepted)] = 100 * misses / len(accepted) if accepted else 0.0
    return points


def _smallest_rate(rates, errors, target):
    for rate, err in zip(rates, errors):
        if err <= target:
            return rate
    raise AssertionError("the last point of a curve is always 0% error")


# (label, predicted, top, second): margins 0.5 W, 0.1 W, 0.9 R, 0.3 R, 0.7 R
HAND = [(3, 4, 0.9, 0.4), (1, 2, 0.3, 0.2), (5, 5, 1.0, 0.1), (7, 7, 0.5, 0.2), (0, 0, 0.8, 0.1)]


def test_a_hand_made_curve():
    outputs, labels = _digits(HAND)
    rates, errors = rejection.curve(outputs, labels)
    # rejected in order 1 (W), 3 (R), 0 (W), 4 (R), 2 (R)
    assert rates.tolist() == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    assert errors == pytest.approx([40.0, 25.0, 100 / 3, 0.0, 0.0, 0.0])
    assert rejection.reject_rate_at(outputs, labels) == 60.0
    assert rejection.reject_rate_at(outputs, labels, error=30.0) == 20.0  # before the curve rises again
    assert rejection.reject_rate_at(outputs, labels, error=40.0) == 0.0


def test_tied_margins_are_rejected_in_test_set_order():
    # four digits, all with margin 0.25: wrong, right, right, wrong
    outputs, labels = _digits([(1, 0, 0.5, 0.25), (1, 1, 0.5, 0.25), (2, 2, 0.5, 0.25), (0, 3, 0.5, 0.25)])
    rates, errors = rejection.curve(outputs, labels)
    assert errors == pytest.approx([50.0, 100 / 3, 50.0, 100.0, 0.0])
    assert rejection.reject_rate_at(outputs, labels, error=40.0) == 25.0
    # equal top two outputs: margin 0, rejected first; the prediction is the first of the two
    tie = np.full((2, 10), -1.0)
    tie[0, [6, 2]] = 0.5
    tie[1, 4] = 0.9
    rates, errors = rejection.curve(tie, np.array([2, 4]))
    assert errors.tolist() == [0.0, 0.0, 0.0]  # digit 0 is predicted 2, not 6 (argmax: the first)
    rates, errors = rejection.curve(tie, np.array([6, 4]))
    assert errors.tolist() == [50.0, 0.0, 0.0]


@pytest.mark.parametrize("seed", range(6))
def test_curve_and_rate_match_brute_force_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 41))
    outputs = np.round(rng.uniform(-1, 1, size=(n, 10)), 1)  # one decimal: many tied margins
    labels = np.where(rng.random(n) < 0.7, outputs.argmax(axis=1), rng.integers(0, 10, n))
    rates, errors = rejection.curve(outputs, labels)
    want_rates, want_errors, _, _ = _brute_force(outputs, labels)
    assert rates.tolist() == pytest.approx(want_rates, rel=1e-12, abs=0)
    assert errors.tolist() == pytest.approx(want_errors, rel=1e-12, abs=0)
    for k, err in _by_threshold(outputs, labels).items():  # every threshold is a point of the curve
        assert errors[k] == pytest.approx(err, rel=1e-12, abs=0)
    for target in (0.0, 1.0, 5.0, 10.0, 25.0, 100.0):
        assert rejection.reject_rate_at(outputs, labels, error=target) == _smallest_rate(
            want_rates, want_errors, target
        )


def test_all_correct_rejects_nothing_and_all_wrong_rejects_everything():
    outputs, labels = _digits([(d, d, 0.9, 0.1 * d - 0.5) for d in range(10)])
    rates, errors = rejection.curve(outputs, labels)
    assert not errors.any() and rejection.reject_rate_at(outputs, labels) == 0.0
    assert rejection.reject_rate_at(outputs, (labels + 1) % 10) == 100.0


def test_bad_arguments_are_named():
    outputs, labels = _digits(HAND)
    with pytest.raises(ValueError, match="labels"):
        rejection.curve(outputs, labels[:-1])
    with pytest.raises(ValueError, match="outputs"):
        rejection.curve(np.where(np.eye(5, 10) > 0, np.nan, outputs), labels)
    with pytest.raises(ValueError, match="outputs"):
        rejection.curve(outputs[:, :1], labels)
    with pytest.raises(ValueError, match="error"):
        rejection.reject_rate_at(outputs, labels, error=-1.0)


def test_the_figure_and_csv(tmp_path):
    outputs, labels = _digits(HAND)
    rates, errors = rejection.curve(outputs, labels)
    png = figures.rejection_curve(rates, errors, tmp_path / "rejection_curve.png", title="hand")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = figures.rejection_csv(rates, errors, tmp_path / "rejection.csv")
    table = pd.read_csv(path)
    assert list(table.columns) == ["reject_rate", "error"]
    assert table["reject_rate"].tolist() == rates.tolist() and table["error"].tolist() == errors.tolist()


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One tiny zipnet-train run (2 passes) streamed into a temp sqlite store, figures on."""
    root = tmp_path_factory.mktemp("rejection")
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    cfg = _compose(["data.n_train=200", "data.n_test=100", "trainer.passes=2", "trainer.progress=off"])
    tracker = tracking.Tracker(uri, "zipnet")
    result, run_id = tracked_run(cfg, tracker, [], log=lambda line: None)
    labels = load_digits(cfg.data).test_y.numpy()
    local = tracker.client.download_artifacts(run_id, "", str(root / "dl"))
    return {"uri": uri, "client": tracker.client, "run_id": run_id, "result": result, "labels": labels, "local": local}


def test_a_tracked_run_logs_the_curve_and_the_rate_at_1pct(tracked):
    client, run_id, result = tracked["client"], tracked["run_id"], tracked["result"]
    paths = {a.path for a in client.list_artifacts(run_id)}
    assert {"rejection_curve.png", "rejection.csv"} <= paths
    (metric,) = client.get_metric_history(run_id, tracking.REJECT_METRIC)
    assert metric.step == result.history[-1]["pass"] == 2
    outputs = result.test_outputs.numpy()
    assert metric.value == rejection.reject_rate_at(outputs, tracked["labels"])
    with open(f"{tracked['local']}/rejection.csv") as fh:
        rows = list(csv.DictReader(fh))
    rates = np.array([float(r["reject_rate"]) for r in rows])
    errors = np.array([float(r["error"]) for r in rows])
    assert len(rows) == len(tracked["labels"]) + 1
    want_rates, want_errors, _, _ = _brute_force(outputs, tracked["labels"])
    assert rates.tolist() == pytest.approx(want_rates, rel=1e-12, abs=0)
    assert errors.tolist() == pytest.approx(want_errors, rel=1e-12, abs=0)
    assert metric.value == _smallest_rate(rates, errors, 1.0)


def test_the_leaderboard_shows_the_rate_only_where_runs_have_it(tracked):
    df = report.load_runs(tracking_uri=tracked["uri"])
    board = report.leaderboard(df)
    assert board["test/reject_at_1pct"].tolist() == [
        tracked["client"].get_run(tracked["run_id"]).data.metrics[tracking.REJECT_METRIC]
    ]
    without = df.drop(columns=[f"metrics.{tracking.REJECT_METRIC}"])
    assert "test/reject_at_1pct" not in report.leaderboard(without).columns
