"""Grids: grouping into populations, hydra/launcher=population against the basic launcher, live
runs from the first pass, and a grid with a bad value."""

import json
import subprocess
import sys
import time

import pytest
import torch
from mlflow import MlflowClient

from zipnet import runner, tracking
from zipnet.config import compose

SMALL = ["data.n_train=300", "data.n_test=100", "trainer.passes=2", "tracking.enabled=false", "trainer.progress=off"]


def _strip(result):
    """A run's history without its wall times."""
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in result.history]


def _key(*overrides):
    return runner.population_key(runner.Job(compose(list(overrides))))


def test_populations_split_on_data_trainer_and_table_only():
    assert (
        _key(
            "optim.lr=0.1",
            "model.init=linear",
            "seed=3",
            "loss.mse=sum",
            "model.activation=scaled_tanh",
            "targets=pm0.6",
            "trainer.progress=off",
            "data.seed=2",  # each member reads its own sample
            "data.deslant=true",  # and its own digits
        )
        == _key()
    )
    for structural in ("data.n_train=100", "trainer.passes=3", "model.table=full", "optim=sdlm"):
        assert _key(structural) != _key(), structural


def test_run_keeps_order_and_trains_each_population_once():
    overrides = (["optim.lr=0.03"], ["data.n_train=200"], ["seed=5"], ["data.seed=1"])
    jobs = [runner.Job(compose(SMALL + o)) for o in overrides]
    lines = []
    runner.run(jobs, log=lines.append)
    assert [len(j.result.history) for j in jobs] == [2, 2, 2, 2]
    assert [j.result.population_sizes for j in jobs] == [[3, 3], [1, 1], [3, 3], [3, 3]]
    assert sum("population" in line and "members" in line for line in lines) == 2
    assert jobs[3].digits.fingerprint != jobs[0].digits.fingerprint  # its own sample, in the same population
    alone = runner.Job(compose(SMALL + ["data.seed=1"]))
    runner.run([alone], log=None)  # a member of a mixed-seed population equals its single run, bit for bit
    assert _strip(jobs[3].result) == _strip(alone.result)


def test_a_bad_value_trains_nothing():
    jobs = [runner.Job(compose(SMALL + o)) for o in (["optim.lr=0.03"], ["optim.lr=-1"])]
    with pytest.raises(Exception, match="optim.lr"):
        runner.run(jobs, log=None)
    assert all(j.result is None for j in jobs)


class _Peek(runner.Watcher):
    """Reads the job's MLflow run while training is still going on, then waits `pause` s."""

    def __init__(self, tracker, pause: float = 0.0):
        self.tracker, self.seen, self.pause = tracker, [], pause

    def on_pass(self, job, result):
        client = self.tracker.client  # waits for what the tracker has queued: the pass just logged
        run = client.get_run(job.run_id)
        history = client.get_metric_history(job.run_id, "test/error")
        self.seen.append((run.info.status, [m.step for m in history], len({m.timestamp for m in history})))
        time.sleep(self.pause)
        return False


def _live_runs(tmp_path, flush_seconds: float, pause: float = 0.0):
    tracker = tracking.Tracker(
        f"sqlite:///{tmp_path}/mlruns/mlflow.db", "zipnet", figures=False, weights=False, flush_seconds=flush_seconds
    )
    peeks = [_Peek(tracker, pause) for _ in range(3)]
    jobs = [
        runner.Job(
            compose(["data.n_train=300", "data.n_test=100", "trainer.passes=3", f"seed={k}"]),
            watchers=[runner.Tracked(tracker), peek],
        )
        for k, peek in enumerate(peeks)
    ]
    runner.run(jobs, log=None)
    return tracker, jobs, peeks


def test_live_metrics_are_coalesced_between_flushes_and_keep_each_pass_time(tmp_path):
    # the first pass is in the store at once; the next ones wait for the flush interval or the end
    tracker, jobs, peeks = _live_runs(tmp_path / "slow", flush_seconds=3600)
    for job, peek in zip(jobs, peeks):
        assert [(status, steps) for status, steps, _ in peek.seen] == [("RUNNING", [1])] * 3
        history = tracker.client.get_metric_history(job.run_id, "test/error")
        assert [m.step for m in history] == [1, 2, 3]
        assert [m.value for m in history] == [row["test/error"] for row in job.result.history]
    # an interval shorter than a pass (each peek waits 0.3 s): every pass flushes, stamped when it ended
    tracker, jobs, peeks = _live_runs(tmp_path / "fast", flush_seconds=0.2, pause=0.3)
    for job, peek in zip(jobs, peeks):
        assert [(status, steps) for status, steps, _ in peek.seen] == [
            ("RUNNING", [1]),
            ("RUNNING", [1, 2]),
            ("RUNNING", [1, 2, 3]),
        ]
        stamps = [m.timestamp for m in tracker.client.get_metric_history(job.run_id, "test/error")]
        assert stamps[1] - stamps[0] >= 300 and stamps[2] - stamps[1] >= 300


