"""zipnet-sweep: an Optuna study that trains its trials K at a time as one population.

    zipnet-sweep sweeps/paper_open_choices.yaml
    zipnet-sweep sweeps/paper_open_choices.yaml data.n_train=1000 trainer.passes=5 --n-trials 20

The study file names the study, its storage, the metric and direction, the target
`n_trials`, the batch size K, the pruner, the sampler and the search space (see
sweeps/paper_open_choices.yaml). Each batch asks K trials, composes each trial's config
with Hydra's compose API (conf/ + the file's overrides + the command line's + the
trial's values), groups them by what must be shared (data, passes, device), trains each
group with `engine.train` in lockstep, reports the metric to Optuna after every pass so the
pruner can drop members, then tells each trial and logs it as an MLflow child run under
the study's parent run.

What the stock Hydra + Optuna stack gets wrong, and what this does instead:
- resume: rerunning the same command continues to `n_trials` in total. Completed, pruned
  and failed trials count; a trial left RUNNING by a killed worker is marked FAIL
  (`zipnet.interrupted`), its MLflow run is deleted, and its parameters are asked again.
- parallel workers: any number of processes run the same command. For a local storage
  (sqlite, journal file) a file lock makes "count, then ask" atomic, so the workers stop
  at exactly `n_trials`; for a server storage the overshoot is marked FAIL (`zipnet.surplus`).
- failures: a diverged or crashed trial is told FAIL and the sweep goes on, until more
  than `max_failure_rate * n_trials` trials have failed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import inspect
import json
import math
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zipnet import config as checks
from zipnet import paper, tracking
from zipnet.errors import ConfigError, DataError

METRICS = (*(f"{split}/{name}" for split in ("train", "test") for name in ("loss", "error", "misses")), paper.GAP)
FILE_KEYS = ("study", "storage", "storage_timeout", "metric", "direction", "n_trials", "batch", "max_failure_rate",
             "sampler", "pruner", "overrides", "space")
PARAM_KEYS = ("choices", "type", "low", "high", "log", "step")
WORKER = "zipnet.worker"
INTERRUPTED = "zipnet.interrupted"
SURPLUS = "zipnet.surplus"
REASON = "zipnet.fail_reason"
RUN_ID = "zipnet.mlflow_run_id"
PARENT = "zipnet.mlflow_parent_run_id"


class SweepError(ValueError):
    """A study file, storage or sweep state zipnet cannot use. The message names file and key."""


class FailureBudgetExceeded(RuntimeError):
    """More trials failed than max_failure_rate allows."""


# ----------------------------------------------------------------------------------------
# The study file


@dataclass(frozen=True)
class Param:
    """One dimension of the search space."""

    name: str
    kind: str  # categorical | float | int
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    sets: dict[str, dict[str, Any]] | None = None  # label -> {config key: value}, for linked keys

    def distribution(self):
        import optuna

        if self.kind == "categorical":
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return optuna.distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def assignments(self, value) -> dict[str, Any]:
        """The config keys this parameter's value sets."""
        return dict(self.sets[value]) if self.sets is not None else {self.name: value}

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"categorical{list(self.choices)}"
        return f"{self.kind}[{self.low}, {self.high}]" + (" log" if self.log else "") + (f" step {self.step}" if self.step else "")


@dataclass
class Spec:
    """A validated study file (plus the command line's settings)."""

    path: Path
    study: str
    storage: str | None = None
    storage_timeout: float = 30.0
    metric: str = "test/error"
    direction: str = "minimize"
    n_trials: int = 20
    batch: int = 16
    max_failure_rate: float = 0.2
    sampler: dict = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict = field(default_factory=lambda: {"name": "median"})
    overrides: list[str] = field(default_factory=list)
    space: dict[str, Param] = field(default_factory=dict)

    @property
    def failure_budget(self) -> int:
        return math.floor(self.max_failure_rate * self.n_trials + 1e-9)

    def as_dict(self) -> dict:
        return {"study": self.study, "metric": self.metric, "direction": self.direction, "n_trials": self.n_trials,
                "batch": self.batch, "max_failure_rate": self.max_failure_rate, "sampler": self.sampler,
                "pruner": self.pruner, "overrides": self.overrides,
                "space": {n: p.describe() for n, p in self.space.items()}}


