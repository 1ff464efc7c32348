"""One path from composed configs to trained results, for every entry point.

zipnet-train (a population of one), hydra/launcher=population (a grid's jobs), the
zipnet_optuna sweeper (a batch of trials) and zipnet-reproduce all come through here:

    jobs (composed configs) -> populations (what may train in lockstep) -> engine.train
                            -> every pass streamed to each job's watchers -> results

A watcher follows one job: its output folder, its MLflow run, its Optuna trial. It starts
before the first pass, sees each pass as it comes (and may stop its job there: pruning),
and ends with the result, or is aborted (KILLED, FAILED) when training raises. Watchers end in
the reverse of their start, as nested contexts do: a trial's watcher, started after its run's,
tells the trial before the run ends, and a trial found taken (Job.lost) ends its run KILLED.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from zipnet import config as checks
from zipnet.config_yaml import to_yaml
from zipnet.engine import Checkpoint, Copy, Member, RunResult, format_pass, train
from zipnet.engine import checkpoint as checkpoints
from zipnet.errors import first_line
from zipnet.session import Clock

Log = Callable[[str], None]
CHECKPOINT = "checkpoint.pt"  # a job's last checkpoint, in its output folder (trainer.checkpoint_every)
SUMMARY_OVER = 16  # a population larger than this prints one summary line per pass, not each member's lines


@contextlib.contextmanager
def _starting(watchers: list[Watcher]):
    """Inside, each watcher class's `starting` context for its watchers among `watchers`."""
    by_class: dict[type, list[Watcher]] = {}
    for watcher in watchers:
        by_class.setdefault(type(watcher), []).append(watcher)
    with contextlib.ExitStack() as stack:
        for kind, found in by_class.items():
            stack.enter_context(kind.starting(found))
        yield


class Watcher:
    """Follows one job through training; every hook is optional."""

    kind = "other"  # what its time counts as (zipnet.session.Clock)

    def start(self, job: Job) -> None:
        """Before the first pass (the data is loaded: job.digits)."""

    def on_pass(self, job: Job, result: RunResult) -> bool:
        """After each pass, result.history[-1] is its row; True stops the job (pruned)."""
        return False

    @classmethod
    def on_passes(cls, seen: list[tuple[Job, RunResult, Watcher]]) -> list[Job]:
        """One pass of a population, for every watcher of this class at once; returns the jobs
        to stop. By default each watcher's `on_pass`; a class may batch its store's calls."""
        return [job for job, result, watcher in seen if watcher.on_pass(job, result)]

    @classmethod
    def starting(cls, watchers: list[Watcher]):
        """A context around the `start` of every watcher of this class in a population, at once: a
        class may write its store's calls together. By default none."""
        return contextlib.nullcontext()

    def saved(self, job: Job, passes_done: int) -> None:
        """The job's checkpoint after `passes_done` passes is in job.checkpoint (trainer.checkpoint_every)."""

    def explores(self) -> bool:
        """Whether it may copy its job's member from another's at pass boundaries (PBT's exploit)."""
        return False

    @classmethod
    def exploit(cls, pass_number: int, seen: list[tuple[Job, RunResult, Watcher]]) -> list[Copy]:
        """A pass boundary of a population, for every watcher of this class at once: the copies to
        make (engine.Copy, with `target` and `source` places in `seen`). By default none."""
        return []

    def end(self, job: Job, result: RunResult) -> None:
        """The job trained to its end: finished, pruned or diverged."""

    def abort(self, job: Job, status: str, error: BaseException) -> None:
        """Training raised: status is KILLED (interrupted) or FAILED."""


