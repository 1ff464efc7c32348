"""Population-based training as a sweeper mode (`hydra.sweeper.scheduler: {name: pbt, ...}`).

    scheduler: {name: pbt, interval: 2, quantile: 0.25, perturb: {optim.lr: [0.8, 1.25]}, resample_probability: 0.25}

A batch trains as one population (hydra/launcher=population). After every `interval` passes but
the last, its live members are ranked by the study's metric at that pass; each member of the
bottom `quantile` copies the weights and optimiser state of a member of the top `quantile`
(drawn with a generator seeded by the scheduler's seed, the pass and the batch's trial numbers,
so a rerun copies the same), takes its source's mutable settings, then for each key of `perturb`
either draws a new value from the study's search space (with probability
`resample_probability`, where the key is searched) or multiplies the value by one of the listed
factors (kept within the search space's bounds where it has them).

What may change mid-run is what the engine reads afresh between passes (zipnet.engine.members.
MUTABLE): the lr and lr_end (the schedule is read at every pass), SDLM's mu and AdamW's weight
decay (read at every step). A lineage keeps everything else: init and seeds, data.seed,
connection table, activation, targets and loss, which fix the net's shape, its data stream
or its objective.

The Optuna record: each member is the trial asked with its initial parameters; its value is
the member's metric at its last pass, whatever lineage its weights came from; the trial's user
attrs `zipnet.pbt.copies` (each copy: pass, source trial and run, changes {key: [old, new]}) and
`zipnet.pbt.params` (the mutable values it ended with) hold the schedule it actually followed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from zipnet.engine.members import Member

# The engine (torch) is imported where a scheduler is given, never by the generic sweeper that
# only parses a study (tests/test_layout.py).
NAMES = ("pbt",)
KEYS = ("name", "interval", "quantile", "perturb", "resample_probability", "seed")
DEFAULTS = {"interval": 2, "quantile": 0.25, "perturb": {"optim.lr": [0.8, 1.25]}, "resample_probability": 0.25}
COPIES, PARAMS = "zipnet.pbt.copies", "zipnet.pbt.params"  # a trial's user attrs


def settings(spec, raw) -> dict | None:
    """The scheduler's settings, checked (`spec.fail` names the key); None: no scheduler."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        spec.fail("scheduler", "give null, or a mapping such as {name: pbt, interval: 2}")
    unknown = [k for k in raw if k not in KEYS]
    if unknown:
        spec.fail(f"scheduler.{unknown[0]}", f"unknown setting; use {', '.join(KEYS)}")
    if raw.get("name") not in NAMES:
        spec.fail("scheduler.name", f"{raw.get('name')!r} is not allowed; choose one of {', '.join(NAMES)}")
    out = {**DEFAULTS, "seed": (spec.sampler or {}).get("seed") or 0, **raw}
    interval, quantile, chance, seed = out["interval"], out["quantile"], out["resample_probability"], out["seed"]
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        spec.fail("scheduler.interval", f"{interval!r} is not allowed; give passes between exploits, an integer >= 1")
    if not (_number(quantile) and 0 < quantile <= 0.5):
        spec.fail("scheduler.quantile", f"{quantile!r} is not allowed; give a share in (0, 0.5]")
    if not (_number(chance) and 0 <= chance <= 1):
        spec.fail("scheduler.resample_probability", f"{chance!r} is not allowed; give a number in [0, 1]")
    if isinstance(seed, bool) or not isinstance(seed, int):
        spec.fail("scheduler.seed", f"{seed!r} is not allowed; give an integer")
    perturb = out["perturb"]
    if not isinstance(perturb, dict) or not perturb:
        spec.fail("scheduler.perturb", "give a mapping of keys to factors, e.g. {optim.lr: [0.8, 1.25]}")
    from zipnet.engine.members import MUTABLE

    anywhere = sorted({key for keys in MUTABLE.values() for key in keys})
    for key, factors in perturb.items():
        if key not in anywhere:
            spec.fail("scheduler.perturb", not_mutable(key, anywhere))
        if not (isinstance(factors, list) and factors and all(_number(f) and f > 0 for f in factors)):
            spec.fail(f"scheduler.perturb.{key}", f"{factors!r} is not allowed; give a list of factors > 0")
    return {**out, "perturb": {str(k): [float(f) for f in v] for k, v in perturb.items()}}


