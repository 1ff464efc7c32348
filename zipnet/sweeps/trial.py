"""The job side of a trial: a job whose config carries `trial.study`, `trial.storage` and
`trial.number` (the zipnet_optuna sweeper sets them) opens its trial in the study's storage,
reports its metric after every pass, prunes itself when the study's pruner says so, and
tells its result. It works wherever the job runs: in the sweeper's process (population or
basic launcher) or on another machine (submitit), since it needs only the config.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from zipnet import session
from zipnet.errors import first_line
from zipnet.runner import Job, Watcher
from zipnet.sweeps import storage as stores
from zipnet.sweeps.study import SPEC, StudySpec, make_pruner

# a trial's last uploaded checkpoint (user attr, JSON): {"artifact_uri", "pass", "path"}; a retry
# inherits its original's user attrs (RetryHeartbeatStaleTrialCallback), so it finds the one to resume
CHECKPOINT = "zipnet.checkpoint"


@dataclass
class Link:
    study_name: str
    url: str
    number: int
    study: object  # optuna.Study
    trial: object  # optuna.Trial
    metric: str
    passes: int
    upload_every: int = 0  # the study's checkpoint_upload_every
    direction: str = "minimize"
    scheduler: dict | None = None  # the study's PBT settings (zipnet/sweeps/pbt.py), or None

    def tags(self) -> dict[str, str]:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        tags = {"zipnet.study": self.study_name, "zipnet.trial": str(self.number)}
        retry_of = RetryHeartbeatStaleTrialCallback.retried_trial_number(self.frozen())
        if retry_of is not None:
            tags["zipnet.retry_of"] = str(retry_of)
        return tags

    def frozen(self):
        storage = stores.open_storage(self.url)
        study_id = storage.get_study_id_from_name(self.study_name)
        return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, self.number))

    def watcher(self) -> TrialWatcher:
        return TrialWatcher(self)

    def carried(self, tracker, folder: Path | None, log=print) -> list[Path]:
        """The checkpoint this trial's original left (given back, or uploaded every N passes), fetched
        into `folder`: from its MLflow run's artifacts, or else the file it names where this machine
        has it. [] for a trial asked the first time, or where none can be had (it trains from pass 1)."""
        found = self.frozen().user_attrs.get(CHECKPOINT)
        if not found:
            return []
        where = json.loads(found)
        if tracker is not None and where.get("artifact_uri") and folder is not None:
            try:
                return [tracker.download(where["artifact_uri"], CHECKPOINT_FILE, folder / "carried")]
            except Exception as err:  # the server lost it, or is away: the trial starts over
                log(
                    f"trial {self.number}: its checkpoint after pass {where['pass']} could not be fetched "
                    f"({first_line(err)}); training from pass 1"
                )
        path = Path(where.get("path") or "")
        return [path] if path.is_file() else []


CHECKPOINT_FILE = "checkpoint.pt"  # its name in a run's artifacts (zipnet.runner.CHECKPOINT in its folder)


def _study(url: str, name: str):
    """The study as its jobs see it, opened once per session (a study's settings never change):
    a random sampler (a job never samples) and the study's pruner, shared by its jobs."""
    studies = session.current().studies
    if (url, name) not in studies:
        import optuna

        storage = stores.open_storage(url)
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
        spec = StudySpec(where=f"study {name!r}", study_name=name, pruner=attrs[SPEC]["pruner"])
        study = optuna.load_study(
            study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(spec)
        )
        found = attrs[SPEC]
        studies[(url, name)] = (
            study,
            found["metric"],
            found.get("checkpoint_upload_every", 0),
            found.get("direction", "minimize"),
            found.get("scheduler"),
        )
    return studies[(url, name)]


def link(cfg: DictConfig) -> Link | None:
    """The trial this job belongs to, or None for a job outside a study."""
    number = OmegaConf.select(cfg, "trial.number", default=None)
    if number is None:
        return None
    import optuna

    name, url = cfg.trial.study, cfg.trial.storage
    study, metric, upload_every, direction, scheduler = _study(url, name)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(number))
    return Link(
        name,
        url,
        int(number),
        study,
        optuna.trial.Trial(study, trial_id),
        metric,
        int(OmegaConf.select(cfg, "trainer.passes")),
        upload_every,
        direction if isinstance(direction, str) else direction[0],
        scheduler,
    )


def refuse(cfg: DictConfig, reason: str) -> None:
    """A job that cannot train fails its trial, with the reason."""
    found = link(cfg)
    if found is not None:
        found.trial.set_user_attr(stores.REASON, reason[:500])
        found.study.tell(found.number, state=_state("FAIL"), skip_if_finished=True)


def _state(name: str):
    from optuna.trial import TrialState

    return getattr(TrialState, name)