def _fail(path, key: str, message: str):
    raise SweepError(f"{path}: {key}: {message}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _param(path, name: str, node) -> Param:
    key = f"space.{name}"
    if not isinstance(node, dict):
        _fail(path, key, "give a mapping with `choices`, or `low` and `high`")
    for k in node:
        if k not in PARAM_KEYS:
            _fail(path, f"{key}.{k}", f"unknown key; use {', '.join(PARAM_KEYS)}")
    kind = node.get("type")
    if kind is not None and kind not in ("categorical", "float", "int"):
        _fail(path, f"{key}.type", f"{kind!r} is not allowed; choose one of categorical, float, int")
    if "choices" in node or kind == "categorical":
        extra = [k for k in ("low", "high", "log", "step") if k in node]
        if extra:
            _fail(path, f"{key}.{extra[0]}", "does not go with `choices`")
        choices = node.get("choices")
        if isinstance(choices, dict):  # linked keys: label -> {key: value, ...}
            if not choices:
                _fail(path, f"{key}.choices", "is empty; give at least one choice")
            for label, sets in choices.items():
                if not isinstance(sets, dict) or not sets:
                    _fail(path, f"{key}.choices.{label}", "give a mapping of config keys to values")
            return Param(name, "categorical", tuple(str(c) for c in choices), sets={str(c): s for c, s in choices.items()})
        if not isinstance(choices, list) or not choices:
            _fail(path, f"{key}.choices", "is empty; give a non-empty list of values")
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                _fail(path, f"{key}.choices", f"{c!r} is not allowed; choices are numbers, strings, booleans or null")
        if len(set(map(repr, choices))) != len(choices):
            _fail(path, f"{key}.choices", "lists a value twice")
        return Param(name, "categorical", tuple(choices))
    for bound in ("low", "high"):
        if bound not in node:
            _fail(path, key, f"missing `{bound}`; give `choices`, or `low` and `high`")
        if not _is_number(node[bound]):
            _fail(path, f"{key}.{bound}", f"{node[bound]!r} is not a finite number")
    low, high = node["low"], node["high"]
    if kind is None:
        kind = "int" if isinstance(low, int) and isinstance(high, int) and not isinstance(node.get("step"), float) else "float"
    log = node.get("log", False)
    if not isinstance(log, bool):
        _fail(path, f"{key}.log", f"{log!r} is not allowed; choose one of true, false")
    step = node.get("step")
    if step is not None and not (_is_number(step) and step > 0):
        _fail(path, f"{key}.step", f"{step!r} is not allowed; give a number > 0")
    if kind == "int":
        for bound, v in (("low", low), ("high", high)):
            if not float(v).is_integer():
                _fail(path, f"{key}.{bound}", f"{v!r} is not an integer (type: int)")
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
    else:
        low, high = float(low), float(high)
    if low > high:
        _fail(path, f"{key}.low", f"low ({low}) is above high ({high})")
    if log and low <= 0:
        _fail(path, f"{key}.low", f"log scale needs low > 0, not {low}")
    if log and step is not None:
        _fail(path, f"{key}.step", "does not go with log: true")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _named(path, key: str, node, default_name: str) -> dict:
    if node is None:
        return {"name": default_name}
    if isinstance(node, str):
        return {"name": node}
    if not isinstance(node, dict) or not isinstance(node.get("name", default_name), str):
        _fail(path, key, "give a name, or a mapping with `name` and its settings")
    return {"name": default_name, **node}


def load_spec(path: str | Path, **settings) -> Spec:
    """Read and check a study file; `settings` (n_trials, batch, storage, study) override it.

    Every error names the file and the key; nothing has run yet.
    """
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: no such study file")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: give a mapping of {', '.join(FILE_KEYS)}")
    for key in raw:
        if key not in FILE_KEYS:
            _fail(path, key, f"unknown key; use {', '.join(FILE_KEYS)}")
    raw.update({k: v for k, v in settings.items() if v is not None})
    study = raw.get("study", path.stem)
    if not (isinstance(study, str) and study.strip()):
        _fail(path, "study", f"{study!r} is not allowed; give a non-empty name")
    spec = Spec(path=path, study=study)
    storage = raw.get("storage")
    if storage is not None and not (isinstance(storage, str) and storage):
        _fail(path, "storage", f"{storage!r} is not allowed; give null (the default sqlite file) or a storage URL")
    spec.storage = storage
    timeout = raw.get("storage_timeout", spec.storage_timeout)
    if not (_is_number(timeout) and timeout > 0):
        _fail(path, "storage_timeout", f"{timeout!r} is not allowed; give seconds > 0")
    spec.storage_timeout = float(timeout)
    metric = raw.get("metric", spec.metric)
    if metric not in METRICS:
        _fail(path, "metric", f"{metric!r} is not allowed; choose one of {', '.join(METRICS)}")
    spec.metric = metric
    direction = raw.get("direction", spec.direction)
    if direction not in ("minimize", "maximize"):
        _fail(path, "direction", f"{direction!r} is not allowed; choose one of minimize, maximize")
    spec.direction = direction
    for key, minimum in (("n_trials", 1), ("batch", 1)):
        value = raw.get(key, getattr(spec, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            _fail(path, key, f"{value!r} is not allowed; give an integer >= {minimum}")
        setattr(spec, key, value)
    rate = raw.get("max_failure_rate", spec.max_failure_rate)
    if not (_is_number(rate) and 0 <= rate <= 1):
        _fail(path, "max_failure_rate", f"{rate!r} is not allowed; give a number in [0, 1]")
    spec.max_failure_rate = float(rate)
    spec.sampler = _named(path, "sampler", raw.get("sampler", spec.sampler), "tpe")
    spec.pruner = _named(path, "pruner", raw.get("pruner", spec.pruner), "median")
    make_sampler(spec, 0)  # unknown names and settings fail here, naming the key
    make_pruner(spec)
    overrides = raw.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        _fail(path, "overrides", "give a list of key=value config overrides")
    spec.overrides = list(overrides)
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        _fail(path, "space", "is missing or empty; give at least one parameter")
    spec.space = {str(name): _param(path, str(name), node) for name, node in space.items()}
    return spec


SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "qmc": "QMCSampler",
            "gp": "GPSampler", "nsga2": "NSGAIISampler"}
PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner",
           "successive_halving": "SuccessiveHalvingPruner", "threshold": "ThresholdPruner",
           "patient": "PatientPruner", "wilcoxon": "WilcoxonPruner", "none": "NopPruner"}


