"""A study's MLflow parent run: one per study, whoever starts first.

Its id is stored with the study (a study user attribute), under the storage's lock, so
workers that start together on any hosts find one parent (on a storage without a lock, the
worker that created the study makes it and the others wait for it). Trials log their runs as its
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
    tracker.ready()  # mlflow imported on the tracker's worker first (tracking.runs: IMPORTS)
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


def made_by_creator(tracker, study, spec: StudySpec, url: str) -> str:
    """On a storage without a lock (grpc://), a worker that did not create the study waits, up to
    storage_timeout, for the parent run its creator makes; then it makes one (the creator died first)."""
    deadline = time.monotonic() + spec.storage_timeout
    while PARENT not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.2)
    return ensure(tracker, study, spec, url)


def update(tracker, run_id: str, study, spec: StudySpec, tally: stores.Tally) -> None:
    """Counts and the best trial so far, onto the parent (queued: the next batch need not wait)."""
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
    tracker.log_batch(run_id, metrics=values, step=tally.counted, tags=tags)


def complete(tracker, run_id: str, study) -> None:
    """The study is done: runs a stopped worker left open are closed, the study's views go
    on as artifacts, then the parent ends FINISHED."""
    from zipnet import tracking

    close_orphans(tracker, run_id, study)
    tracking.log_study(tracker, run_id, study)
    tracker.end(run_id, "FINISHED")


def close_orphans(tracker, run_id: str, study) -> int:
    """A worker tells its trial's result before its writer has ended the trial's run; killed
    in between (SIGKILL, a dead host), it leaves the run RUNNING. Such runs of finished trials
    end as their trials did (COMPLETE, PRUNED: FINISHED; FAIL: FAILED). Returns how many."""
    from optuna.trial import TrialState

    from zipnet import tracking

    status = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.FAIL: "error"}
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    found = tracker.client.search_runs(
        [tracker.experiment_id],
        tracking.where(tags={"mlflow.parentRunId": run_id}) + " and attributes.status = 'RUNNING'",
    )
    closed = 0
    for run in found:
        trial = trials.get(int(run.data.tags.get("zipnet.trial", "-1")))
        if trial is None or trial.state not in status:
            continue
        tags = {
            "zipnet.status": status[trial.state],
            "zipnet.closed_by": f"{stores.worker_id()}: its own worker stopped before it wrote the run's end",
        }
        tracker.log_batch(run.info.run_id, tags=tags)
        tracker.end(run.info.run_id, "FAILED" if trial.state == TrialState.FAIL else "FINISHED")
        closed += 1
    return closed


def best_trial(study, spec: StudySpec):
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    pick = min if spec.direction == "minimize" else max
    return pick(done, key=lambda t: t.value)
