"""A study's definition: what to search, how, and to what target.

Two ways to write one, one result (`StudySpec`):
- the Hydra sweeper's config (`hydra.sweeper` in sweeps/*.yaml): `params` in Hydra's override
  grammar (`choice(...)`, `range(...)`, `interval(...)`, `tag(log, ...)`, `tag(int, ...)`),
  the official optuna sweeper's key names (`study_name`, `storage`, `direction`, `n_trials`,
  `sampler`, `params`) plus zipnet's (`metric`, `batch`, `pruner`, `max_failure_rate`, ...);
- the study files of zipnet-sweep's first schema (`study`, `space` with `choices`, `low`,
  `high`, `log`, `step`; `overrides`), still read as they are.

`check` composes the base config and every choice and bound before any trial runs, so a
key that does not compose, a value that is not allowed, or a metric the loss cannot produce
fails at once, naming where it was written.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from zipnet import metrics
from zipnet import overrides as written
from zipnet.errors import first_line
from zipnet.sweeps import pbt


class SweepError(ValueError):
    """A study definition, storage or sweep state zipnet cannot use. The message names where and the key."""


class FailureBudgetExceeded(RuntimeError):
    """More trials failed than max_failure_rate allows."""


SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
    "gp": "GPSampler",
    "nsga2": "NSGAIISampler",
}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "threshold": "ThresholdPruner",
    "patient": "PatientPruner",
    "wilcoxon": "WilcoxonPruner",
    "none": "NopPruner",
}


@dataclass(frozen=True)
class Param:
    """One dimension of the search space: an Optuna distribution over values of one override
    key (a config key, or a config group such as `targets`), or over labels of linked keys."""

    name: str
    distribution: Any  # optuna.distributions.BaseDistribution
    sets: dict[str, dict[str, Any]] | None = None  # label -> {config key: value}, for linked keys

    def overrides(self, value) -> list[str]:
        """The overrides this parameter's value sets."""
        if self.sets is not None:
            return [written.override(k, v) for k, v in self.sets[value].items()]
        return [written.override(self.name, value)]

    def values(self) -> list:
        """The values `check` composes: every choice, or both bounds."""
        d = self.distribution
        return list(d.choices) if hasattr(d, "choices") else [d.low, d.high]

    def describe(self) -> str:
        d = self.distribution
        if hasattr(d, "choices"):
            return f"choice{tuple(d.choices)}"
        kind = "int" if type(d).__name__ == "IntDistribution" else "float"
        return f"{kind}[{d.low}, {d.high}]" + (" log" if d.log else "") + (f" step {d.step}" if d.step else "")