def _build(spec: Spec, key: str, table: dict, module, settings: dict):
    name = settings["name"]
    if name not in table:
        _fail(spec.path, f"{key}.name", f"{name!r} is not allowed; choose one of {', '.join(table)}")
    cls = getattr(module, table[name])
    kwargs = {k: v for k, v in settings.items() if k != "name"}
    accepted = inspect.signature(cls).parameters
    for k in kwargs:
        if k not in accepted:
            allowed = ", ".join(p for p in accepted if p not in ("self", "kwargs")) or "none"
            _fail(spec.path, f"{key}.{k}", f"unknown setting of the {name} {key}; it takes {allowed}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        _fail(spec.path, key, str(err))


def make_sampler(spec: Spec, offset: int):
    """The sampler for one batch. Its seed moves on with the number of trials already in the
    study, so a resumed or second worker never replays the first worker's draws."""
    import optuna

    settings = dict(spec.sampler)
    if settings.get("seed") is not None and _is_number(settings["seed"]):
        settings["seed"] = int(settings["seed"]) + 7919 * offset
    return _build(spec, "sampler", SAMPLERS, optuna.samplers, settings)


def make_pruner(spec: Spec):
    import optuna

    return _build(spec, "pruner", PRUNERS, optuna.pruners, spec.pruner)


# ----------------------------------------------------------------------------------------
# Trial configs


_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def override_value(value: Any) -> str:
    """A Python value as a Hydra override value that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    text = str(value)
    if _BARE.fullmatch(text) and text.lower() not in ("true", "false", "null", "inf", "nan"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(spec: Spec, params: dict[str, Any]) -> list[str]:
    out = []
    for name, param in spec.space.items():
        for key, value in param.assignments(params[name]).items():
            out.append(f"{key}={override_value(value)}")
    return out


class Composer:
    """Hydra's compose API over conf/, opened once for the whole sweep."""

    def __init__(self):
        from hydra import initialize_config_dir

        from zipnet.train import CONF_DIR

        self._ctx = initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")

    def __enter__(self):
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)

    @staticmethod
    def compose(overrides: list[str]) -> DictConfig:
        from hydra import compose

        return compose(config_name="config", overrides=list(overrides))