class TrialWatcher(Watcher):
    """Reports the study's metric after every pass, prunes, and tells the result."""

    kind = "optuna"

    def __init__(self, found: Link):
        self.link = found
        self.written = 0  # the passes of the last checkpoint this job wrote
        self.uploaded = 0  # ... and of the last it uploaded
        self.lost = False  # its trial ended without it: failed as stale while this worker could not reach the storage

    def _taken(self, job: Job) -> None:
        """The trial is no longer this job's: another worker failed it as stale (this worker's beats did
        not reach the storage for the grace period) and asked it again. Nothing more is told for it, the
        job stops, and its run ends KILLED (the worker says so in one line when the batch settles)."""
        self.lost = True
        job.lost = (
            f"trial {self.link.number} was failed as stale and asked again while this worker could not "
            "reach the storage"
        )

    @classmethod
    @contextlib.contextmanager
    def starting(cls, watchers: list[TrialWatcher]):
        """The population's trials' first writes (their MLflow runs' ids) in one transaction per
        storage, not one each (zipnet.sweeps.held's `together`)."""
        storages = {id(s): s for s in (stores.open_storage(w.link.url) for w in watchers)}  # one per storage
        with contextlib.ExitStack() as stack:
            for storage in storages.values():
                if hasattr(storage, "together"):
                    stack.enter_context(storage.together())
            yield

    def start(self, job: Job) -> None:
        job.metric = self.link.metric
        if job.run_id is not None:  # a live run: whoever finds the trial stale ends it
            self.link.trial.set_user_attr(stores.RUN_ID, job.run_id)
        if job.start is not None:  # resumed: the passes already done are this trial's reports too
            for row in job.start.members[0].history:
                self.link.trial.report(float(row[self.link.metric]), int(row["pass"]))

    def saved(self, job: Job, passes_done: int) -> None:
        self.written = passes_done
        every = self.link.upload_every
        if every and passes_done % every == 0 and passes_done < self.link.passes:
            self._upload(job, passes_done)

    def _upload(self, job: Job, passes_done: int) -> None:
        """The job's checkpoint into its MLflow run (replacing the last), and where it is into the
        trial's user attrs; without tracking, only its path (a worker on this machine resumes it)."""
        tracker = session.current().tracker_for(job.cfg)
        where = {"pass": passes_done, "path": str(job.checkpoint.resolve())}
        # a store whose disk was found full or read-only stopped the worker, in one line: the path only
        if tracker is not None and job.run_id is not None and tracker.fault is None:
            try:
                where["artifact_uri"] = tracker.upload(job.run_id, job.checkpoint)
            except Exception as err:  # the server is away: the retry finds what was uploaded before
                print(
                    f"trial {self.link.number}: its checkpoint after pass {passes_done} did not reach "
                    f"MLflow ({first_line(err)}); the last one there stays"
                )
                return
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            self.link.trial.set_user_attr(CHECKPOINT, json.dumps(where))
        except UpdateFinishedTrialError:
            self._taken(job)
            return
        self.uploaded = passes_done

    def on_pass(self, job: Job, result) -> bool:
        return bool(self.on_passes([(job, result, self)]))

    @classmethod
    def on_passes(cls, seen: list) -> list[Job]:
        """A population's pass: per study, all reports in one write and all pruning decisions
        against one read of the study (zipnet/sweeps/pruning.py)."""
        from zipnet.sweeps import pruning

        by_study: dict[int, list] = {}
        for job, result, watcher in seen:
            by_study.setdefault(id(watcher.link.study), []).append((job, result, watcher))
        stop = []
        for members in by_study.values():
            reports = []
            for _job, result, watcher in members:
                row, link = result.history[-1], watcher.link
                reports.append(
                    pruning.Report(
                        link.trial, float(row[link.metric]), int(row["pass"]), int(row["pass"]) < link.passes
                    )
                )
            decided = pruning.report_and_prune(members[0][2].link.study, reports)
            for (job, _, watcher), report in zip(members, reports):
                if report.refused:
                    watcher._taken(job)
            stop += [job for (job, _, watcher), prune in zip(members, decided) if prune or watcher.lost]
        return stop

    def explores(self) -> bool:
        return bool(self.link.scheduler)

    @classmethod
    def exploit(cls, pass_number: int, seen: list) -> list:
        """PBT's copies at this pass boundary, per study: the bottom of the live members by the
        study's metric copy the top (zipnet/sweeps/pbt.py)."""
        from zipnet.engine.members import Copy
        from zipnet.sweeps import pbt

        by_study: dict[int, list[int]] = {}
        for i, (_, _, watcher) in enumerate(seen):
            if watcher.link.scheduler:
                by_study.setdefault(id(watcher.link.study), []).append(i)
        copies = []
        for places in by_study.values():
            link = seen[places[0]][2].link
            live = [
                (seen[i][2].link.number, float(seen[i][1].history[-1][link.metric]), seen[i][1].current) for i in places
            ]
            for target, source, member, changes in pbt.choose(link.scheduler, link.direction, pass_number, live):
                copies.append(
                    Copy(places[target], places[source], member, source_trial=live[source][0], changes=changes)
                )
        return copies

    def end(self, job: Job, result) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        if not self.lost and self.link.frozen().state.is_finished():  # taken after its last report
            self._taken(job)
        if self.lost:
            return
        try:
            self._tell(result)
        except UpdateFinishedTrialError:  # taken between that read and the tell
            self._taken(job)

    def _tell(self, result) -> None:
        trial, study, number = self.link.trial, self.link.study, self.link.number
        if self.link.scheduler:  # the schedule it followed; its value below is its metric at the end
            from zipnet.engine.members import mutable_values
            from zipnet.sweeps import pbt

            trial.set_user_attr(pbt.COPIES, [pbt.event(copy) for copy in result.copies])
            trial.set_user_attr(pbt.PARAMS, mutable_values(result.current))
        if result.status == "finished":
            study.tell(number, float(result.history[-1][self.link.metric]), skip_if_finished=True)
        elif result.status == "pruned":
            study.tell(number, state=_state("PRUNED"), skip_if_finished=True)
        else:
            trial.set_user_attr(stores.REASON, f"diverged at pass {result.diverged_at_pass}")
            study.tell(number, state=_state("FAIL"), skip_if_finished=True)

    def abort(self, job: Job, status: str, error: BaseException) -> None:
        if status == "FAILED":  # KILLED: the sweeper gives the trial back to be asked again
            self.link.trial.set_user_attr(stores.REASON, first_line(error)[:500])
            self.link.study.tell(self.link.number, state=_state("FAIL"), skip_if_finished=True)
            return
        if self.written and self.written != self.uploaded:  # given back: its retry goes on from here
            self._upload(job, self.written)
