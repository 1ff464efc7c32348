"""Configs: composing them (Hydra's compose API) and checking them (writing them back as overrides:
zipnet/overrides.py, whose names this module still offers).

Hydra already refuses unknown keys and unknown group options; this module checks the
values, and every error names the key and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from zipnet import resources
from zipnet.engine import BACKENDS, MSE_C, Member
from zipnet.errors import ConfigError
from zipnet.net import ACTIVATIONS, INITS, OUTPUTS, TABLES, InitSpec
from zipnet.optim import HESSIANS, OPTIMS, OptimSpec
from zipnet.overrides import override as override
from zipnet.overrides import override_key as override_key
from zipnet.overrides import override_value as override_value

CONF_DIR = resources.conf_dir()  # conf/ in a checkout, zipnet/conf/ in an installed package
PROGRESS = ("auto", "on", "off")
LOSSES = ("mse", "cross_entropy")


def _get(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if value is None and OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
        raise ConfigError(key, "is missing from the config")
    return value


def choice(cfg: DictConfig, key: str, allowed: Sequence[str]) -> str:
    value = _get(cfg, key)
    if value not in allowed:
        raise ConfigError(key, f"{value!r} is not allowed; choose one of {', '.join(allowed)}")
    return value


def number(cfg: DictConfig, key: str, positive: bool = False) -> float:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"{value!r} is not allowed; give a finite number")
    if positive and value <= 0:
        raise ConfigError(key, f"{value!r} is not allowed; give a number > 0")
    return float(value)


def integer(cfg: DictConfig, key: str, minimum: int | None = None) -> int:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"{value!r} is not allowed; give an integer")
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"{value!r} is not allowed; give an integer >= {minimum}")
    return value


def flag(cfg: DictConfig, key: str) -> bool:
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(key, f"{value!r} is not allowed; choose one of true, false")
    return value


def lr_by_pass(cfg: DictConfig, key: str) -> tuple[float, ...] | None:
    value = _get(cfg, key)
    if value is None:
        return None
    if not isinstance(value, (list, ListConfig)) or not value:
        raise ConfigError(
            key, f"{value!r} is not allowed; give null or a non-empty list of learning rates, one per pass"
        )
    out = []
    for i, lr in enumerate(value):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"{key}[{i}]", f"{lr!r} is not allowed; give a number > 0")
        out.append(float(lr))
    return tuple(out)


def member(cfg: DictConfig) -> Member:
    """The engine's description of the model, loss and optimiser that `cfg` asks for."""
    init = InitSpec(
        init=choice(cfg, "model.init", INITS),
        gain=number(cfg, "model.init_gain", positive=True),
        fan_in_bias=flag(cfg, "model.fan_in_bias"),
        out_bias=number(cfg, "model.out_bias_init"),
        seed=integer(cfg, "seed", minimum=0),
    )
    negative = number(cfg, "data.target_negative")
    positive = number(cfg, "data.target_positive")
    if not negative < positive:
        raise ConfigError("data.target_negative", f"{negative} must be below data.target_positive ({positive})")
    loss = choice(cfg, "loss.name", LOSSES)
    output = choice(cfg, "model.output", OUTPUTS)
    if loss == "cross_entropy" and output != "linear":
        # softmax over squashed outputs in [-1, 1] can never be confident (p <= 0.45): no such run is meant
        raise ConfigError("model.output", f"{output!r} is not allowed with loss=cross_entropy; use model.output=linear")
    dropout = number(cfg, "model.dropout")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError("model.dropout", f"{dropout!r} is not allowed; give a rate in [0, 1)")
    return Member(
        init=init,
        table=choice(cfg, "model.table", TABLES),
        table_seed=integer(cfg, "model.table_seed", minimum=0),
        activation=choice(cfg, "model.activation", ACTIVATIONS),
        output=output,
        loss=loss,
        mse=choice(cfg, "loss.mse", tuple(MSE_C)) if loss == "mse" else "mean",
        target_negative=negative,
        target_positive=positive,
        dropout=dropout,
        optim=optim(cfg),
    )


