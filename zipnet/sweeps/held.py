"""Optuna's trial cache, answering for this worker's own running trials from memory.

Optuna's cache (`optuna.storages._CachedStorage`) reads a finished trial once, but reads every
running trial again at each `get_trial` and `get_all_trials`: a worker reading its own batch
(to ask, to prune, to tell, a job finding its trial) costs a read of each trial's params,
values and attributes per call, though no one else writes to them. `HeldTrials` keeps each
trial this process asked (created, or taken from the queue) as it wrote it, from the ask until
its state changes, and answers for it from memory; every other trial, other workers' running
ones included, is read from the storage as before, so a pruner still sees their reports.

Only a write that succeeded changes the copy in memory. A trial leaves memory before its state
is written (tell, fail, give back), and whenever a write to it fails or is cut (a stop signal),
so that it is read from the storage again. A trial another worker failed meanwhile (its
heartbeat was judged stale) takes no write: the storage refuses it as before, and a tell of it
is skipped, as `skip_if_finished` would have skipped it.
"""

from __future__ import annotations

import contextlib
import copy
import threading

from optuna.storages._cached_storage import _CachedStorage


class HeldTrials(_CachedStorage):
    def __init__(self, backend):
        super().__init__(backend)
        self._held = {}  # trial id -> FrozenTrial, as this process wrote it; RUNNING
        self._study_ids: dict[str, int] = {}  # a study's id never changes
        self._queue: dict[int, tuple[list, dict]] = {}  # trial id -> (params, user attrs) not written yet
        self._queuing: int | None = None  # the thread inside `together`
        self.birth: dict | None = None  # user attrs a trial asked here is created with (its worker), and a beat
        self._born: set[int] = set()  # trial ids created so: their first beat is written
        self._checked: set[int] = set()  # studies read once: they exist

    # -- what this worker holds ------------------------------------------------------------

    def _study(self, study_id: int):
        """The cache's record of the study (under the lock), made if there is none yet."""
        if study_id not in self._studies:
            from optuna.storages._cached_storage import _StudyInfo

            self._studies[study_id] = _StudyInfo()
        return self._studies[study_id]

    def _hold(self, study_id: int, frozen) -> None:
        with self._lock:
            self._study(study_id)
            self._add_trials_to_cache(study_id, [frozen])
            self._studies[study_id].unfinished_trial_ids.add(frozen._trial_id)  # read again once let go
            self._held[frozen._trial_id] = copy.deepcopy(frozen)

    def let_go(self, trial_id: int) -> None:
        """Read the trial from the storage from now on (its state may have been written elsewhere)."""
        with self._lock:
            self._held.pop(trial_id, None)

    def born(self, trial_id: int) -> bool:
        """Whether the trial was created here with `birth`'s attributes and its first heartbeat."""
        with self._lock:
            return trial_id in self._born

    def _through(self, what: str, write, *args):
        """`write(rdb, *args)` on the RDB storage, through storage.Patient (its waits for an unreachable
        database) where the backend is one."""
        backend = self._backend
        attempt = getattr(backend, "attempt", None)
        rdb = getattr(backend, "_backend", backend)
        return attempt(what, write, rdb, *args) if attempt is not None else write(rdb, *args)

    def holds(self, trial_id: int) -> bool:
        with self._lock:
            return trial_id in self._held

    def _written(self, trial_id: int, write, change) -> None:
        """`write()` to the storage, then `change(frozen)` on the copy held, if any."""
        try:
            write()
        except BaseException:
            self.let_go(trial_id)
            raise
        with self._lock:
            frozen = self._held.get(trial_id)
            if frozen is not None:
                change(frozen)

    def reported(self, trial_id: int, step: int, value: float) -> None:
        """A value written to the storage by zipnet's own statement (zipnet.sweeps.pruning)."""
        with self._lock:
            frozen = self._held.get(trial_id)
            if frozen is not None:
                frozen.intermediate_values[step] = value

    @contextlib.contextmanager
    def together(self):
        """Inside, held trials' params and user attributes (a batch's asks) are kept, and written at
        the end, all in one transaction, or a trial's before any other write to it. A study's first
        params are checked against the study's there, as Optuna checks them. Cut or failed inside:
        nothing kept is written, and the trials are read from the storage again."""
        self._queuing = threading.get_ident()
        try:
            yield
        except BaseException:
            with self._lock:
                dropped, self._queue = list(self._queue), {}
            for trial_id in dropped:
                self.let_go(trial_id)
            raise
        finally:
            self._queuing = None
        self._flush(*list(self._queue))

    def _kept(self, trial_id: int):
        """The trial's (params, user attrs) queue while `together` is in force here, else None."""
        if self._queuing != threading.get_ident():
            return None
        with self._lock:
            if trial_id not in self._held:
                return None
            return self._queue.setdefault(trial_id, ([], {}))

    def _flush(self, *trial_ids: int) -> None:
        with self._lock:
            kept = {tid: self._queue.pop(tid) for tid in trial_ids if tid in self._queue}
            kept = {tid: k for tid, k in kept.items() if k[0] or k[1]}
        if not kept:
            return
        try:
            self._through("together", _write_together, kept)
        except BaseException:
            for trial_id in kept:
                self.let_go(trial_id)
            raise
        with self._lock:  # a first param, now in the study: later ones are checked against it here
            for trial_id, (params, _) in kept.items():
                study_id = self._study_of(trial_id)
                for name, _, distribution, _ in params if study_id is not None else ():
                    self._studies[study_id].param_distribution.setdefault(name, distribution)

    # -- the storage calls -----------------------------------------------------------------

    def get_study_id_from_name(self, study_name: str) -> int:
        with self._lock:
            found = self._study_ids.get(study_name)
        if found is None:
            found = self._backend.get_study_id_from_name(study_name)
            with self._lock:
                self._study_ids[study_name] = found
        return found

    def delete_study(self, study_id: int) -> None:
        with self._lock:
            self._study_ids = {name: sid for name, sid in self._study_ids.items() if sid != study_id}
            self._held = {tid: t for tid, t in self._held.items() if self._study_of(tid) != study_id}
            self._checked.discard(study_id)
        super().delete_study(study_id)

    def _study_of(self, trial_id: int) -> int | None:
        found = self._trial_id_to_study_id_and_number.get(trial_id)
        return found[0] if found else None

    def create_new_trial(self, study_id: int, template_trial=None) -> int:
        from optuna.trial import TrialState

        if template_trial is None and self.birth is not None:  # asked here: its worker's mark and first beat too
            frozen = self._through("create_new_trial", _create, study_id, self.birth)
            with self._lock:
                self._born.add(frozen._trial_id)
        else:
            frozen = self._backend._create_new_trial(study_id, template_trial)
        if frozen.state == TrialState.RUNNING:  # asked here
            self._hold(study_id, frozen)
        else:  # added finished, or to the queue: as Optuna's cache keeps it
            with self._lock:
                self._study(study_id)
                self._add_trials_to_cache(study_id, [frozen])
        return frozen._trial_id

    def set_trial_param(self, trial_id, param_name, param_value_internal, distribution) -> None:
        from optuna.distributions import check_distribution_compatibility

        with self._lock:
            study_id = self._study_of(trial_id)
            before = self._studies[study_id].param_distribution.get(param_name) if study_id is not None else None
        kept = self._kept(trial_id)
        if kept is not None:
            if before is not None:
                check_distribution_compatibility(before, distribution)
            # a first param of the study here: checked against the study's as it is written
            kept[0].append((param_name, param_value_internal, distribution, before is None))
            with self._lock:
                frozen = self._held[trial_id]
                frozen.params[param_name] = distribution.to_external_repr(param_value_internal)
                frozen.distributions[param_name] = distribution
            return
        self._flush(trial_id)

        def change(frozen):
            frozen.params[param_name] = distribution.to_external_repr(param_value_internal)
            frozen.distributions[param_name] = distribution

        self._written(
            trial_id,
            lambda: super(HeldTrials, self).set_trial_param(trial_id, param_name, param_value_internal, distribution),
            change,
        )

    def set_trial_intermediate_value(self, trial_id, step, intermediate_value) -> None:
        self._flush(trial_id)
        self._written(
            trial_id,
            lambda: self._backend.set_trial_intermediate_value(trial_id, step, intermediate_value),
            lambda frozen: frozen.intermediate_values.__setitem__(step, intermediate_value),
        )

    def set_trial_user_attr(self, trial_id, key, value) -> None:
        with self._lock:
            frozen = self._held.get(trial_id)
            if frozen is not None and key in frozen.user_attrs and frozen.user_attrs[key] == value:
                return  # held with that value already (written at its creation): nothing to write
        kept = self._kept(trial_id)
        if kept is not None:
            kept[1][key] = copy.deepcopy(value)
            with self._lock:
                self._held[trial_id].user_attrs[key] = copy.deepcopy(value)
            return
        self._flush(trial_id)
        self._written(
            trial_id,
            lambda: self._backend.set_trial_user_attr(trial_id, key=key, value=value),
            lambda frozen: frozen.user_attrs.__setitem__(key, copy.deepcopy(value)),
        )

    def set_trial_system_attr(self, trial_id, key, value) -> None:
        self._flush(trial_id)
        self._written(
            trial_id,
            lambda: self._backend.set_trial_system_attr(trial_id, key=key, value=value),
            lambda frozen: frozen.system_attrs.__setitem__(key, copy.deepcopy(value)),
        )

    def set_trial_state_values(self, trial_id, state, values=None) -> bool:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        self._flush(trial_id)
        with self._lock:
            frozen = self._held.pop(trial_id, None)
        held = frozen is not None
        if held and state.is_finished():
            return self._tell(frozen, state, values)
        try:
            done = self._backend.set_trial_state_values(trial_id, state=state, values=values)
        except UpdateFinishedTrialError:
            if not held:
                raise
            return False  # finished elsewhere while held here (failed as stale): as a skipped tell
        if done and state == TrialState.RUNNING:  # taken from the queue (a retry): held from now on
            frozen = self._backend.get_trial(trial_id)
            with self._lock:
                study_id = self._study_of(trial_id)
            if study_id is not None:
                self._hold(study_id, frozen)
        return done

    def _tell(self, frozen, state, values) -> bool:
        """A held trial's end, written as RDBStorage writes it; the trial as told is then known
        here to the microsecond, and kept as a finished trial (no read of it after its tell)."""
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            completed = self._through("set_trial_state_values", _finish, frozen._trial_id, state, values)
        except UpdateFinishedTrialError:
            return False  # finished elsewhere while held here (failed as stale): as a skipped tell
        told = copy.deepcopy(frozen)
        told.state, told.values, told.datetime_complete = state, values, completed
        with self._lock:
            found = self._trial_id_to_study_id_and_number.get(frozen._trial_id)
            if found is not None:
                self._studies[found[0]].trials[found[1]] = told
        return True

    def get_trial(self, trial_id: int):
        with self._lock:
            frozen = self._held.get(trial_id)
            if frozen is not None:
                return copy.deepcopy(frozen)
        return super().get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states=None):
        trials = super().get_all_trials(study_id, deepcopy=False)
        with self._lock:
            trials = [self._held.get(t._trial_id, t) for t in trials]
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        """Optuna's read of the unfinished and new trials, less the ones held here."""
        with self._lock:
            study = self._study(study_id)
            held = {tid for tid in self._held if self._study_of(tid) == study_id}
            trials = self._read(study_id, study.unfinished_trial_ids - held, study.last_finished_trial_id, held)
            if not trials:
                return
            self._add_trials_to_cache(study_id, trials)
            for trial in trials:
                if not trial.state.is_finished():
                    study.unfinished_trial_ids.add(trial._trial_id)
                    continue
                study.last_finished_trial_id = max(study.last_finished_trial_id, trial._trial_id)
                study.unfinished_trial_ids.discard(trial._trial_id)

    def _read(self, study_id: int, included: set[int], greater_than: int, held: set[int]) -> list:
        """RDBStorage._get_trials, leaving out the trials in `held`: through storage.Patient (its waits
        for an unreachable database) where the backend is one. The study's existence is checked at its
        first read only. Called under the cache's lock."""
        checked = study_id in self._checked
        trials = self._through("get_all_trials", _get_trials_except, study_id, included, greater_than, held, checked)
        self._checked.add(study_id)
        return trials


