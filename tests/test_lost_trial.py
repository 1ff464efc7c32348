"""A trial taken from its job mid-training (another worker failed it as stale while this one could
not reach the storage, tests/test_partition.py across hosts): its job tells it nothing more, stops,
and its MLflow run ends KILLED, not FINISHED; the worker's coordinator says so in one line."""

import optuna
from optuna.trial import TrialState

from zipnet import runner, tracking
from zipnet.config import compose
from zipnet.sweeps import storage as stores
from zipnet.sweeps import trial as trials
from zipnet.sweeps.study import StudySpec

TINY = ["data.n_train=300", "data.n_test=100", "trainer.passes=3", "trainer.progress=off"]


class _FailedElsewhere(runner.Watcher):
    """Stands in for the other worker: fails the trial as stale after the job's first pass."""

    def __init__(self, study, number: int):
        self.study, self.number = study, number

    def on_pass(self, job, result):
        if len(result.history) == 1:
            trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, self.number)
            self.study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        return False


def test_a_trial_failed_elsewhere_mid_training_is_not_told_and_its_run_ends_killed(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="lost", storage=stores.open_storage(url))
    trial = study.ask()
    tracker = tracking.Tracker(f"sqlite:///{tmp_path}/mlflow.db", "zipnet", figures=False, weights=False)
    link = trials.Link("lost", url, trial.number, study, trial, "test/error", 3)
    job = runner.Job(compose(TINY), watchers=[_FailedElsewhere(study, trial.number), runner.Tracked(tracker)])
    job.watchers.append(link.watcher())
    runner.run([job], log=None)

    assert job.lost is not None and job.result.status == "pruned"  # stopped at the refused report
    frozen = study.get_trials()[0]
    assert frozen.state == TrialState.FAIL and frozen.intermediate_values == {}  # nothing told from here
    assert tracker.client.get_run(job.run_id).info.status == "KILLED"

    lines = []
    coordinator = stores.Coordinator(study, study._storage, url, StudySpec(where="t", study_name="lost"), lines.append)
    coordinator.settle([trial.number], {})
    assert len(lines) == 1 and lines[0].startswith(f"trials {trial.number}: lost: ")
