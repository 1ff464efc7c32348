"""The sweep loop: ask a batch of trials, hand their jobs to a launcher, settle, until the
study has its `n_trials`.

A batch's jobs carry their trial in their config (`trial.study`, `trial.storage`,
`trial.number`); the launcher runs them (hydra/launcher=population: one population, pruned
per pass; any other launcher: each job reports, prunes itself and tells its result). While
they run, this worker beats for them. Whatever a job left running (it failed before it
could tell) fails with the job's reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from zipnet import overrides as written
from zipnet.errors import first_line
from zipnet.sweeps import app_trial, parent, search_space
from zipnet.sweeps import storage as stores
from zipnet.sweeps.study import SPEC, FailureBudgetExceeded, StudySpec, SweepError, check, make_pruner, make_sampler

# job overrides, the first job's index (and, with `refill`, a Refill) -> for each job (the refilled
# ones after the batch's): None (zipnet's job told its trial), the value its task function returned
# or the optuna.TrialPruned it raised (another app's job: the sweeper tells it), or why it failed
Launch = Callable[..., list[str | float | BaseException | None]]


class Refill:
    """A batch's source of more trials (`refill: true`): called by the launcher with the lanes that
    pruned or finished trials left, it asks that many through the Coordinator (under the study's lock,
    counted like any ask, so many workers still stop at exactly n_trials) and returns their jobs."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.numbers: list[int] = []  # the trials asked, in the order of their jobs
        self.spent = False  # nothing more to ask in this batch

    def __call__(self, free: int) -> list[list[str]]:
        sweep = self.sweep
        if self.spent or free <= 0:
            return []
        try:
            trials = sweep.coord.ask(limit=free)
        except FailureBudgetExceeded:  # judged again after the batch, where the sweep stops
            trials = []
        if not trials:
            self.spent = True
            return []
        if sweep.extension is not None:
            trials = sweep._composable(trials)
        self.numbers += [t.number for t in trials]
        if trials:
            sweep.log(f"refill: trials {', '.join(str(t.number) for t in trials)}")
        return [sweep.spec.fixed + search_space.trial_overrides(sweep.spec, t) + sweep._keys(t.number) for t in trials]


class StillRunning(RuntimeError):
    """This worker stopped while other workers still hold trials (a storage without heartbeats)."""


def default_storage(tracker) -> str:
    """sqlite beside the MLflow store when that is a local sqlite file. A server store has
    no folder to share: the study needs a server storage of its own."""
    from zipnet import tracking

    uri = tracker.uri if tracker is not None else tracking.resolve_uri(None)
    path = tracking.sqlite_path(uri)
    if path is not None:
        return f"sqlite:///{path.parent / 'optuna.db'}"
    if tracker is None:
        return tracking.resolve_uri("sqlite:///mlruns/optuna.db")
    raise SweepError(
        f"storage: MLflow tracks to {stores.masked(uri)}, so each machine would run its own copy of the "
        "study in a local file; give the study a shared storage, e.g. "
        "storage=postgresql://USER@HOST:5432/optuna (the password from $PGPASSWORD or ~/.pgpass)"
    )


def trial_keys(spec: StudySpec, url: str, number: int) -> list[str]:
    """What a job needs to find its trial, wherever it runs (no password)."""
    return [
        written.override("trial.study", spec.study_name),
        written.override("trial.storage", stores.without_password(url)),
        written.override("trial.number", number),
    ]