@contextlib.contextmanager
def _reading(rdb):
    """A session for reads alone: on PostgreSQL in autocommit, each SELECT without a BEGIN and COMMIT
    around it (in its default READ COMMITTED, each statement of a transaction sees its own snapshot
    anyway); elsewhere (sqlite: one snapshot per transaction) in a transaction, as Optuna reads."""
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy import orm

    if rdb.engine.name != "postgresql":
        with _create_scoped_session(rdb.scoped_session) as session:
            yield session
        return
    with rdb.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        with orm.Session(bind=conn) as session:
            yield session


def _get_trials_except(
    rdb, study_id: int, included: set[int], greater_than: int, held: set[int], checked: bool = False
) -> list:
    import sqlalchemy
    from optuna.storages._rdb import models
    from sqlalchemy import orm

    included = {tid for tid in included if tid <= greater_than}
    trial = models.TrialModel
    with _reading(rdb) as session:
        if not checked:
            models.StudyModel.find_or_raise_by_id(study_id, session)
        query = (
            session.query(trial)
            .options(orm.selectinload(trial.params))
            .options(orm.selectinload(trial.values))
            .options(orm.selectinload(trial.user_attributes))
            .options(orm.selectinload(trial.system_attributes))
            .options(orm.selectinload(trial.intermediate_values))
            .filter(trial.study_id == study_id)
        )
        if held:
            query = query.filter(trial.trial_id.notin_(held))
        if included and greater_than > -1:
            query = query.filter(sqlalchemy.or_(trial.trial_id.in_(included), trial.trial_id > greater_than))
        elif greater_than > -1:
            query = query.filter(trial.trial_id > greater_than)
        return [rdb._build_frozen_trial_from_trial_model(t) for t in query.order_by(trial.trial_id).all()]