def test_every_member_has_a_live_run_from_its_first_pass(tmp_path):
    tracker = tracking.Tracker(
        f"sqlite:///{tmp_path}/mlruns/mlflow.db", "zipnet", figures=False, weights=False, flush_seconds=0
    )
    peeks = [_Peek(tracker) for _ in range(3)]
    jobs = [
        runner.Job(
            compose(["data.n_train=300", "data.n_test=100", "trainer.passes=3", f"seed={k}"]),
            watchers=[runner.Tracked(tracker), peek],
        )
        for k, peek in enumerate(peeks)
    ]
    runner.run(jobs, log=None)
    for job, peek in zip(jobs, peeks):
        assert job.result.population_sizes == [3, 3, 3]
        # each pass is in the store while the run is RUNNING, with its own timestamp
        assert [(status, steps) for status, steps, _ in peek.seen] == [
            ("RUNNING", [1]),
            ("RUNNING", [1, 2]),
            ("RUNNING", [1, 2, 3]),
        ]
        assert tracker.client.get_run(job.run_id).info.status == "FINISHED"


def _multirun(tmp_path, name, *extra, expect=0):
    args = [
        sys.executable,
        "-m",
        "zipnet.cli.train",
        "-m",
        *SMALL,
        "optim.lr=0.01,0.03",
        "model.init=sqrt,linear",
        f"hydra.sweep.dir={tmp_path}/{name}",
        *extra,
    ]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stderr[-3000:]
    jobs = sorted((tmp_path / name).glob("*/metrics.json"), key=lambda p: int(p.parent.name))
    return proc, [json.loads(p.read_text())["history"] for p in jobs]


def test_population_launcher_jobs_equal_their_basic_launcher_runs(tmp_path):
    # lr <= 0.03: at 0.1 this tiny set is chaotic, and float rounding that differs between
    # batched and single matrix products grows into different misses within a pass
    proc, together = _multirun(tmp_path, "population", "hydra/launcher=population")
    assert "population 1/1: 4 members" in proc.stderr + proc.stdout
    _, alone = _multirun(tmp_path, "basic")
    assert len(together) == len(alone) == 4
    for a, b in zip(together, alone):
        assert [r["train/misses"] for r in a] == [r["train/misses"] for r in b]
        assert [r["test/misses"] for r in a] == [r["test/misses"] for r in b]
        for ra, rb in zip(a, b):
            assert ra["test/loss"] == pytest.approx(rb["test/loss"], rel=1e-5)


def _grid(tmp_path, *extra):
    args = [
        sys.executable,
        "-m",
        "zipnet.cli.train",
        "-m",
        "data.n_train=200",
        "data.n_test=100",
        "trainer.passes=1",
        "tracking.figures=false",
        "optim.lr=0.01,-1,0.03",
        *extra,
    ]
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def _grid_runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("zipnet")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_a_bad_value_in_a_grid_fails_only_its_job_under_the_basic_launcher(tmp_path):
    proc = _grid(tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "zipnet-train: error: job 1 (optim.lr=-1): optim.lr: -1 is not allowed; give a number > 0" in proc.stderr
    runs = _grid_runs(tmp_path)
    jobs = sorted(r.info.run_name for r in runs if r.data.tags["zipnet.role"] == "job")
    assert jobs == ["optim.lr=0.01", "optim.lr=0.03"]  # both good jobs ran; nothing logged for the bad one
    assert all(r.info.status == "FINISHED" for r in runs if r.data.tags["zipnet.role"] == "job")
    (parent,) = [r for r in runs if r.data.tags["zipnet.role"] == "multirun"]
    assert parent.info.status == "FAILED" and "job 1 (optim.lr=-1): optim.lr" in parent.data.tags["zipnet.error"]


def test_a_bad_value_refuses_a_population_grid_before_anything_trains(tmp_path):
    proc = _grid(tmp_path, "hydra/launcher=population")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "job 1 (optim.lr=-1): optim.lr: -1 is not allowed" in proc.stderr and "nothing trained" in proc.stderr
    assert not _grid_runs(tmp_path)  # no job ran and the grid's parent is gone
    assert not list(tmp_path.glob("multirun/*/*/*/metrics.json"))


def test_a_deslanted_member_of_a_mixed_population_equals_its_single_run():
    jobs = [runner.Job(compose(SMALL + [f"data.deslant={d}"])) for d in ("false", "true")]
    runner.run(jobs, log=None)
    assert [j.result.population_sizes for j in jobs] == [[2, 2], [2, 2]]  # one population of two
    assert jobs[1].digits.fingerprint != jobs[0].digits.fingerprint
    assert torch.equal(jobs[1].digits.test_y, jobs[0].digits.test_y)  # the same digits, sheared
    alone = runner.Job(compose(SMALL + ["data.deslant=true"]))
    runner.run([alone], log=None)
    assert _strip(jobs[1].result) == _strip(alone.result)
