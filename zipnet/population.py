"""Many configurations trained as populations, for the Hydra launcher and batched sweeps.

Configurations that differ only in per-member values (lr, init, seeds, MSE scaling, targets,
tanh or scaled tanh, dropout) train together in lockstep; those that differ in data, trainer
settings, the connection table, relu, the output or loss, or the optimiser form separate
groups. Each trained result is then handed to its own job, which logs it exactly as if it
had trained alone.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import replace

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from zipnet import config as checks
from zipnet.data import load_digits
from zipnet.engine import RunResult, format_pass, train
from zipnet.errors import ConfigError, DataError

_trained: dict[str, RunResult] = {}  # config key -> a result waiting for its job


def _plain(cfg: DictConfig) -> dict:
    """The job's own config, resolved, without Hydra's node (as the task function sees it)."""
    cfg = copy.deepcopy(cfg)
    with read_write(cfg), open_dict(cfg):
        cfg.pop("hydra", None)
    return OmegaConf.to_container(cfg, resolve=True)


def config_key(cfg: DictConfig) -> str:
    return hashlib.sha256(json.dumps(_plain(cfg), sort_keys=True).encode()).hexdigest()


def group_key(cfg: DictConfig) -> str:
    """What members of one population must share."""
    plain = _plain(cfg)
    data = {k: v for k, v in plain["data"].items() if not k.startswith("target_")}
    model = plain["model"]
    optim = plain["optim"]
    shared = {"data": data, "trainer": plain["trainer"], "table": [model["table"], model["table_seed"]],
              "relu": model.get("activation") == "relu", "output": model.get("output"),
              "loss": plain["loss"].get("name"),
              "optim": [optim["name"], optim.get("hessian"), optim.get("hessian_samples")]}
    return json.dumps(shared, sort_keys=True)


def train_configs(cfgs: list[DictConfig], log=None) -> list[RunResult | None]:
    """Train every config, grouped into populations; None for a config that is invalid
    (its job then reports the error itself)."""
    results: list[RunResult | None] = [None] * len(cfgs)
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        try:
            checks.member(cfg)
            checks.trainer(cfg)
        except ConfigError:
            continue
        groups.setdefault(group_key(cfg), []).append(i)
    for n, indices in enumerate(groups.values(), start=1):
        first = cfgs[indices[0]]
        opts = checks.trainer(first)
        try:
            digits = load_digits(first.data)
        except (ConfigError, DataError):
            continue
        if log:
            log(f"population {n}/{len(groups)}: {len(indices)} members, {opts['passes']} passes")
        members = [checks.member(cfgs[i]) for i in indices]
        trained = train(members, digits, log=None, **checks.engine_options(opts))
        for i, result in zip(indices, trained):
            results[i] = result
    return results


def provide(cfgs: list[DictConfig], results: list[RunResult | None]) -> None:
    for cfg, result in zip(cfgs, results):
        if result is not None:
            _trained[config_key(cfg)] = result


def take(cfg: DictConfig) -> RunResult | None:
    """The result trained for this exact config, if a population trained it."""
    return _trained.pop(config_key(cfg), None) if _trained else None


def replay(result: RunResult, log=print, on_pass=None, progress=None) -> None:
    """Show a trained result pass by pass, as a live run would: the lines, the hooks, the bar."""
    for p in range(1, len(result.history) + 1):
        partial = replace(result, history=result.history[:p])
        if p < len(result.history) and partial.status == "diverged":
            partial.status = "running"
        if log is not None:
            log(format_pass(partial))
        if on_pass is not None:
            on_pass(p, [partial])
        if progress is not None:
            progress.update(p)