def _create(rdb, study_id: int, user_attrs: dict):
    """A new RUNNING trial (RDBStorage._create_new_trial without a template), with its user attributes and,
    where the storage keeps heartbeats, its first beat, in one transaction; its number counted before its
    row is added (the study's row is locked meanwhile, as Optuna locks it, so no other trial is added)."""
    import json
    from datetime import datetime

    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import FrozenTrial, TrialState

    with _create_scoped_session(rdb.scoped_session) as session:
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        number = session.execute(
            sqlalchemy.select(sqlalchemy.func.count(models.TrialModel.trial_id)).where(
                models.TrialModel.study_id == study_id
            )
        ).scalar_one()
        trial = models.TrialModel(
            study_id=study_id, number=number, state=TrialState.RUNNING, datetime_start=datetime.now()
        )
        session.add(trial)
        session.flush()
        for key, value in user_attrs.items():
            session.add(models.TrialUserAttributeModel(trial_id=trial.trial_id, key=key, value_json=json.dumps(value)))
        if rdb.get_heartbeat_interval() is not None:
            session.add(models.TrialHeartbeatModel(trial_id=trial.trial_id))
        session.flush()
        return FrozenTrial(
            number=number,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=trial.datetime_start,
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs=dict(user_attrs),
            system_attrs={},
            intermediate_values={},
            trial_id=trial.trial_id,
        )