class Sweep:
    """A study run to its target by one worker. With `app=False` the jobs belong to another
    Hydra app: they carry no trial keys, the configs are only composed (not zipnet's checks),
    nothing is tracked in MLflow, and each job's return value is told as its trial's value."""

    def __init__(self, spec: StudySpec, launch: Launch, composer, log=print, session=None, app: bool = True):
        from zipnet import session as sessions

        self.spec, self.launch, self.composer, self.log, self.app = spec, launch, composer, log, app
        self.session = session or sessions.current()  # its trackers, clock and parent run
        self.jobs_launched = 0
        self.seconds: dict[str, float] = {}  # this worker's time by kind, over its batches (session.Clock)
        self.started = time.perf_counter()

    def run(self) -> stores.Tally:
        """Run the study to its target; returns the final tally."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        spec = self.spec
        if self.app and len(spec.directions) > 1:
            spec.fail("direction", "zipnet's trainer has one objective (metric); give one direction")
        base = check(spec, self.composer, zipnet_config=self.app)
        function = search_space.resolve(spec, spec.custom_search_space)
        self.extension = search_space.Extension(spec, function, base) if function is not None else None
        self.tracker = self.session.tracker_for(base) if self.app else None
        self.url = spec.storage or default_storage(self.tracker)
        path = stores.local_file(self.url)
        if path is not None:
            if spec.storage is None:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.parent.is_dir():
                raise SweepError(
                    f"storage {self.url}: the folder {path.parent} does not exist; create it or fix the URL"
                )
        try:
            self._open()
        except SweepError:
            raise
        except Exception as err:
            raise stores.storage_error(self.url, err) from err
        self.log(
            f"study {spec.study_name!r} in {stores.masked(self.url)}: target {spec.n_trials} trials, "
            f"{spec.batch} at a time" + (f"; MLflow parent run {self.parent}" if self.parent else "")
        )
        self.session.set_parent(self.parent)
        try:
            return self._loop()
        finally:
            self.coord.close()
            self.session.set_parent(None)

    def _open(self) -> None:
        import optuna
        from optuna.exceptions import DuplicatedStudyError
        from optuna.study import StudyDirection

        spec = self.spec
        with stores.lock(
            self.url, spec.outage_timeout
        ):  # workers starting together: one set of tables, one study, one parent
            self.storage = stores.open_storage(self.url, spec)
            try:
                self.storage.create_new_study([StudyDirection[d.upper()] for d in spec.directions], spec.study_name)
                created = True
            except DuplicatedStudyError:
                created = False
            self.study = optuna.load_study(
                study_name=spec.study_name,
                storage=self.storage,
                sampler=make_sampler(spec, 0),
                pruner=make_pruner(spec),
            )
            made = [d.name.lower() for d in self.study.directions]
            if made != spec.directions:
                raise SweepError(
                    f"{spec.where}: direction: study {spec.study_name!r} in {stores.masked(self.url)} was "
                    f"created to {', '.join(made)}; this says {', '.join(spec.directions)}"
                )
            if SPEC not in self.study.user_attrs:
                self.study.set_user_attr(SPEC, spec.as_dict())
            if self.tracker is None:
                self.parent = None
            elif created or stores.locked(self.url):
                self.parent = parent.ensure(self.tracker, self.study, spec, self.url)
            else:  # no lock: the worker that created the study makes its parent
                self.parent = parent.made_by_creator(self.tracker, self.study, spec, self.url)
        self.coord = stores.Coordinator(
            self.study, self.storage, self.url, spec, log=self.log, on_stale=self._stale, extend=self.extension
        )

    def _stale(self, frozen) -> None:
        """A dead worker's trial: its MLflow run (live from its first pass, found by its tags, since
        the worker may have died before it could record the run on the trial) ends KILLED."""
        if self.tracker is None:
            return
        from zipnet import tracking

        text = f"its worker stopped beating; trial {frozen.number} asked again"
        try:
            runs = self.tracker.client.search_runs(
                [self.tracker.experiment_id],
                tracking.where(tags={"zipnet.study": self.spec.study_name, "zipnet.trial": str(frozen.number)})
                + " and attributes.status = 'RUNNING'",
            )
            for run in runs:
                self.tracker.end(run.info.run_id, "KILLED", text)
        except Exception as err:  # the tracking store hiccuped: the run stays as it was
            self.log(f"trial {frozen.number}: could not end its run: {first_line(err)}")

    def _loop(self) -> stores.Tally:
        spec, coord = self.spec, self.coord
        try:
            while True:
                trials = coord.ask()
                if not trials:
                    if coord.wait_for_others():
                        continue
                    break
                self._batch(trials)
            coord.check_budget()  # judged after the last batch too
        except KeyboardInterrupt:
            coord.give_back()
            others = coord.others_running()
            self.log(
                f"study {spec.study_name!r}: stopped; this worker's trials were given back to be asked again"
                + (f"; {others} still running on other workers" if others else "")
            )
            if self.parent and not others:
                self.tracker.end(self.parent, "KILLED")
            raise
        except FailureBudgetExceeded:
            if self.parent:
                parent.update(self.tracker, self.parent, self.study, spec, coord.now())
                self.tracker.end(self.parent, "FAILED", "failure budget exceeded")
            raise
        now = coord.now()
        self._summary(now)
        if self.parent:
            parent.update(self.tracker, self.parent, self.study, spec, now)
        if now.running:
            raise StillRunning(
                f"{now.running} trials still run on other workers; this storage has no heartbeat to tell "
                "whether they are alive; rerun this command once they are done"
            )
        # a rerun of a done study adds nothing, unless its parent never ended (a worker stopped first)
        if self.parent and now.counted >= spec.n_trials and (self.jobs_launched or not self._parent_ended()):
            parent.complete(self.tracker, self.parent, self.study)
        return now

    def _parent_ended(self) -> bool:
        return self.tracker.client.get_run(self.parent).info.status == "FINISHED"

    def _keys(self, number: int) -> list[str]:
        """How a job finds its trial: zipnet's through its config, another app's through its
        environment (app_trial.current_trial)."""
        if self.app:
            return trial_keys(self.spec, self.url, number)
        return [app_trial.env_override(stores.without_password(self.url), self.spec.study_name, number)]

    def _batch(self, trials: list) -> None:
        spec = self.spec
        if self.extension is not None:
            trials = self._composable(trials)
            if not trials:
                return
        numbers = [t.number for t in trials]
        jobs = [spec.fixed + search_space.trial_overrides(spec, t) + self._keys(t.number) for t in trials]
        self.log(f"batch: trials {', '.join(map(str, numbers))}")
        if self.parent and not self.jobs_launched:  # a resumed study's parent runs again
            self.tracker.set_status(self.parent, "RUNNING")
        started = time.perf_counter()
        clock = self.session.clock
        clock.reset()
        with clock.timing("optuna"):
            before = parent.best_trial(self.study, spec) if self.tracker is not None else None
        refill = Refill(self) if spec.refill else None
        if refill is None:
            outcomes = self.launch(jobs, self.jobs_launched)  # the coordinator beats for the batch's trials
        else:  # and for the trials asked to refill its lanes
            outcomes = self.launch(jobs, self.jobs_launched, refill=refill)
            numbers += refill.numbers
        self.jobs_launched += len(outcomes)
        with clock.timing("optuna"):
            for number, outcome in zip(numbers, outcomes):  # another app's job: its value, or pruned
                if isinstance(outcome, (float, list)):
                    self.coord.finish(number, "COMPLETE", outcome)
                elif isinstance(outcome, BaseException):
                    self.coord.finish(number, "PRUNED")
            self.coord.settle(numbers, {n: r for n, r in zip(numbers, outcomes) if isinstance(r, str)})
            now = self.coord.now()
        with clock.timing("tracking"):
            if self.tracker is not None:  # the study's best so far gets its figures and model
                self.tracker.log_best(self.parent, spec.metric, spec.direction, before.value if before else None)
            if self.parent:
                parent.update(self.tracker, self.parent, self.study, spec, now)
        seconds = clock.reset()
        for kind, value in seconds.items():
            self.seconds[kind] = self.seconds.get(kind, 0.0) + value
        self.log(split(f"batch of {len(outcomes)} done", time.perf_counter() - started, seconds))

    def _composable(self, trials: list) -> list:
        """A custom search space's overrides were not composed before the study ran (`check`
        composes only the params): each trial's are composed now, as its job's config will be
        (zipnet's trainer: and checked), and a trial whose overrides do not compose fails with
        the reason instead of reaching the launcher."""
        keep = []
        for trial in trials:
            overrides = self.spec.fixed + search_space.trial_overrides(self.spec, trial)
            try:
                cfg = self.composer.compose(overrides)
                if self.app:
                    from zipnet import config as checks

                    checks.check(cfg)
            except Exception as err:
                reason = f"{search_space.KEY}: {' '.join(overrides)}: {first_line(err)}"
                self.storage.set_trial_user_attr(trial._trial_id, stores.REASON, reason[:500])
                self.coord.finish(trial.number, "FAIL")
                self.log(f"trial {trial.number} failed: {reason}")
                continue
            keep.append(trial)
        return keep

    def _summary(self, now: stores.Tally) -> None:
        spec = self.spec
        if self.jobs_launched:
            self.log(
                split(f"this worker: {self.jobs_launched} trials", time.perf_counter() - self.started, self.seconds)
            )
            if self.tracker is not None:  # its own thread, beside training: what it would cost if it waited
                self.log(f"MLflow writer: {self.tracker.busy:.1f} s busy")
        line = (
            f"study {spec.study_name!r}: {now.counted}/{spec.n_trials} trials ({now.complete} complete, "
            f"{now.pruned} pruned, {now.failed} failed"
            + (f", {now.running} still running elsewhere" if now.running else "")
            + ")"
        )
        if len(spec.directions) > 1:  # several objectives: no one best, a front
            front = self.study.best_trials if now.complete else []
            self.log(line + f"; {len(front)} trials on the Pareto front")
            return
        best = parent.best_trial(self.study, spec)
        if best is not None:
            line += (
                f"; best {spec.metric if self.app else 'value'} {best.value:.4g} (trial {best.number}: "
                f"{' '.join(search_space.trial_overrides(spec, best))})"
            )
        self.log(line)


def split(what: str, total: float, seconds: dict[str, float]) -> str:
    """`batch done in 40.1 s: training 30.2 s, evaluation 5.1 s, hydra 0.4 s, optuna 1.2 s, tracking 3.0 s,
    other 0.6 s`."""
    parts = [
        f"{kind} {seconds[kind]:.1f} s"
        for kind in ("training", "evaluation", "hydra", "optuna", "tracking", "output")
        if kind in seconds
    ]
    other = total - sum(seconds.values())
    return f"{what} in {total:.1f} s: " + ", ".join(parts + [f"other {other:.1f} s"])