@dataclass
class Job:
    """One configuration to train, with the watchers that follow it."""

    cfg: DictConfig
    overrides: list[str] = field(default_factory=list)
    name: str = ""  # its label in lines and its MLflow run name
    out_dir: Path | None = None
    watchers: list[Watcher] = field(default_factory=list)
    member: Member | None = None
    opts: dict | None = None
    digits: object | None = None  # zipnet.data.Digits, loaded when its population trains
    result: RunResult | None = None
    error: BaseException | None = None  # why it did not train, if it did not
    run_id: str | None = None  # its MLflow run, when tracked
    metric: str = "test/error"  # what its task function returns (a sweep's trial: the study's metric)
    resume: list[Path] = field(default_factory=list)  # checkpoints it may go on from, the newest first
    start: Checkpoint | None = None  # the one it goes on from: the newest of `resume` written for its config
    lost: str | None = None  # why its result is no longer its own (its trial was taken): its run ends KILLED

    @property
    def checkpoint(self) -> Path | None:
        """Where its checkpoints go: its output folder, unless trainer.checkpoint_every is 0."""
        if self.out_dir is None or not (self.opts or {}).get("checkpoint_every"):
            return None
        return self.out_dir / CHECKPOINT

    def check(self) -> Job:
        """Check every value (ConfigError names the key); nothing has run yet."""
        if self.member is None:
            self.member, self.opts = checks.check(self.cfg)
        return self

    def objective(self, metric: str) -> float | None:
        """The final value of `metric` for a job that finished; None otherwise."""
        if self.result is None or self.result.status != "finished" or not self.result.history:
            return None
        return float(self.result.history[-1][metric])


def objective(job: Job) -> float | None:
    """What a Hydra task function returns for the job: its metric at the last pass, or None
    (pruned, diverged, failed)."""
    return job.objective(job.metric)


def plain(cfg: DictConfig) -> dict:
    """The config as a plain resolved dict, without Hydra's node."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("hydra", None)
    return tree


# data keys that change only which digits a member sees, or in what order: members that
# differ in them still train in one lockstep population, each reading its own stream
OWN_STREAM = ("seed", "resize", "deslant", "cache_dir")


def population_key(job: Job) -> str:
    """What members of one population must share: the data's source and sizes, the trainer,
    the connection table, relu or tanh, the output and loss, and the optimiser's form. They
    may differ in the sampling seed, resizing and deslanting (each member reads its own digits), lr,
    init, gain, fan-in rule, seeds, MSE scaling, targets, tanh or scaled tanh, and dropout."""
    tree = plain(job.cfg)
    data = {k: v for k, v in tree["data"].items() if not k.startswith("target_") and k not in OWN_STREAM}
    model, optim = tree["model"], tree["optim"]
    shared = {
        "data": data,
        "trainer": {k: v for k, v in tree["trainer"].items() if k not in ("progress", "resume")},
        "table": [model["table"], model["table_seed"]],
        "relu": model.get("activation") == "relu",
        "output": model.get("output"),
        "loss": tree["loss"].get("name"),
        "optim": [optim["name"], optim.get("hessian"), optim.get("hessian_samples")],
    }
    return json.dumps(shared, sort_keys=True)


def populations(jobs: list[Job]) -> list[list[Job]]:
    """Jobs grouped into populations, in order of first appearance."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(population_key(job), []).append(job)
    return list(groups.values())


More = Callable[[int], list[Job]]  # free lanes -> jobs to train in them (a sweep's refill)


def run(
    jobs: list[Job], log: Log | None = print, bar=None, clock: Clock | None = None, more: More | None = None
) -> list[Job]:
    """Train every job, as few populations as their configs allow; returns the jobs with
    their results (or errors). Checks every job first, so a bad value trains nothing. Time
    goes to `clock` (by default the session's).

    `more(free)`: at a pass boundary where jobs left a population (pruned, diverged or finished),
    jobs for the free lanes; each joins at its pass 1 (engine.train's refill). One that cannot join
    (another population's config, or one resumed from a checkpoint) trains after, in its own.

    KeyboardInterrupt (Ctrl-C, or a preemption signal) aborts the started jobs as KILLED
    and propagates. Any other error while training a population fails that population's
    jobs (their `error` says why) and the next population trains.
    """
    from zipnet import session

    clock = clock or session.current().clock
    for job in jobs:
        job.check()
    groups = populations(jobs)
    n = 0
    while groups:
        group = groups.pop(0)
        n += 1
        if log is not None and len(jobs) > 1:
            log(f"population {n}/{n + len(groups)}: {len(group)} members, {group[0].opts['passes']} passes")
        later: list[Job] = []
        train_population(group, log, bar, clock, more, later)
        groups += populations(later)
    return jobs