def _write_together(rdb, kept: dict[int, tuple[list, dict]]) -> None:
    """Trials' params (one INSERT statement) and user attributes, in one transaction; a study's first
    params checked against those the study has (RDBStorage._set_trial_param_without_commit's check)."""
    import sqlalchemy
    from optuna import distributions
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    trial, param = models.TrialModel, models.TrialParamModel
    with _create_scoped_session(rdb.scoped_session) as session:
        found = session.execute(
            sqlalchemy.select(trial.trial_id, trial.state, trial.study_id).where(trial.trial_id.in_(list(kept)))
        ).all()
        states = {tid: (state, study_id) for tid, state, study_id in found}
        for trial_id in kept:
            if trial_id not in states:
                raise KeyError(f"No trial with trial_id {trial_id} exists.")
            rdb.check_trial_is_updatable(trial_id, states[trial_id][0])
        first = {}  # param name -> its distribution, where the study had none here
        for params, _ in kept.values():
            for name, _, distribution, unchecked in params:
                if unchecked:
                    distributions.check_distribution_compatibility(first.setdefault(name, distribution), distribution)
        if first:
            studies = {study_id for _, study_id in states.values()}
            known = (
                session.query(param.param_name, param.distribution_json)
                .join(trial)
                .filter(
                    trial.study_id.in_(studies), param.param_name.in_(list(first)), trial.trial_id.notin_(list(kept))
                )
                .distinct()
                .all()
            )
            for name, text in known:
                distributions.check_distribution_compatibility(distributions.json_to_distribution(text), first[name])
        rows = [
            {
                "trial_id": trial_id,
                "param_name": name,
                "param_value": value,
                "distribution_json": distributions.distribution_to_json(distribution),
            }
            for trial_id, (params, _) in kept.items()
            for name, value, distribution, _ in params
        ]
        if rows:
            session.execute(sqlalchemy.insert(param).values(rows))
        for trial_id, (_, user_attrs) in kept.items():
            for key, value in user_attrs.items():
                rdb._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)


def _finish(rdb, trial_id: int, state, values):
    """RDBStorage.set_trial_state_values for a finished state, of a held trial (it has no values yet):
    its state changed only if it still runs, then its values added; returns its datetime_complete."""
    from datetime import datetime

    import sqlalchemy
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    trial = models.TrialModel
    completed = datetime.now()
    with _create_scoped_session(rdb.scoped_session) as session:
        changed = session.execute(
            sqlalchemy.update(trial)
            .where(trial.trial_id == trial_id, trial.state == TrialState.RUNNING)
            .values(state=state, datetime_complete=completed)
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount != 1:
            raise UpdateFinishedTrialError(f"trial {trial_id} has finished already (failed elsewhere as stale)")
        rows = []
        for objective, value in enumerate(values or ()):
            stored, kind = models.TrialValueModel.value_to_stored_repr(value)
            rows.append({"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind})
        if rows:
            session.execute(sqlalchemy.insert(models.TrialValueModel).values(rows))
    return completed