@dataclass
class StudySpec:
    """A checked study definition."""

    where: str  # for messages: the file, or `hydra.sweeper`
    study_name: str
    storage: str | None = None
    direction: str | list[str] = "minimize"  # a list: several objectives (another app only)
    metric: str = "test/error"
    n_trials: int = 20
    batch: int = 16
    max_failure_rate: float = 0.2
    sampler: dict = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict = field(default_factory=lambda: {"name": "median"})
    params: dict[str, Param] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)  # overrides every trial gets
    storage_timeout: float = 30.0
    heartbeat_interval: int = 10  # seconds between a worker's heartbeats for its running trials
    grace_period: int | None = None  # a trial silent this long is stale (default: 3 x heartbeat_interval)
    max_retry: int = 2  # how often a stale or given-back trial is asked again
    custom_search_space: str | None = None  # the dotted path of a function (cfg, trial) -> dict or None
    # a trial's checkpoint goes to its MLflow run on give-back (SIGTERM) and also every this many
    # passes (0: only on give-back), for a worker on another machine to resume it from
    checkpoint_upload_every: int = 0
    outage_timeout: float = 600.0  # how long a worker waits out an unreachable storage server before it stops
    scheduler: dict | None = None  # {name: pbt, ...}: population-based training within a batch (sweeps/pbt.py)
    # asynchronous successive halving: a lane that a pruned or finished trial leaves is refilled
    # with a trial asked at the next pass boundary, not at the end of the batch
    refill: bool = False

    @property
    def failure_budget(self) -> int:
        return math.floor(self.max_failure_rate * self.n_trials + 1e-9)

    @property
    def directions(self) -> list[str]:
        """One direction per objective (several only for another app's task that returns a list)."""
        return list(self.direction) if isinstance(self.direction, list) else [self.direction]

    @property
    def grace(self) -> int:
        return self.grace_period or 3 * self.heartbeat_interval

    def trial_overrides(self, params: dict[str, Any]) -> list[str]:
        """The params' overrides, then `key=value` for each parameter a custom_search_space
        function suggested besides them (zipnet/sweeps/search_space.py)."""
        searched = [o for name, p in self.params.items() for o in p.overrides(params[name])]
        return searched + [written.override(k, v) for k, v in params.items() if k not in self.params]

    def as_dict(self) -> dict:
        """What is stored with the study (no storage URL: it may hold a password)."""
        return {
            "study_name": self.study_name,
            "metric": self.metric,
            "direction": self.direction,
            "n_trials": self.n_trials,
            "batch": self.batch,
            "max_failure_rate": self.max_failure_rate,
            "sampler": self.sampler,
            "pruner": self.pruner,
            "fixed": self.fixed,
            "checkpoint_upload_every": self.checkpoint_upload_every,
            "params": {n: p.describe() for n, p in self.params.items()},
            "custom_search_space": self.custom_search_space,
            "scheduler": {**self.scheduler, "space": pbt.space(self)} if self.scheduler else None,
            "refill": self.refill,
        }

    def fail(self, key: str, message: str):
        raise SweepError(f"{self.where}: {key}: {message}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------------------
# Settings shared by both forms


SPEC = "zipnet.spec"  # the study's settings, stored with the study by its first worker

SETTINGS = (
    "study_name",
    "storage",
    "direction",
    "metric",
    "n_trials",
    "batch",
    "n_jobs",
    "max_failure_rate",
    "sampler",
    "pruner",
    "params",
    "custom_search_space",
    "storage_timeout",
    "heartbeat_interval",
    "grace_period",
    "max_retry",
    "checkpoint_upload_every",
    "outage_timeout",
    "scheduler",
    "refill",
)


def _settings(spec: StudySpec, raw: dict) -> StudySpec:
    """Check and set every setting but the params."""
    name = raw.get("study_name")
    if not (isinstance(name, str) and name.strip()):
        spec.fail("study_name", f"{name!r} is not allowed; give a non-empty name")
    spec.study_name = name
    storage = raw.get("storage")
    if storage is not None and not (isinstance(storage, str) and storage):
        spec.fail(
            "storage", f"{storage!r} is not allowed; give null (sqlite next to the MLflow store) or a storage URL"
        )
    spec.storage = storage
    metric = raw.get("metric", spec.metric)
    if metric not in metrics.OBJECTIVES:
        spec.fail("metric", f"{metric!r} is not allowed; choose one of {', '.join(metrics.OBJECTIVES)}")
    spec.metric = metric
    direction = raw.get("direction", spec.direction)
    several = isinstance(direction, (list, tuple))  # several objectives: one direction each
    for each in direction if several else [direction]:
        if each not in ("minimize", "maximize"):
            spec.fail("direction", f"{each!r} is not allowed; choose minimize or maximize, or a list of them")
    if several and not direction:
        spec.fail("direction", "is an empty list; give one direction per objective")
    spec.direction = list(direction) if several else direction
    if raw.get("n_jobs") is not None:  # hydra-optuna-sweeper's name for the trials asked at once
        if raw.get("batch") is not None:
            spec.fail("n_jobs", "is hydra-optuna-sweeper's name for batch; give one of them, not both")
        raw = {**raw, "batch": raw["n_jobs"]}
    raw = {k: v for k, v in raw.items() if not (k == "batch" and v is None)}
    for key, minimum in (
        ("n_trials", 1),
        ("batch", 1),
        ("heartbeat_interval", 1),
        ("max_retry", 0),
        ("checkpoint_upload_every", 0),
    ):
        value = raw.get(key, getattr(spec, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            spec.fail(key, f"{value!r} is not allowed; give an integer >= {minimum}")
        setattr(spec, key, value)
    grace = raw.get("grace_period")
    if grace is not None and (
        isinstance(grace, bool) or not isinstance(grace, int) or grace <= spec.heartbeat_interval
    ):
        spec.fail("grace_period", f"{grace!r} is not allowed; give null or seconds > heartbeat_interval")
    spec.grace_period = grace
    outage = raw.get("outage_timeout", spec.outage_timeout)
    if not (_is_number(outage) and outage >= 0):
        spec.fail("outage_timeout", f"{outage!r} is not allowed; give seconds >= 0")
    spec.outage_timeout = float(outage)
    rate = raw.get("max_failure_rate", spec.max_failure_rate)
    if not (_is_number(rate) and 0 <= rate <= 1):
        spec.fail("max_failure_rate", f"{rate!r} is not allowed; give a number in [0, 1]")
    spec.max_failure_rate = float(rate)
    timeout = raw.get("storage_timeout", spec.storage_timeout)
    if not (_is_number(timeout) and timeout > 0):
        spec.fail("storage_timeout", f"{timeout!r} is not allowed; give seconds > 0")
    spec.storage_timeout = float(timeout)
    sampler = _by_target(spec, "sampler", raw.get("sampler"), SAMPLERS, "optuna.samplers")
    spec.sampler = _named(spec, "sampler", sampler or spec.sampler, "tpe")
    pruner = _by_target(spec, "pruner", raw.get("pruner"), PRUNERS, "optuna.pruners")
    spec.pruner = _named(spec, "pruner", pruner or spec.pruner, "median")
    make_sampler(spec, 0)  # unknown names and settings fail here, naming the key
    make_pruner(spec)
    spec.scheduler = pbt.settings(spec, raw.get("scheduler"))
    refill = raw.get("refill", spec.refill)
    if not isinstance(refill, bool):
        spec.fail("refill", f"{refill!r} is not allowed; give true or false")
    if refill and spec.scheduler:
        spec.fail("refill", "pbt copies members at one pass; a refilled batch has members at several: give one")
    spec.refill = refill
    return spec


def _by_target(spec: StudySpec, key: str, node, table: dict, module: str):
    """hydra-optuna-sweeper's form, `{_target_: optuna.samplers.TPESampler, seed: 0, ...}`, as
    zipnet's `{name: tpe, seed: 0, ...}` (the name is what lets the seed move on per batch)."""
    if not (isinstance(node, dict) and "_target_" in node):
        return node
    names = {f"{module}.{cls}": name for name, cls in table.items()}
    target = node["_target_"]
    if target not in names:
        spec.fail(f"{key}._target_", f"{target!r} is not allowed; choose one of {', '.join(names)}")
    return {"name": names[target], **{k: v for k, v in node.items() if k != "_target_"}}


def _named(spec: StudySpec, key: str, node, default: str) -> dict:
    if node is None:
        return {"name": default}
    if isinstance(node, str):
        return {"name": node}
    if not isinstance(node, dict) or not isinstance(node.get("name", default), str):
        spec.fail(key, "give a name, or a mapping with `name` and its settings")
    return {"name": default, **node}


def _build(spec: StudySpec, key: str, table: dict, module, settings: dict):
    name = settings["name"]
    if name not in table:
        spec.fail(f"{key}.name", f"{name!r} is not allowed; choose one of {', '.join(table)}")
    cls = getattr(module, table[name])
    kwargs = {k: v for k, v in settings.items() if k != "name"}
    accepted = inspect.signature(cls).parameters
    for k in kwargs:
        if k not in accepted:
            allowed = ", ".join(p for p in accepted if p not in ("self", "kwargs")) or "none"
            spec.fail(f"{key}.{k}", f"unknown setting of the {name} {key}; it takes {allowed}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        spec.fail(key, str(err))


def make_sampler(spec: StudySpec, offset: int):
    """The sampler for one batch. Its seed moves on with the number of trials already in the
    study, so a resumed or second worker never replays the first worker's draws."""
    import optuna

    settings = dict(spec.sampler)
    if _is_number(settings.get("seed")):
        settings["seed"] = int(settings["seed"]) + 7919 * offset
    return _build(spec, "sampler", SAMPLERS, optuna.samplers, settings)


def make_pruner(spec: StudySpec):
    import optuna

    return _build(spec, "pruner", PRUNERS, optuna.pruners, spec.pruner)


# ----------------------------------------------------------------------------------------
# The Hydra sweeper's form


def from_sweeper(conf: dict, arguments: list[str], where: str = "hydra.sweeper") -> StudySpec:
    """The sweeper's settings plus the command line's overrides: sweep overrides on the
    command line (`optim.lr=interval(0.01,0.1)`) join the params, plain ones are fixed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    spec = StudySpec(where=where, study_name="")
    unknown = [k for k in conf if k not in SETTINGS and k not in ("_target_", "_recursive_")]  # Hydra's keys
    if unknown:
        spec.fail(unknown[0], f"unknown key; use {', '.join(SETTINGS)}")
    _settings(spec, conf)
    from zipnet.sweeps import search_space  # it builds on this module

    search_space.resolve(spec, conf.get("custom_search_space"))  # a path that does not import fails here
    spec.custom_search_space = conf.get("custom_search_space")
    params = dict(conf.get("params") or {})
    parser = OverridesParser.create()
    for text in arguments:
        parsed = parser.parse_override(text)
        if parsed.is_sweep_override():
            params[parsed.get_key_element()] = text.split("=", 1)[1]
        else:
            spec.fixed.append(text)
    if not params:
        spec.fail("params", "is empty; give at least one parameter, e.g. optim.lr: tag(log, interval(0.001, 0.3))")
    for name, value in params.items():
        name = str(name)
        if isinstance(value, dict) and value and set(value) <= set(LEGACY_PARAM_KEYS):  # {choices: [...]}, {low, high}
            spec.params[name] = _legacy_param(spec, name, value, prefix="params")
        elif isinstance(value, dict):  # label -> {key: value}: linked keys
            spec.params[name] = _linked(spec, name, value)
        else:
            spec.params[name] = _grammar(spec, parser, name, value)
    return spec


def _grammar(spec: StudySpec, parser, name: str, text) -> Param:
    """`choice(a, b)`, `a,b`, `range(lo, hi[, step])`, `interval(lo, hi)` with tags `log`, `int`."""
    import optuna.distributions as D
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    key = f"params.{name}"
    try:
        value = parser.parse_override(f"{name}={text}").value()
    except Exception as err:
        spec.fail(key, f"{text!r} does not parse: {first_line(err)}")
    if isinstance(value, ChoiceSweep):
        choices = list(value.list)
        if not choices or len(set(map(repr, choices))) != len(choices):
            spec.fail(key, "give distinct choices")
        return Param(name, D.CategoricalDistribution(choices))
    if isinstance(value, RangeSweep):  # Hydra's meaning: start, start + step, ..., below stop
        start, stop, step = value.start, value.stop, value.step
        if step <= 0 or stop <= start:
            spec.fail(key, f"{text!r}: give range(start, stop[, step]) with a positive step, stop above start")
        if all(isinstance(v, int) for v in (start, stop, step)):
            return Param(name, D.IntDistribution(start, start + (stop - start - 1) // step * step, step=step))
        count = math.ceil(round((stop - start) / step, 9))  # float bounds or step: a stepped float
        return Param(name, D.FloatDistribution(float(start), round(start + (count - 1) * step, 12), step=float(step)))
    if isinstance(value, IntervalSweep):
        low, high, tags = value.start, value.end, set(value.tags)
        if low >= high:
            spec.fail(key, f"{text!r}: low ({low}) is not below high ({high})")
        log = "log" in tags
        if log and low <= 0:
            spec.fail(key, f"{text!r}: a log scale needs low > 0")
        if tags - {"log", "int"}:
            spec.fail(key, f"{text!r}: unknown tag {sorted(tags - {'log', 'int'})[0]!r}; use log, int")
        if "int" in tags:
            return Param(name, D.IntDistribution(int(low), int(high), log=log))
        return Param(name, D.FloatDistribution(float(low), float(high), log=log))
    spec.fail(
        key,
        f"{text!r} is one value; give choice(...), range(...) or interval(...) (fixed values go on the "
        "command line or in the study's config)",
    )


def _linked(spec: StudySpec, name: str, choices: dict) -> Param:
    """label -> {key: value, ...}: several keys set together (a config group is the plainer way)."""
    import optuna.distributions as D

    if not choices:
        spec.fail(f"params.{name}", "is empty; give at least one choice")
    for label, sets in choices.items():
        if not isinstance(sets, dict) or not sets:
            spec.fail(f"params.{name}.{label}", "give a mapping of config keys to values")
    sets = {str(label): dict(keys) for label, keys in choices.items()}
    return Param(name, D.CategoricalDistribution(list(sets)), sets=sets)


# ----------------------------------------------------------------------------------------
# The first schema (zipnet-sweep's study files)


LEGACY_KEYS = (
    "study",
    "storage",
    "storage_timeout",
    "metric",
    "direction",
    "n_trials",
    "batch",
    "max_failure_rate",
    "sampler",
    "pruner",
    "overrides",
    "space",
)
LEGACY_PARAM_KEYS = ("choices", "type", "low", "high", "log", "step")


def is_legacy(raw: dict) -> bool:
    return isinstance(raw, dict) and ("space" in raw or "study" in raw) and "hydra" not in raw


def from_legacy(path: Path, raw: dict) -> StudySpec:
    """A study file in the first schema, read as it always was."""
    where = str(path)
    spec = StudySpec(where=where, study_name="")
    for key in raw:
        if key not in LEGACY_KEYS:
            spec.fail(key, f"unknown key; use {', '.join(LEGACY_KEYS)}")
    conf = {k: v for k, v in raw.items() if k not in ("study", "overrides", "space")}
    conf["study_name"] = raw.get("study", path.stem)
    _settings(spec, conf)
    overrides = raw.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        spec.fail("overrides", "give a list of key=value config overrides")
    spec.fixed = list(overrides)
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        spec.fail("space", "is missing or empty; give at least one parameter")
    spec.params = {str(name): _legacy_param(spec, str(name), node) for name, node in space.items()}
    return spec


def _legacy_param(spec: StudySpec, name: str, node, prefix: str = "space") -> Param:
    """`{choices: [...]}`, `{choices: {label: {key: value}}}`, or `{low, high[, log, step, type]}`."""
    import optuna.distributions as D

    key = f"{prefix}.{name}"
    if not isinstance(node, dict):
        spec.fail(key, "give a mapping with `choices`, or `low` and `high`")
    for k in node:
        if k not in LEGACY_PARAM_KEYS:
            spec.fail(f"{key}.{k}", f"unknown key; use {', '.join(LEGACY_PARAM_KEYS)}")
    kind = node.get("type")
    if kind is not None and kind not in ("categorical", "float", "int"):
        spec.fail(f"{key}.type", f"{kind!r} is not allowed; choose one of categorical, float, int")
    if "choices" in node or kind == "categorical":
        extra = [k for k in ("low", "high", "log", "step") if k in node]
        if extra:
            spec.fail(f"{key}.{extra[0]}", "does not go with `choices`")
        choices = node.get("choices")
        if isinstance(choices, dict):
            return _linked(spec, name, choices)
        if not isinstance(choices, list) or not choices:
            spec.fail(f"{key}.choices", "is empty; give a non-empty list of values")
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                spec.fail(f"{key}.choices", f"{c!r} is not allowed; choices are numbers, strings, booleans or null")
        if len(set(map(repr, choices))) != len(choices):
            spec.fail(f"{key}.choices", "lists a value twice")
        return Param(name, D.CategoricalDistribution(choices))
    for bound in ("low", "high"):
        if bound not in node:
            spec.fail(key, f"missing `{bound}`; give `choices`, or `low` and `high`")
        if not _is_number(node[bound]):
            spec.fail(f"{key}.{bound}", f"{node[bound]!r} is not a finite number")
    low, high, step = node["low"], node["high"], node.get("step")
    if kind is None:
        kind = "int" if isinstance(low, int) and isinstance(high, int) and not isinstance(step, float) else "float"
    log = node.get("log", False)
    if not isinstance(log, bool):
        spec.fail(f"{key}.log", f"{log!r} is not allowed; choose one of true, false")
    if step is not None and not (_is_number(step) and step > 0):
        spec.fail(f"{key}.step", f"{step!r} is not allowed; give a number > 0")
    if low > high:
        spec.fail(f"{key}.low", f"low ({low}) is above high ({high})")
    if log and low <= 0:
        spec.fail(f"{key}.low", f"log scale needs low > 0, not {low}")
    if log and step is not None:
        spec.fail(f"{key}.step", "does not go with log: true")
    if kind == "int":
        for bound, v in (("low", low), ("high", high)):
            if not float(v).is_integer():
                spec.fail(f"{key}.{bound}", f"{v!r} is not an integer (type: int)")
        return Param(name, D.IntDistribution(int(low), int(high), log=log, step=int(step or 1)))
    return Param(name, D.FloatDistribution(float(low), float(high), log=log, step=step))


def load_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: no such study file")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:
        raise SweepError(f"{path}: not valid YAML: {first_line(err)}") from err
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: give a mapping")
    return raw


# ----------------------------------------------------------------------------------------
# Checked before any trial runs


class Composes(Protocol):
    """What `check` composes with: zipnet.config.Composer, or the Hydra sweeper (a job's config
    as its launcher will compose it)."""

    def compose(self, overrides: list[str]) -> DictConfig: ...


def check(spec: StudySpec, composer: Composes, zipnet_config: bool = True) -> DictConfig:
    """Compose the base config and every choice and bound once; returns the base config.

    Refuses a key or value that does not compose or is not allowed, a key both swept and
    fixed, and a metric that a trial's loss cannot produce (paper/gap needs the MSE). Another
    app's config (`zipnet_config=False`) is only composed: its values are its own to check."""
    base = list(spec.fixed)
    if zipnet_config:  # zipnet's trainer: its checks, and the engine behind them, load only here
        from zipnet import config as checks

    def allowed(cfg: DictConfig, where: str) -> None:
        if zipnet_config:
            checks.check(cfg)
            _check_metric(spec, cfg, where)
            if spec.scheduler:
                pbt.check_config(spec, str(OmegaConf.select(cfg, "optim.name")), where)

    try:
        cfg = composer.compose(base)
        allowed(cfg, "fixed overrides")
    except SweepError:
        raise
    except Exception as err:
        raise SweepError(f"{spec.where}: fixed overrides {' '.join(base)}: {first_line(err)}") from err
    fixed = {written.override_key(o) for o in base}
    for name, param in spec.params.items():
        for value in param.values():
            overrides = param.overrides(value)
            for text in overrides:
                if written.override_key(text) in fixed:
                    spec.fail(
                        f"params.{name}",
                        f"{written.override_key(text)!r} is also fixed by an override; sweep it or fix it, not both",
                    )
            try:
                trial_cfg = composer.compose(base + overrides)
                if zipnet_config:
                    checks.check(trial_cfg)
            except Exception as err:
                spec.fail(f"params.{name}", f"value {value!r}: {first_line(err)}")
            if zipnet_config:
                _check_metric(spec, trial_cfg, f"params.{name}={value!r}")
                if spec.scheduler:
                    pbt.check_config(spec, str(OmegaConf.select(trial_cfg, "optim.name")), f"params.{name}={value!r}")
    return cfg


def _check_metric(spec: StudySpec, cfg: DictConfig, where: str) -> None:
    if spec.metric == metrics.GAP and OmegaConf.select(cfg, "loss.name") != "mse":
        spec.fail(
            "metric",
            f"{metrics.GAP} is measured on MSE runs only, and {where} trains with "
            f"loss={OmegaConf.select(cfg, 'loss.name')}; choose another metric",
        )