def check_space(spec: Spec, composer: Composer, base: list[str]) -> DictConfig:
    """Compose the base config and every choice and bound once, before any trial runs."""
    try:
        cfg = composer.compose(base)
        checks.member(cfg)
        checks.trainer(cfg)
    except Exception as err:
        raise SweepError(f"{spec.path}: overrides: {' '.join(base)}: {_one_line(err)}") from err
    fixed = {o.split("=", 1)[0].lstrip("+~") for o in base}
    for name, param in spec.space.items():
        values = param.choices if param.kind == "categorical" else (param.low, param.high)
        for value in values:
            sets = param.assignments(value)
            for key in sets:
                if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
                    _fail(spec.path, f"space.{name}", f"{key!r} is not a config key (see `zipnet-train --cfg job`)")
                if key in fixed:
                    _fail(spec.path, f"space.{name}", f"{key!r} is also set by the overrides; sweep it or fix it, not both")
            try:
                trial_cfg = composer.compose(base + [f"{k}={override_value(v)}" for k, v in sets.items()])
                checks.member(trial_cfg)
                checks.trainer(trial_cfg)
            except Exception as err:
                _fail(spec.path, f"space.{name}", f"value {value!r}: {_one_line(err)}")
    return cfg


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# ----------------------------------------------------------------------------------------
# Storage, locks and workers


def default_storage(tracking_uri: str) -> str:
    """sqlite next to the MLflow store when that is sqlite, else mlruns/optuna.db here."""
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///'):]).parent / 'optuna.db'}"
    return tracking.resolve_uri("sqlite:///mlruns/optuna.db")


