"""The 1989 network: its shapes, the H1->H2 connection table, the paper's counts, and initialisation.

Parameters are kept as plain tensors with a leading population axis K, so that one
run is a population of one (see zipnet/engine/). Layout per member:

    H1w (12, 25)      one 5x5 kernel per H1 map ("weight sharing")
    H1b (12, 64)      "units do not share biases": one bias per H1 unit
    H2w (12, 300)     12 H2 maps x (12 H1 maps x 5x5), zero where the table has no link
    H2b (12, 16)
    H3w (30, 192), H3b (30,)
    outw (10, 30), outb (10,)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from zipnet.errors import ConfigError

PARAM_NAMES = ("H1w", "H1b", "H2w", "H2b", "H3w", "H3b", "outw", "outb")
# one member's parameter shapes (H2w dense 12x12x25, masked by the connection table)
SHAPES = {
    "H1w": (12, 25),
    "H1b": (12, 64),
    "H2w": (12, 300),
    "H2b": (12, 16),
    "H3w": (30, 192),
    "H3b": (30,),
    "outw": (10, 30),
    "outb": (10,),
}
KERNEL = 25  # 5x5 windows, stride 2, for H1 and H2

# The paper's figures (LeCun et al. 1989, section 3): per layer (units, connections, parameters).
PAPER_LAYERS = {"H1": (768, 19_968, 1_068), "H2": (192, 38_592, 2_592), "H3": (30, 5_790, 5_790), "out": (10, 310, 310)}
PAPER_UNITS, PAPER_CONNECTIONS, PAPER_PARAMETERS, PAPER_MACS = 1_256, 64_660, 9_760, 63_660

TABLES = ("block", "random", "full")
INITS = ("sqrt", "linear")
SQUASHES = {"tanh": (1.0, 1.0), "scaled_tanh": (1.7159, 2.0 / 3.0)}  # f(a) = A tanh(S a)
ACTIVATIONS = (*SQUASHES, "relu")  # relu: the modern recipe's hidden units
OUTPUTS = ("squash", "linear")  # the paper squashes its outputs too; linear feeds a softmax


def connection_table(kind: str, seed: int = 0) -> np.ndarray:
    """Which H1 maps feed each H2 map, as a bool (12 H2, 12 H1) array.

    The paper: each H2 unit combines "local information coming from 8 of the 12
    different feature maps in H1"; which 8 is "not described".
    """
    table = np.zeros((12, 12), dtype=bool)
    if kind == "block":  # the seed's guess
        table[0:4, 0:8] = True
        table[4:8, 4:12] = True
        table[8:12, 0:4] = True
        table[8:12, 8:12] = True
    elif kind == "random":  # each H2 map reads a seeded random 8 of the 12
        rng = np.random.default_rng(seed)
        for h2 in range(12):
            table[h2, rng.choice(12, size=8, replace=False)] = True
    elif kind == "full":
        table[:] = True
    else:
        raise ConfigError("model.table", f"{kind!r} is not allowed; choose one of {', '.join(TABLES)}")
    return table


@dataclass(frozen=True)
class Layer:
    units: int
    connections: int  # weighted inputs plus one bias per unit
    parameters: int
    macs: int  # multiply-accumulates of a forward pass, biases excluded


def layer_counts(table: np.ndarray) -> dict[str, Layer]:
    """Units, connections and free parameters per layer for a given connection table."""
    links = int(table.sum())  # H1->H2 map pairs
    h2_fan_in = table.sum(axis=1) * KERNEL  # per H2 map
    h2_macs = int(h2_fan_in.sum()) * 16
    return {
        "H1": Layer(768, 768 * (KERNEL + 1), 12 * KERNEL + 768, 768 * KERNEL),
        "H2": Layer(192, h2_macs + 192, links * KERNEL + 192, h2_macs),
        "H3": Layer(30, 30 * 193, 30 * 193, 30 * 192),
        "out": Layer(10, 10 * 31, 10 * 31, 10 * 30),
    }


def check_paper_counts(table: np.ndarray) -> None:
    """Assert the paper's counts for an 8-of-12 table (1,256 units, 64,660 connections, 9,760 parameters)."""
    layers = layer_counts(table)
    for name, (units, connections, parameters) in PAPER_LAYERS.items():
        got = layers[name]
        assert (got.units, got.connections, got.parameters) == (units, connections, parameters), (name, got)
    assert 256 + sum(layer.units for layer in layers.values()) == PAPER_UNITS
    assert sum(layer.connections for layer in layers.values()) == PAPER_CONNECTIONS
    assert sum(layer.parameters for layer in layers.values()) == PAPER_PARAMETERS
    assert sum(layer.macs for layer in layers.values()) == PAPER_MACS


def h2_mask(table: np.ndarray) -> torch.Tensor:
    """The table expanded to H2w's (12, 300) layout: 1 where a weight exists."""
    return torch.from_numpy(np.repeat(table, KERNEL, axis=1).astype(np.float32))


@dataclass(frozen=True)
class InitSpec:
    """How one member's weights are drawn. The paper: uniform in [-2.4/F, 2.4/F], F the fan-in."""

    init: str = "sqrt"  # sqrt: gain/sqrt(F) (the seed) | linear: gain/F (the paper's formula)
    gain: float = 2.4
    fan_in_bias: bool = False  # whether F counts the bias ("unverified")
    out_bias: float = -1.0  # the seed starts the output biases at -1
    seed: int = 0


def init_params(spec: InitSpec, table: np.ndarray) -> dict[str, torch.Tensor]:
    """One member's parameters (no K axis), drawn from its own seeded generator in a fixed order."""
    if spec.init not in INITS:
        raise ConfigError("model.init", f"{spec.init!r} is not allowed; choose one of {', '.join(INITS)}")
    gen = torch.Generator().manual_seed(int(spec.seed))
    power = 0.5 if spec.init == "sqrt" else 1.0

    def uniform(shape, fan_in):
        fan_in = fan_in + (1 if spec.fan_in_bias else 0)
        bound = spec.gain / np.power(fan_in, power)
        bound = torch.as_tensor(bound, dtype=torch.float32).reshape(-1, *([1] * (len(shape) - 1)))
        return (torch.rand(shape, generator=gen) * 2 - 1) * bound

    mask = h2_mask(table)
    h2_fan_in = table.sum(axis=1).astype(np.float64) * KERNEL  # per H2 map
    return {
        "H1w": uniform((12, KERNEL), np.float64(KERNEL)),
        "H1b": torch.zeros(12, 64),
        "H2w": uniform((12, 12 * KERNEL), h2_fan_in) * mask,
        "H2b": torch.zeros(12, 16),
        "H3w": uniform((30, 192), np.float64(192)),
        "H3b": torch.zeros(30),
        "outw": uniform((10, 30), np.float64(30)),
        "outb": torch.full((10,), float(spec.out_bias)),
    }


def init_bound(spec: InitSpec, fan_in: int) -> float:
    """The half-width of the uniform init for a given fan-in (for tests and docs)."""
    f = fan_in + (1 if spec.fan_in_bias else 0)
    return spec.gain / (math.sqrt(f) if spec.init == "sqrt" else f)


# The paper's figures hold for the seed's table, checked whenever the net is imported.
check_paper_counts(connection_table("block"))