def optim(cfg: DictConfig) -> OptimSpec:
    """The optim group: the keys every rule has, then the chosen rule's own."""
    name = choice(cfg, "optim.name", OPTIMS)
    lr_end = OmegaConf.select(cfg, "optim.lr_end", default=None)  # absent or null: no linear decay
    spec = dict(
        name=name,
        lr=number(cfg, "optim.lr", positive=True),
        lr_by_pass=lr_by_pass(cfg, "optim.lr_by_pass"),
        lr_end=None if lr_end is None else number(cfg, "optim.lr_end", positive=True),
    )
    if name == "sdlm":
        spec.update(
            mu=number(cfg, "optim.mu", positive=True),
            hessian=choice(cfg, "optim.hessian", HESSIANS),
            hessian_samples=integer(cfg, "optim.hessian_samples", minimum=1),
        )
        decay = number(cfg, "optim.hessian_decay", positive=True)
        if decay > 1:
            raise ConfigError("optim.hessian_decay", f"{decay!r} is not allowed; give a number in (0, 1]")
        spec["hessian_decay"] = decay
    if name == "adamw":
        for key in ("beta1", "beta2"):
            beta = number(cfg, f"optim.{key}")
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"optim.{key}", f"{beta!r} is not allowed; give a number in [0, 1)")
            spec[key] = beta
        spec.update(eps=number(cfg, "optim.eps", positive=True), weight_decay=number(cfg, "optim.weight_decay"))
        if spec["weight_decay"] < 0:
            raise ConfigError("optim.weight_decay", f"{spec['weight_decay']!r} is not allowed; give a number >= 0")
    return OptimSpec(**spec)


def trainer(cfg: DictConfig) -> dict:
    """The trainer group, checked: passes, device, threads, progress, backend, shifts, checkpoints."""
    device = _get(cfg, "trainer.device")
    if not isinstance(device, str) or not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ConfigError("trainer.device", f"{device!r} is not allowed; choose one of cpu, cuda, cuda:N")
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.device", f"{device!r} asked for, but no CUDA device is available; use cpu")
    return {
        "passes": integer(cfg, "trainer.passes", minimum=1),
        "device": device,
        "threads": integer(cfg, "trainer.threads", minimum=0),
        "progress": choice(cfg, "trainer.progress", PROGRESS),
        "backend": choice(cfg, "trainer.backend", BACKENDS),
        "shift": integer(cfg, "trainer.shift", minimum=0),
        "shift_seed": integer(cfg, "trainer.shift_seed", minimum=0),
        "checkpoint_every": integer(cfg, "trainer.checkpoint_every", minimum=0),
        "resume": resume(cfg, "trainer.resume"),
    }


def resume(cfg: DictConfig, key: str) -> bool | str:
    """false, true (the newest checkpoint of the same config), or a checkpoint file or its folder."""
    value = _get(cfg, key)
    if isinstance(value, bool) or (isinstance(value, str) and value.strip()):
        return value
    raise ConfigError(key, f"{value!r} is not allowed; choose one of true, false, or give a checkpoint's path")


def engine_options(opts: dict) -> dict:
    """The keyword arguments of engine.train that the trainer group sets."""
    keys = ("passes", "device", "backend", "threads", "shift", "shift_seed")
    return {key: opts[key] for key in keys}


def check(cfg: DictConfig) -> tuple[Member, dict]:
    """The member and trainer settings `cfg` asks for, every value checked (nothing has run yet)."""
    return member(cfg), trainer(cfg)


# ----------------------------------------------------------------------------------------
# Composing


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """conf/ plus `overrides`, as `zipnet-train OVERRIDES` would see it (Hydra's compose API)."""
    with Composer() as composer:
        return composer.compose(overrides)


class Composer:
    """Hydra's compose API over conf/, opened once for many compositions."""

    def __init__(self):
        from hydra import initialize_config_dir

        self._ctx = initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")

    def __enter__(self) -> Composer:
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)

    @staticmethod
    def compose(overrides: Sequence[str]) -> DictConfig:
        from hydra import compose as hydra_compose

        return hydra_compose(config_name="config", overrides=list(overrides))

    @staticmethod
    def compose_hydra(overrides: Sequence[str]) -> DictConfig:
        """With Hydra's own node (`hydra.sweeper`, ...), as a multirun would see it."""
        from hydra import compose as hydra_compose

        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
