"""A study's MLflow parent run: one per study, whoever starts first.

Its id is stored with the study (a study user attribute), under the storage's lock, so
workers that start together on any hosts find one parent. Trials log their runs as its
children. It holds the study's settings as params, the counts and the best trial as they
come, and, once the study is complete, the study's views (history, importances, slices,
parallel coordinates, trials.csv); then it ends FINISHED.
"""

from __future__ import annotations

import json
import time

from zipnet.sweeps import storage as stores
from zipnet.sweeps.study import StudySpec

PARENT = "zipnet.mlflow_parent_run_id"


def ensure(tracker, study, spec: StudySpec, url: str) -> str:
    """The study's parent run, created if it has none (call under the storage's lock)."""
    run_id = study.user_attrs.get(PARENT)
    if run_id is not None:
        try:
            if tracker.client.get_run(run_id).info.lifecycle_stage == "active":
                return run_id  # RUNNING again only once this worker trains something (resume)
        except Exception:  # gone from this tracking store: start another
            pass
    from mlflow.entities import Param

    run_id = tracker.start(
        spec.study_name, role="study", tags={"zipnet.study": spec.study_name, "zipnet.storage": stores.masked(url)}
    )
    params = {
        "sweep.metric": spec.metric,
        "sweep.direction": spec.direction,
        "sweep.n_trials": spec.n_trials,
        "sweep.batch": spec.batch,
        "sweep.max_failure_rate": spec.max_failure_rate,
        "sweep.sampler": json.dumps(spec.sampler),
        "sweep.pruner": json.dumps(spec.pruner),
        "sweep.overrides": " ".join(spec.fixed),
        "sweep.defined_in": spec.where,
    }
    params.update({f"sweep.space.{n}": p.describe() for n, p in spec.params.items()})
    tracker.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    study.set_user_attr(PARENT, run_id)
    return run_id


def update(tracker, run_id: str, study, spec: StudySpec, tally: stores.Tally) -> None:
    """Counts and the best trial so far, onto the parent."""
    from mlflow.entities import Metric, RunTag

    stamp = int(time.time() * 1000)
    values = {
        "study/complete": tally.complete,
        "study/pruned": tally.pruned,
        "study/failed": tally.failed,
        "study/counted": tally.counted,
    }
    tags = {}
    best = best_trial(study, spec)
    if best is not None:
        values[f"study/best_{spec.metric}"] = best.value
        tags = {"zipnet.best_trial": str(best.number), "zipnet.best_run_id": best.user_attrs.get(stores.RUN_ID, "")}
    tracker.client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), stamp, tally.counted) for k, v in values.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )


def complete(tracker, run_id: str, study) -> None:
    """The study is done: its views as artifacts, then the parent ends FINISHED."""
    from zipnet import tracking

    tracking.log_study(tracker, run_id, study)
    tracker.end(run_id, "FINISHED")


def best_trial(study, spec: StudySpec):
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    pick = min if spec.direction == "minimize" else max
    return pick(done, key=lambda t: t.value)