def train_population(
    group: list[Job], log: Log | None, bar, clock: Clock, more: More | None = None, later: list[Job] | None = None
) -> None:
    import torch

    from zipnet.data import load_digits

    opts = group[0].opts
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    started: list[Job] = []
    place = {id(job.member): k for k, job in enumerate(group)}
    # lines go around the progress bar when one is drawn (a terminal), else to `log`
    say = (bar.write if getattr(bar, "enabled", False) else log) if log is not None else None

    def by_kind(live: list[RunResult]) -> dict[type, list]:
        """Each kind of watcher sees the whole pass at once."""
        seen: dict[type, list] = {}
        for result in live:
            job = group[place[id(result.member)]]
            for watcher in job.watchers:
                seen.setdefault(type(watcher), []).append((job, result, watcher))
        return seen

    def on_pass(pass_number: int, live: list[RunResult]) -> set[int]:
        stop = set()
        if live:  # the engine's time for this pass, the same for every member
            clock.add("training", live[0].history[-1].get("seconds", 0.0))
            clock.add("evaluation", live[0].history[-1].get("eval_seconds", 0.0))
        for kind, members in by_kind(live).items():
            with clock.timing(kind.kind):
                stop.update(place[id(job.member)] for job in kind.on_passes(members))
        if say is not None and len(group) > 1:
            lines(group, live, pass_number, say)
        return stop

    def exploit(pass_number: int, live: list[RunResult]) -> list[Copy]:
        """PBT: the watchers' copies, with the engine's places and the source's run."""
        copies = []
        for kind, members in by_kind(live).items():
            with clock.timing(kind.kind):
                for copy in kind.exploit(pass_number, members):
                    source = members[copy.source][0]
                    copy.target, copy.source = place[id(members[copy.target][0].member)], place[id(source.member)]
                    copy.source_run = source.run_id or ""
                    copies.append(copy)
        if say is not None:
            for copy in copies:
                changes = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in copy.changes.items())
                say(f"pass {pass_number}: {group[copy.target].name} copies {group[copy.source].name}; {changes}")
        return copies

    loaded: dict[str, object] = {}  # one load per distinct data config

    def load(job: Job) -> None:
        key = json.dumps(
            {k: v for k, v in plain(job.cfg)["data"].items() if not k.startswith("target_")}, sort_keys=True
        )
        if key not in loaded:
            loaded[key] = load_digits(job.cfg.data)
            if say is not None:
                d = loaded[key]
                say(
                    f"data: {job.cfg.data.source}, {len(d.train_y)} train / {len(d.test_y)} test, "
                    f"fingerprint {d.fingerprint[:12]}"
                )
        job.digits = loaded[key]

    key = population_key(group[0])

    ended: set[int] = set()  # ids of jobs ended when they left a refilled population

    def end(job: Job, result: RunResult) -> None:
        job.result = result
        if say is not None and result.status == "diverged":
            name = f"{job.name}: " if len(group) > 1 else ""
            say(f"{name}diverged at pass {result.diverged_at_pass}: stopped; lower optim.lr or change the init")
        for watcher in reversed(job.watchers):  # the trial's verdict before its run's end
            with clock.timing(watcher.kind):
                watcher.end(job, result)

    def refill(pass_number: int, free: int, left: list[RunResult]) -> list[tuple[Member, object]]:
        """The jobs that left end now (their trials told, so the sampler and the pruner learn from
        them before the next asks); then more jobs for the free lanes: those of this population's
        config join `part` (and the group)."""
        for result in left:
            job = group[place[id(result.member)]]
            ended.add(id(job))  # nothing to abort any more
            end(job, result)
        joining = []
        for job in more(free) if free else ():
            job.check()
            if population_key(job) != key or job.resume:
                later.append(job)
                continue
            load(job)
            group.append(job)
            part.append(job)
            place[id(job.member)] = len(group) - 1
            started.append(job)
            for watcher in job.watchers:
                with clock.timing(watcher.kind):
                    watcher.start(job)
            if say is not None:
                say(f"pass {pass_number}: {job.name or 'a job'} joins in a free lane")
            joining.append((job.member, job.digits))
        return joining

    try:
        for job in group:
            load(job)
        for job in group:
            job.start = _start(job)
            if job.start is not None and say is not None:
                name = f"{job.name}: " if len(group) > 1 else ""
                say(f"{name}resumed from {job.start.source}: {job.start.passes_done} of {opts['passes']} passes done")
        with _starting([w for job in group for w in job.watchers]):
            for job in group:
                started.append(job)  # aborted if anything below raises, however far its watchers got
                for watcher in job.watchers:
                    with clock.timing(watcher.kind):
                        watcher.start(job)
        results = {}
        for part in _by_passes_done(group):  # lockstep: only members at the same pass train together
            digits = part[0].digits if len({id(job.digits) for job in part}) == 1 else [job.digits for job in part]
            # a single run prints the seed's lines itself (the engine's log); a population, each job's
            trained = train(
                [job.member for job in part],
                digits,
                log=say if len(group) == 1 else None,
                on_pass=on_pass,
                progress=bar,
                start=Checkpoint.stack([job.start for job in part]) if part[0].start is not None else None,
                checkpoint_every=opts["checkpoint_every"],
                on_checkpoint=_saver(part, clock) if any(job.checkpoint for job in part) else None,
                exploit=exploit if any(w.explores() for job in part for w in job.watchers) else None,
                refill=refill if more is not None else None,
                **engine_options(opts),
            )
            results.update(zip(map(id, part), trained))
        results = [results[id(job)] for job in group]
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        for job in group:
            if id(job) not in ended:
                job.error = err
        for job in started:
            if id(job) in ended:
                continue
            for watcher in job.watchers:
                watcher.abort(job, status, err)
        if isinstance(err, KeyboardInterrupt) or len(started) == 0 and not _recoverable(err):
            raise
        if say is not None:
            say(f"population of {len(group)} failed: {first_line(err)}")
        return
    if bar is not None:
        bar.close()
    for job, result in zip(group, results):
        if id(job) not in ended:
            end(job, result)


