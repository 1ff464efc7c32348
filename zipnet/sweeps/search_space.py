"""`custom_search_space`: a search space that a function of the trial writes, as hydra-optuna-sweeper
1.3 means it.

    hydra:
      sweeper:
        params: {x: interval(-5, 5)}
        custom_search_space: my_app.space.configure

    def configure(cfg, trial):                 # cfg: the sweep's config; trial: optuna.Trial
        x = trial.params["x"]                  # the params are suggested first
        trial.suggest_float("z", x - 1, x + 1) # more parameters, define-by-run: each an override
        trial.suggest_float("+w", 0, 1)        # a key the config lacks takes a +
        return {"y": 2 * x}                    # optional: overrides of this trial, fixed, not searched

The function runs in the sweeper's process, under the storage's lock, once for each trial asked
(a retried trial keeps the values it was asked with: a suggestion it already holds is returned
as it was). What it returns is kept on the trial (`zipnet.fixed`), so the summary and a retry
give the job the same overrides. Nothing here knows zipnet's trainer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig

from zipnet import overrides as written
from zipnet.errors import first_line
from zipnet.sweeps.study import StudySpec, SweepError

KEY = "custom_search_space"
FIXED = "zipnet.fixed"  # a trial's attribute: the overrides its function returned, {key: value}
SHAPE = "the dotted path of a function (cfg, trial) -> dict or None"


def resolve(spec: StudySpec, path) -> Callable | None:
    """The function `path` names (None for none), or a SweepError naming the key."""
    if path is None:
        return None
    full = f"{spec.where}.{KEY}"
    if not (isinstance(path, str) and path.strip()):
        spec.fail(KEY, f"{path!r} is not allowed; give {full} {SHAPE}")
    from hydra._internal.utils import _locate  # what hydra.utils.get_method resolves with, without its log line

    try:
        found = _locate(path)
    except Exception as err:  # ImportError from the import that failed, ValueError for a relative path
        spec.fail(KEY, f"{path!r} does not import ({first_line(err.__cause__ or err)}); give {full} {SHAPE}")
    if not callable(found):
        spec.fail(KEY, f"{path!r} is a {type(found).__name__}, not a function; give {full} {SHAPE}")
    return found


class Extension:
    """Calls the function for each trial asked (zipnet.sweeps.storage.Coordinator.ask) and keeps
    what it returned on the trial."""

    def __init__(self, spec: StudySpec, function: Callable, cfg: DictConfig):
        self.spec, self.function, self.cfg = spec, function, cfg
        self.fixed_keys = {written.override_key(o) for o in spec.fixed}

    def __call__(self, trial) -> None:
        spec, name = self.spec, self.spec.custom_search_space
        searched = set(trial.params)
        try:
            returned = self.function(self.cfg, trial)
        except Exception as err:
            raise SweepError(
                f"{spec.where}: {KEY}: {name} raised {type(err).__name__}: {first_line(err)} (trial {trial.number})"
            ) from err
        if returned is not None and not isinstance(returned, Mapping):
            spec.fail(KEY, f"{name} returned {returned!r}; give back None or a dict of config keys to values")
        fixed = {str(k): _plain(v) for k, v in (returned or {}).items()}
        for key in sorted(set(trial.params) - searched) + sorted(fixed):
            if written.override_key(key) in self.fixed_keys:
                spec.fail(KEY, f"{name} sets {key!r}, which a fixed override sets already; set it in one place")
        overlap = sorted(set(fixed) & set(trial.params))
        if overlap:
            spec.fail(KEY, f"{name} returned {overlap[0]!r}, which it also suggested; fix it or search it, not both")
        try:
            text = json.dumps(fixed)
        except TypeError:
            spec.fail(
                KEY, f"{name} returned {returned!r}; give values that are numbers, strings, booleans, lists or null"
            )
        trial.set_user_attr(FIXED, json.loads(text))


def _plain(value: Any) -> Any:
    """An OmegaConf node the function returned (a part of cfg) as plain values."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def trial_overrides(spec: StudySpec, frozen) -> list[str]:
    """Every override a trial's job gets from the study: its params (the function's suggestions
    among them), then what the function returned."""
    extra = frozen.user_attrs.get(FIXED) or {}
    return spec.trial_overrides(frozen.params) + [written.override(k, v) for k, v in extra.items()]
