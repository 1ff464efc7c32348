"""One zipnet.session per zipnet-train invocation: two grids run in one process share nothing
(refusals, parent run, grid keys, trackers, clock)."""

import os
import sys

from mlflow import MlflowClient
from sweep_helpers import TINY

from zipnet import session
from zipnet.cli import train


def _main(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["zipnet-train", "-m", *args])
    try:
        train.main()
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


def test_two_grids_in_one_process_see_nothing_of_each_other(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = [*TINY, "tracking.system_metrics=false", "trainer.progress=off"]
    # the first grid has a job that cannot run: its exit status and its parent say so
    refused = ["loss=cross_entropy", "model.output=linear,squash"]
    first = _main(monkeypatch, *base, f"hydra.sweep.dir={tmp_path}/a", *refused)
    assert first == 2
    assert session.PARENT_ENV not in os.environ and session.GRID_KEYS_ENV not in os.environ
    # the second grid trains every job: nothing of the first one's refusal or parent follows it
    second = _main(monkeypatch, *base, f"hydra.sweep.dir={tmp_path}/b", "optim.lr=0.01,0.02")
    assert second == 0
    assert session.PARENT_ENV not in os.environ and session.GRID_KEYS_ENV not in os.environ
    assert not session.current().refused and session.current().parent() is None  # the default session is untouched

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "zipnet"]
    runs = client.search_runs([experiment.experiment_id])
    parents = {r.data.tags["zipnet.sweep"]: r for r in runs if r.data.tags.get("zipnet.role") == "multirun"}
    a, b = parents[str(tmp_path / "a")], parents[str(tmp_path / "b")]
    assert a.info.status == "FAILED" and "squash" in a.data.tags["zipnet.error"]
    assert b.info.status == "FINISHED" and "zipnet.error" not in b.data.tags
    children = {
        parent: sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent)
        for parent in (a.info.run_id, b.info.run_id)
    }
    # each grid's jobs are its own children, named by the keys its own grid sweeps
    assert children[a.info.run_id] == ["model.output=linear"]
    assert children[b.info.run_id] == ["optim.lr=0.01", "optim.lr=0.02"]


def test_a_session_holds_its_own_trackers_and_clock(tmp_path):
    from hydra import compose, initialize_config_dir

    from zipnet.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.system_metrics=false"]
        cfg = compose(config_name="config", overrides=overrides)
    with session.scope() as one:
        tracker = one.tracker_for(cfg)
        assert session.current() is one and one.tracker_for(cfg) is tracker  # opened once per session
        one.clock.add("training", 1.0)
        with session.scope() as two:
            assert session.current() is two and two.tracker_for(cfg) is not tracker
            assert two.clock.seconds == {} and two.refused == []
        assert session.current() is one and one.clock.seconds == {"training": 1.0}
    assert session.current() is not one


def test_two_sweeps_in_one_process_open_their_own_storages(tmp_path):
    """A storage carries its sweep's heartbeat settings and trial cache: a second sweep in the
    same process opens its own, while the jobs of one sweep share their sweeper's."""
    from zipnet.sweeps.storage import open_storage
    from zipnet.sweeps.study import StudySpec

    url = f"sqlite:///{tmp_path}/optuna.db"
    with session.scope() as one:
        first = open_storage(url, StudySpec(where="test", study_name="s", heartbeat_interval=1, grace_period=2))
        assert open_storage(url) is first  # a job of this sweep: the sweeper's storage
        assert one.storages[url] is first
        with session.scope():
            second = open_storage(url, StudySpec(where="test", study_name="s", heartbeat_interval=7, grace_period=20))
            assert second is not first
            assert (first.get_heartbeat_interval(), second.get_heartbeat_interval()) == (1, 7)
        assert open_storage(url) is first