def _start(job: Job) -> Checkpoint | None:
    """The newest of the job's checkpoints written for its config; None when it has none. Where
    every one of them is another config's, the newest is refused, in one line naming what differs."""
    if not job.resume:
        return None
    opts = job.opts
    configs = [checkpoints.member_config(job.member, checkpoints.fingerprint(job.digits))]
    shared = checkpoints.shared_config([job.member], opts["passes"], opts["shift"], opts["shift_seed"])
    found = [Checkpoint.load(path) for path in job.resume]
    for candidate in found:
        if candidate.fits(configs, shared):
            return candidate
    found[0].check(configs, shared)  # raises
    return None


def _by_passes_done(group: list[Job]) -> list[list[Job]]:
    """The group's jobs by how many passes their checkpoints have done (none: 0), in order."""
    parts: dict[int, list[Job]] = {}
    for job in group:
        parts.setdefault(job.start.passes_done if job.start is not None else 0, []).append(job)
    return list(parts.values())


def _saver(part: list[Job], clock: Clock):
    """The engine's checkpoint hook for these jobs: each live member's state into its job's
    folder, replacing the one before, with its MLflow run id."""

    def save(state: Checkpoint, positions: list[int]) -> None:
        with clock.timing("checkpoint"):
            for k, pos in enumerate(positions):
                job = part[pos]
                if job.checkpoint is None:
                    continue
                mine = state.member(k)
                mine.members[0].meta = {"mlflow_run_id": job.run_id} if job.run_id else {}
                job.checkpoint.parent.mkdir(parents=True, exist_ok=True)
                mine.save(job.checkpoint)
                for watcher in job.watchers:
                    watcher.saved(job, state.passes_done)

    return save


def _recoverable(err: BaseException) -> bool:
    """Errors that fail the jobs but not the caller: the data or a config for this group."""
    from zipnet.errors import ConfigError, DataError

    return isinstance(err, (ConfigError, DataError, OSError, ValueError, RuntimeError))


def engine_options(opts: dict) -> dict:
    return checks.engine_options(opts)


def lines(group: list[Job], live: list[RunResult], pass_number: int, say: Log) -> None:
    """A population's lines per pass: the seed's lines prefixed by each job's name, or one
    summary line for a large population."""
    if len(group) <= SUMMARY_OVER:
        place = {id(job.member): job for job in group}
        for result in live:
            say(format_pass(result, prefix=f"{place[id(result.member)].name or 'member'}: "))
        return
    errors = [r.history[-1]["test/error"] for r in live]
    if errors:
        say(f"pass {pass_number}: {len(live)} live, best test/error {min(errors):.2f}%")