def storage_file(url: str) -> Path | None:
    """The local file behind a sqlite or journal storage URL, else None."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    if url.startswith("journal:"):
        return Path(url[len("journal:"):].removeprefix("//"))
    return None


def open_storage(url: str, timeout: float):
    """An Optuna storage: an RDB URL (sqlite, postgresql, mysql) or `journal:PATH`."""
    import optuna

    path = storage_file(url)
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        kwargs = {"connect_args": {"timeout": timeout}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as err:
        raise storage_error(url, err) from err


def storage_error(url: str, err: BaseException) -> SweepError:
    text = str(err)
    if "locked" in text or "busy" in text:
        return SweepError(f"storage {url}: the database is locked by another process and stayed locked past "
                          f"storage_timeout; wait for it, or give each machine a server storage (postgresql://...)")
    return SweepError(f"storage {url}: cannot open it: {_one_line(err)}")


@contextlib.contextmanager
def study_lock(url: str):
    """An exclusive lock beside a local storage file; a server storage takes no lock."""
    path = storage_file(url)
    if path is None:
        yield
        return
    with open(f"{path}.zipnet-lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]  # state, ..., starttime (field 22)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()) or 0}"


def worker_alive(worker: str) -> bool:
    """Whether the worker that owns a trial still runs. A worker on another host is
    assumed alive; its trials are recovered when that host resumes."""
    host, pid, start = worker.rsplit(":", 2)
    if host != socket.gethostname():
        return True
    now = _start_time(int(pid))
    return now is not None and (start == "0" or now == start)


@dataclass
class Tally:
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # diverged or crashed; counts toward n_trials and the failure budget
    running: int = 0
    total: int = 0  # every trial in the storage, for the sampler's seed

    @property
    def counted(self) -> int:
        return self.complete + self.pruned + self.failed


def tally(trials) -> Tally:
    from optuna.trial import TrialState

    t = Tally(total=len(trials))
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            t.complete += 1
        elif trial.state == TrialState.PRUNED:
            t.pruned += 1
        elif trial.state == TrialState.FAIL and not (trial.user_attrs.get(INTERRUPTED) or trial.user_attrs.get(SURPLUS)):
            t.failed += 1
        elif trial.state == TrialState.RUNNING:
            t.running += 1
    return t


# ----------------------------------------------------------------------------------------
# The sweep


@dataclass
class Job:
    trial: Any  # optuna.Trial
    overrides: list[str]
    cfg: DictConfig | None = None
    member: Any = None
    opts: dict | None = None


class Sweep:
    def __init__(self, spec: Spec, cli_overrides: list[str] = (), log=print):
        self.spec, self.log = spec, log
        self.base = spec.overrides + list(cli_overrides)
        self.worker = worker_id()
        self.tracker: tracking.Tracker | None = None
        self.parent: str | None = None
        self.mine: dict[int, Any] = {}  # trial number -> Trial, asked by this worker and not told

    # -- setup -------------------------------------------------------------------------

    def _open(self, base_cfg: DictConfig) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.tracker = tracking.Tracker.from_config(base_cfg)
        uri = self.tracker.uri if self.tracker else tracking.resolve_uri(tracking.settings(base_cfg).uri)
        self.url = self.spec.storage or default_storage(uri)
        path = storage_file(self.url)
        if path is not None and self.spec.storage is None:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif path is not None and not path.parent.is_dir():
            raise SweepError(f"storage {self.url}: the folder {path.parent} does not exist; create it or fix the URL")
        with study_lock(self.url):  # two workers starting together must not both create the tables
            self.storage = open_storage(self.url, self.spec.storage_timeout)
            self.study = optuna.create_study(study_name=self.spec.study, storage=self.storage, load_if_exists=True,
                                             direction=self.spec.direction, sampler=make_sampler(self.spec, 0),
                                             pruner=make_pruner(self.spec))
            if self.study.direction.name.lower() != self.spec.direction:
                raise SweepError(f"{self.spec.path}: direction: study {self.spec.study!r} in {self.url} was created to "
                                 f"{self.study.direction.name.lower()}; the file says {self.spec.direction}")
            attrs = self.study.user_attrs
            if "zipnet.spec" not in attrs:
                self.study.set_user_attr("zipnet.spec", self.spec.as_dict())
            if self.tracker is not None:
                self.parent = attrs.get(PARENT) or self._start_parent()
                self.tracker.client.update_run(self.parent, status="RUNNING")

    def _start_parent(self) -> str:
        from mlflow.entities import Param

        spec, tr = self.spec, self.tracker
        run_id = tr.start(spec.study, role="study", tags={"zipnet.study": spec.study, "zipnet.storage": self.url})
        params = {"sweep.metric": spec.metric, "sweep.direction": spec.direction, "sweep.n_trials": spec.n_trials,
                  "sweep.batch": spec.batch, "sweep.max_failure_rate": spec.max_failure_rate,
                  "sweep.sampler": json.dumps(spec.sampler), "sweep.pruner": json.dumps(spec.pruner),
                  "sweep.overrides": " ".join(self.base), "sweep.file": str(spec.path)}
        params.update({f"sweep.space.{n}": p.describe() for n, p in spec.space.items()})
        tr.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        tr.client.log_artifact(run_id, str(spec.path))
        self.study.set_user_attr(PARENT, run_id)
        return run_id

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> Tally:
        spec = self.spec
        with Composer() as composer:
            self.composer = composer
            base_cfg = check_space(spec, composer, self.base)
            try:
                self._open(base_cfg)
            except SweepError:
                raise
            except Exception as err:
                raise storage_error(spec.storage or "(default)", err) from err
            self.distributions = {n: p.distribution() for n, p in spec.space.items()}
            self.log(f"study {spec.study!r} in {self.url}: target {spec.n_trials} trials, {spec.batch} at a time"
                     + (f"; MLflow parent run {self.parent}" if self.parent else ""))
            try:
                while True:
                    trials = self._ask()
                    if not trials:
                        break
                    self._run_batch(trials)
            except KeyboardInterrupt:
                self._interrupt_mine()
                if self.parent:
                    self.tracker.end(self.parent, "KILLED")
                raise
            except FailureBudgetExceeded:
                if self.parent:
                    self._summarise(final=False)
                    self.tracker.end(self.parent, "FAILED", "failure budget exceeded")
                raise
            return self._summarise(final=True)

    def _ask(self) -> list:
        spec = self.spec
        with study_lock(self.url):
            self._recover()
            trials = self.study.get_trials(deepcopy=False)
            now = tally(trials)
            free = spec.n_trials - now.counted - now.running
            if free <= 0:
                return []
            if now.failed > spec.failure_budget:
                raise FailureBudgetExceeded(
                    f"{now.failed} trials failed; max_failure_rate {spec.max_failure_rate} of {spec.n_trials} "
                    f"allows {spec.failure_budget}. The study is kept: fix the cause and rerun the same command.")
            self.study.sampler = make_sampler(spec, now.total)
            asked = []
            for _ in range(min(spec.batch, free)):
                trial = self.study.ask(self.distributions)
                trial.set_user_attr(WORKER, self.worker)
                asked.append(trial)
                self.mine[trial.number] = trial
        # a server storage has no lock: whoever went past n_trials gives its extra trials back
        after = tally(self.study.get_trials(deepcopy=False))
        excess = after.counted + after.running - spec.n_trials
        keep = []
        for trial in sorted(asked, key=lambda t: t.number, reverse=True):
            if excess > 0:
                trial.set_user_attr(SURPLUS, True)
                self._tell(trial, "FAIL")
                excess -= 1
            else:
                keep.append(trial)
        return sorted(keep, key=lambda t: t.number)

    def _recover(self) -> None:
        """Trials left RUNNING by a dead worker: FAIL (interrupted), runs deleted, asked again."""
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get(WORKER)
            # under the lock, a running trial without a worker lost its worker between ask and attr
            if worker is not None and worker_alive(worker):
                continue
            if worker is None and storage_file(self.url) is None and time.time() - t.datetime_start.timestamp() < 300:
                continue
            self.storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
            self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            self._delete_runs(t.number)
            if set(t.params) == set(self.spec.space):  # killed inside `ask` leaves nothing to retry
                self.study.enqueue_trial(t.params, user_attrs={"zipnet.retry_of": t.number})
            self.log(f"trial {t.number} was left running by {worker or 'a lost worker'}: marked interrupted, asked again")

    def _delete_runs(self, number: int) -> None:
        if self.tracker is None:
            return
        client = self.tracker.client
        runs = client.search_runs([self.tracker.experiment_id],
                                  filter_string=f"tags.`zipnet.study` = '{self.spec.study}' and tags.`zipnet.trial` = '{number}'")
        for run in runs:
            client.delete_run(run.info.run_id)

    def _interrupt_mine(self) -> None:
        """Ctrl-C: this worker's open trials become interrupted and are asked again on resume."""
        with study_lock(self.url):
            for number, trial in list(self.mine.items()):
                try:
                    self.storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
                    self._tell(trial, "FAIL")
                    self._delete_runs(number)
                    self.study.enqueue_trial(trial.params, user_attrs={"zipnet.retry_of": number})
                except Exception:
                    pass
        tracking.abort_open_runs("KILLED")

    def _tell(self, trial, state: str, value: float | None = None) -> None:
        from optuna.trial import TrialState

        if state == "COMPLETE":
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=getattr(TrialState, state))
        self.mine.pop(trial.number, None)

    # -- one batch ---------------------------------------------------------------------

    def _run_batch(self, trials: list) -> None:
        from zipnet.data import load_digits

        jobs = []
        for trial in trials:
            job = Job(trial, self.base + trial_overrides(self.spec, trial.params))
            try:
                job.cfg = self.composer.compose(job.overrides)
                job.member, job.opts = checks.member(job.cfg), checks.trainer(job.cfg)
            except Exception as err:
                self._failed(job, err)
                continue
            jobs.append(job)
        from zipnet.population import group_key

        groups: dict[str, list[Job]] = {}
        for job in jobs:
            groups.setdefault(group_key(job.cfg), []).append(job)
        first, last = trials[0].number, trials[-1].number
        self.log(f"batch: trials {first}-{last}, {len(jobs)} members in {len(groups)} population(s)")
        self.seconds = {"train": 0.0, "log": 0.0}
        started = time.perf_counter()
        for group in groups.values():
            try:
                digits = load_digits(group[0].cfg.data)
            except (DataError, ConfigError, OSError, ValueError) as err:
                for job in group:
                    self._failed(job, err)
                continue
            self._train_group(group, digits)
        total = time.perf_counter() - started
        self.log(f"batch done in {total:.1f} s: training {self.seconds['train']:.1f} s, "
                 f"MLflow and Optuna {self.seconds['log']:.1f} s")

    def _train_group(self, group: list[Job], digits) -> None:
        import torch

        from zipnet.engine import train

        opts = group[0].opts
        if opts["threads"]:
            torch.set_num_threads(opts["threads"])
        metric = self.spec.metric
        position = {id(job.member): k for k, job in enumerate(group)}
        # who trained in each pass, in population order: a member's last bits depend on how
        # many trained with it and where it sat, so its run records both (see reproduce.py)
        schedule = [list(range(len(group)))]

        def on_pass(pass_number: int, live) -> set[int]:
            stop = set()
            for result in live:
                k = position[id(result.member)]
                trial = group[k].trial
                trial.report(float(result.history[-1][metric]), pass_number)
                if pass_number < opts["passes"] and trial.should_prune():
                    stop.add(k)
            if pass_number < opts["passes"]:
                alive = {position[id(r.member)] for r in live}
                schedule.append([k for k in schedule[-1] if k in alive and k not in stop])
            values = [r.history[-1][metric] for r in live]
            if values:
                best = min(values) if self.spec.direction == "minimize" else max(values)
                self.log(f"  pass {pass_number}: {len(live)} live, best {metric} {best:.4g}"
                         + (f", {len(stop)} pruned" if stop else ""))
            return stop

        started = time.perf_counter()
        try:
            results = train([job.member for job in group], digits, log=None, on_pass=on_pass,
                            **checks.engine_options(opts))
        except KeyboardInterrupt:
            raise
        except Exception as err:
            for job in group:
                self._failed(job, err)
            return
        finally:
            self.seconds["train"] += time.perf_counter() - started
        started = time.perf_counter()
        for k, (job, result) in enumerate(zip(group, results)):
            passes = schedule[: len(result.history)]
            self._finished(job, result, digits, [len(s) for s in passes], [s.index(k) for s in passes])
        self.seconds["log"] += time.perf_counter() - started

    def _tags(self, job: Job, sizes: list[int], positions: list[int] | None = None) -> dict[str, str]:
        tags = {"zipnet.study": self.spec.study, "zipnet.trial": str(job.trial.number),
                **tracking.population_tags(sizes, positions), "zipnet.worker": self.worker}
        retry = job.trial.user_attrs.get("zipnet.retry_of")
        if retry is not None:
            tags["zipnet.retry_of"] = str(retry)
        return tags

    def _finished(self, job: Job, result, digits, sizes: list[int], positions: list[int]) -> None:
        """Log the member as a child run first, then tell Optuna (a kill in between is
        recovered: the trial is still RUNNING, so its run is deleted and it is asked again)."""
        if self.tracker is not None:
            run_id = self.tracker.log_result(result, job.cfg, job.overrides, digits, parent_run_id=self.parent,
                                             tags=self._tags(job, sizes, positions), role="trial",
                                             run_name=f"{self.spec.study} #{job.trial.number}")
            job.trial.set_user_attr(RUN_ID, run_id)
        if result.status == "finished":
            self._tell(job.trial, "COMPLETE", float(result.history[-1][self.spec.metric]))
        elif result.status == "pruned":
            self._tell(job.trial, "PRUNED")
        else:
            job.trial.set_user_attr(REASON, f"diverged at pass {result.diverged_at_pass}")
            self._tell(job.trial, "FAIL")
            self.log(f"trial {job.trial.number} diverged at pass {result.diverged_at_pass}: FAIL")

    def _failed(self, job: Job, err: BaseException) -> None:
        if self.tracker is not None:
            run_id = self.tracker.log_failure(job.cfg, job.overrides, err, parent_run_id=self.parent,
                                              tags=self._tags(job, []), role="trial",
                                              run_name=f"{self.spec.study} #{job.trial.number}")
            job.trial.set_user_attr(RUN_ID, run_id)
        job.trial.set_user_attr(REASON, _one_line(err)[:500])
        self._tell(job.trial, "FAIL")
        self.log(f"trial {job.trial.number} failed: {_one_line(err)}")

    # -- the end -----------------------------------------------------------------------

    def _summarise(self, final: bool) -> Tally:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        now = tally(trials)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        best = None
        if done:
            pick = min if self.spec.direction == "minimize" else max
            best = pick(done, key=lambda t: t.value)
        line = (f"study {self.spec.study!r}: {now.counted}/{self.spec.n_trials} trials "
                f"({now.complete} complete, {now.pruned} pruned, {now.failed} failed"
                + (f", {now.running} still running elsewhere" if now.running else "") + ")")
        if best is not None:
            line += f"; best {self.spec.metric} {best.value:.4g} (trial {best.number}, {' '.join(trial_overrides(self.spec, best.params))})"
        self.log(line)
        if self.tracker is not None and self.parent is not None:
            from mlflow.entities import Metric, RunTag

            stamp = int(time.time() * 1000)
            metrics = {"study/complete": now.complete, "study/pruned": now.pruned, "study/failed": now.failed,
                       "study/counted": now.counted}
            tags = {}
            if best is not None:
                metrics[f"study/best_{self.spec.metric}"] = best.value
                tags = {"zipnet.best_trial": str(best.number), "zipnet.best_run_id": best.user_attrs.get(RUN_ID, "")}
            client = self.tracker.client
            client.log_batch(self.parent, metrics=[Metric(k, float(v), stamp, now.counted) for k, v in metrics.items()],
                             tags=[RunTag(k, v) for k, v in tags.items()])
            if final and now.running == 0 and now.counted >= self.spec.n_trials:
                with tempfile.TemporaryDirectory() as tmp:
                    self.study.trials_dataframe().to_csv(Path(tmp, "trials.csv"), index=False)
                    client.log_artifacts(self.parent, tmp)
                self.tracker.end(self.parent, "FINISHED")
        return now


def run_sweep(path: str | Path, overrides: list[str] = (), log=print, **settings) -> Tally:
    """Load, check and run a study file to its target; returns the final tally."""
    spec = load_spec(path, **settings)
    return Sweep(spec, list(overrides), log=log).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="zipnet-sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("study_file", help="a study definition, e.g. sweeps/paper_open_choices.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides for every trial, e.g. trainer.passes=5")
    parser.add_argument("--n-trials", type=int, help="target number of trials (overrides the file)")
    parser.add_argument("--batch", type=int, help="trials trained together as one population (overrides the file)")
    parser.add_argument("--storage", help="Optuna storage URL, or journal:PATH (overrides the file)")
    parser.add_argument("--study", help="study name (overrides the file)")
    args = parser.parse_intermixed_args(argv)
    try:
        run_sweep(args.study_file, args.overrides, n_trials=args.n_trials, batch=args.batch, storage=args.storage,
                  study=args.study)
    except (SweepError, ConfigError) as err:
        print(f"zipnet-sweep: error: {err}", file=sys.stderr)
        sys.exit(2)
    except FailureBudgetExceeded as err:
        print(f"zipnet-sweep: stopped: {err}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        print("zipnet-sweep: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
