"""One pass of a population's trials: every member's report, then every pruning decision.

Trial by trial, Optuna's public API costs a transaction per report and a read of the whole
study per pruning decision (`Trial.should_prune` hands the pruner the study, and the median
pruner reads every trial of it): for a population of 100 that is 100 writes and 100 reads
of the study per pass, growing with the study. Here one pass of one study costs
- one transaction for all members' values (rows into Optuna's own intermediate-value
  table, through its models, on an RDB storage; `Trial.report` per member elsewhere);
- one read of the study (`get_all_trials`, through Optuna's trial cache);
- the study's own pruner, asked per member against that read (zipnet/sweeps/snapshot.py), so its
  decisions are the ones it would make trial by trial after all members reported.
Pruners that write (successive halving's rungs) write through, and see each other's writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from zipnet.sweeps.snapshot import Snapshot


@dataclass
class Report:
    trial: object  # optuna.Trial
    value: float
    step: int
    may_prune: bool  # False at the trial's last pass: nothing left to save
    refused: bool = False  # set by report_and_prune: the trial had ended (another worker failed it as stale)


def report_and_prune(study, reports: list[Report]) -> list[bool]:
    """Record every report, then the pruner's decision for each (same order)."""
    if not reports:
        return []
    written = _write(study._storage, reports)
    for r in reports:
        r.refused = not written.get(r.trial._trial_id)
    snapshot = Snapshot(study)
    view = snapshot.study(study.sampler, study.pruner)
    by_id = {t._trial_id: t for t in snapshot.trials}
    out = []
    for r in reports:
        frozen = by_id.get(r.trial._trial_id)
        if not r.may_prune or r.refused or frozen is None or frozen.state.is_finished():
            out.append(False)
            continue
        out.append(bool(study.pruner.prune(view, frozen)))
    return out


def _write(storage, reports: list[Report]) -> dict[int, bool]:
    """trial id -> whether its value is in the storage (False: another worker finished the trial)."""
    rdb = getattr(storage, "_backend", storage)
    if hasattr(rdb, "scoped_session"):
        try:
            patient = getattr(rdb, "attempt", None)  # storage.Patient: waits out an unreachable database
            written = patient("report", _insert, rdb, reports) if patient else _insert(rdb, reports)
        except ImportError:  # an Optuna without these models: the public API below
            pass
        except BaseException:  # cut or failed: whether the values are in, the storage says
            let_go = getattr(storage, "let_go", None)
            for r in reports if let_go is not None else ():
                let_go(r.trial._trial_id)
            raise
        else:
            held = getattr(storage, "reported", None)  # zipnet.sweeps.held: this worker's trials, in memory
            for r in reports:
                if held is not None and written[r.trial._trial_id]:
                    held(r.trial._trial_id, int(r.step), float(r.value))
            return written
    from optuna.exceptions import UpdateFinishedTrialError

    written = {}
    for r in reports:
        try:
            r.trial.report(r.value, r.step)
            written[r.trial._trial_id] = True
        except UpdateFinishedTrialError:
            written[r.trial._trial_id] = False
    return written


def _insert(rdb, reports: list[Report]) -> dict[int, bool]:
    """One transaction: the trials' states, then one multi-row INSERT of the running ones' values."""
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    values = models.TrialIntermediateValueModel
    ids = [r.trial._trial_id for r in reports]
    session = rdb.scoped_session()
    try:
        rows = session.execute(
            sqlalchemy.select(models.TrialModel.trial_id, models.TrialModel.state).where(
                models.TrialModel.trial_id.in_(ids)
            )
        ).all()
        running = {tid for tid, state in rows if state == TrialState.RUNNING}
        payload = []
        for r in reports:
            if r.trial._trial_id in running:
                stored, kind = values.intermediate_value_to_stored_repr(float(r.value))
                payload.append(
                    {
                        "trial_id": r.trial._trial_id,
                        "step": int(r.step),
                        "intermediate_value": stored,
                        "intermediate_value_type": kind,
                    }
                )
        if payload:  # one statement, however many rows (an executemany would log one per row)
            session.execute(sqlalchemy.insert(values).values(payload))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    for r in reports:  # what Trial.report would have kept on the trial object
        if r.trial._trial_id in running:
            r.trial._cached_frozen_trial.intermediate_values[int(r.step)] = float(r.value)
    return {tid: tid in running for tid in ids}