# ----------------------------------------------------------------------------------------
# Standard watchers


class Output(Watcher):
    """The job's folder: config_resolved.yaml and metrics.json (per-pass metrics)."""

    kind = "output"

    def end(self, job: Job, result: RunResult) -> None:
        if job.out_dir is None:
            return
        job.out_dir.mkdir(parents=True, exist_ok=True)
        (job.out_dir / "config_resolved.yaml").write_text(to_yaml(job.cfg, resolve=True))
        summary = {
            "status": result.status,
            "diverged_at_pass": result.diverged_at_pass,
            "history": result.history,
            "data_fingerprint": getattr(job.digits, "fingerprint", None),
            "engine": engine_tags(result),
        }
        (job.out_dir / "metrics.json").write_text(json.dumps(summary, indent=1))


class Tracked(Watcher):
    """The job's MLflow run: created before the first pass, each pass logged as it comes,
    artifacts and the model at the end. It ends FINISHED, FAILED or KILLED."""

    kind = "tracking"

    def __init__(
        self, tracker, tags: dict[str, str] | None = None, parent_run_id: str | None = None, role: str = "run"
    ):
        self.tracker, self.tags, self.parent, self.role = tracker, dict(tags or {}), parent_run_id, role
        self.logged = 0  # rows of the job's history handed to the tracker
        self.stored = 0  # the last pass the run had in the store before this process (a resumed run)

    def start(self, job: Job) -> None:
        """A new run; or, for a job resumed from a checkpoint, the run the checkpoint names, where
        this store has it (else a new one), tagged with the pass it resumes from. Either way its
        passes so far are logged once."""
        from zipnet import preempt

        tags, done, carried = dict(self.tags), None, []
        if job.start is not None:
            tags["zipnet.resumed_from_pass"] = str(job.start.passes_done)
            carried = job.start.members[0].history
            # a trial asked again is a new trial with a run of its own; the old one stays KILLED
            run_id = job.start.members[0].meta.get("mlflow_run_id") if self.role != "trial" else None
            if run_id:
                with preempt.critical():
                    done = self.tracker.reopen(run_id, tags, role=self.role, parent_run_id=self.parent)
            if done is not None:
                job.run_id, self.stored = run_id, done
        if done is None:
            with preempt.critical():  # a run is created and recorded whole, or not at all
                job.run_id = self.tracker.start(job.name or None, tags, role=self.role, parent_run_id=self.parent)
            self.tracker.log_config(job.run_id, job.cfg, job.overrides, job.digits)
        self._log(job, carried)

    def _log(self, job: Job, history: list[dict]) -> None:
        """The rows from self.logged on, less the passes the run had already."""
        self.tracker.log_history(job.run_id, [row for row in history[self.logged :] if row["pass"] > self.stored])
        self.logged = len(history)

    def on_pass(self, job: Job, result: RunResult) -> bool:
        self._log(job, result.history)
        return False

    def end(self, job: Job, result: RunResult) -> None:
        from zipnet import tracking
        from zipnet.tracking import lineage

        self._log(job, result.history)  # the pass a member diverged in
        if job.lost is not None:  # its trial is another worker's now: this run is not the trial's result
            self.tracker.end(job.run_id, "KILLED", job.lost)
            return
        if result.copies:  # PBT: its lineage, and its state after each copy (what a replay starts from)
            tags, files = lineage.outputs(result.copies)
            self.tracker.log_batch(job.run_id, tags=tags, files=files)
        tags = tracking.population_tags(result.population_sizes or [1], result.population_positions or [0])
        tags.update(engine_tags(result))
        self.tracker.finish(job.run_id, result, job.digits, extra_tags=tags)

    def abort(self, job: Job, status: str, error: BaseException) -> None:
        if job.run_id is not None:
            self.tracker.end(job.run_id, status, error)


def engine_tags(result: RunResult) -> dict[str, str]:
    """Which backend trained the run, and on what: the last bits of its metrics depend on both."""
    tags = {}
    for attr, tag in (("backend", "zipnet.backend"), ("kernel_build", "zipnet.kernel_build"), ("cpu", "zipnet.cpu")):
        value = getattr(result, attr, None)
        if value is not None:
            tags[tag] = str(value)
    return tags