def not_mutable(key: str, allowed, optim: str | None = None) -> str:
    """The refusal of a perturb key: what it is and which keys may change between passes."""
    where = f" with optim={optim}" if optim else ""
    return f"{key} cannot change between passes{where}; the keys that can: {', '.join(allowed)}"


def check_config(spec, optim: str, where: str) -> None:
    """Refuse a perturb key that a trial's optimiser cannot change between passes."""
    from zipnet.engine.members import MUTABLE

    for key in spec.scheduler["perturb"]:
        if key not in MUTABLE[optim]:
            spec.fail("scheduler.perturb", not_mutable(key, MUTABLE[optim], optim) + f" ({where})")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def space(spec) -> dict[str, str]:
    """The search space of the perturbed keys, as Optuna's JSON (what resampling draws from)."""
    from optuna.distributions import distribution_to_json

    keys = spec.scheduler["perturb"] if spec.scheduler else {}
    return {k: distribution_to_json(p.distribution) for k, p in spec.params.items() if k in keys and p.sets is None}


def event(copy) -> dict:
    """One copy as a trial's user attr records it (JSON)."""
    return {
        "pass": copy.pass_number,
        "from_trial": copy.source_trial,
        "from_run": copy.source_run,
        "changes": {key: list(pair) for key, pair in copy.changes.items()},
    }


# ----------------------------------------------------------------------------------------
# The exploit


def choose(
    scheduler: dict, direction: str, pass_number: int, live: list[tuple[int, float, Member]]
) -> list[tuple[int, int, Member, dict[str, tuple]]]:
    """The copies at the end of `pass_number`: live is (trial number, the metric now, current member)
    per member; returns (target, source, the target's new member, {key: (old, new)}) with target and
    source places in `live`. None after a pass that is not the interval's."""
    from zipnet.engine.members import mutable_values, mutated

    if pass_number % scheduler["interval"] or len(live) < 2:
        return []
    sign = 1.0 if direction == "minimize" else -1.0
    ranked = sorted(range(len(live)), key=lambda i: (_rank(sign, live[i][1]), live[i][0]))
    cut = min(max(1, math.floor(len(live) * scheduler["quantile"])), len(live) // 2)
    top, bottom = ranked[:cut], ranked[len(ranked) - cut :]
    rng = np.random.default_rng([int(scheduler["seed"]), pass_number, *sorted(n for n, _, _ in live)])
    distributions = _distributions(scheduler.get("space") or {})
    copies = []
    for target in bottom:
        source = top[int(rng.integers(len(top)))]
        before, values = live[target][2], mutable_values(live[source][2])
        for key in sorted(scheduler["perturb"]):
            values[key] = _explore(values[key], key, scheduler, distributions.get(key), rng)
        now = mutated(before, values)
        old = mutable_values(before)
        changes = {key: (old[key], values[key]) for key in sorted(values) if values[key] != old[key]}
        copies.append((target, source, now, changes))
    return copies


def _rank(sign: float, value: float) -> float:
    """Lower ranks better; a NaN ranks last."""
    return sign * value if math.isfinite(value) else math.inf


def _distributions(found: dict[str, str]) -> dict:
    from optuna.distributions import json_to_distribution

    return {key: json_to_distribution(text) for key, text in found.items()}


def _explore(value, key: str, scheduler: dict, distribution, rng: np.random.Generator):
    """A new value: drawn from the search space, or the value times one of the factors (within bounds)."""
    if value is None:  # an unset lr_end has nothing to perturb
        return None
    draw = rng.random()  # drawn for every key, so one key's choice never shifts another's draws
    factors = scheduler["perturb"][key]
    factor = factors[int(rng.integers(len(factors)))]
    if distribution is not None and draw < scheduler["resample_probability"]:
        return _sample(distribution, rng)
    new = float(value) * factor
    if distribution is not None and hasattr(distribution, "low"):
        new = min(max(new, float(distribution.low)), float(distribution.high))
    return new


def _sample(distribution, rng: np.random.Generator):
    if hasattr(distribution, "choices"):
        return distribution.choices[int(rng.integers(len(distribution.choices)))]
    low, high = float(distribution.low), float(distribution.high)
    if getattr(distribution, "log", False):
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))
