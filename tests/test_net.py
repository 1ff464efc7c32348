"""The 1989 net's shapes, counts and initialisation against the paper's figures."""

import math

import numpy as np
import pytest
import torch

from zipnet.net import (
    PAPER_CONNECTIONS,
    PAPER_MACS,
    PAPER_PARAMETERS,
    PAPER_UNITS,
    SHAPES,
    InitSpec,
    check_paper_counts,
    connection_table,
    init_bound,
    init_params,
    layer_counts,
)
from zipnet.reference import Net1989


def test_drawn_parameters_have_the_shapes_the_kernel_and_the_model_use():
    drawn = init_params(InitSpec(seed=0), connection_table("block"))
    assert {name: tuple(p.shape) for name, p in drawn.items()} == SHAPES
    params = sum(math.prod(shape) for shape in SHAPES.values())  # dense H2w: 12 x 12 x 25
    assert params == PAPER_PARAMETERS + 12 * 4 * 25  # the 4 of 12 H1 maps each H2 map does not read


@pytest.mark.parametrize("kind,seed", [("block", 0), ("random", 0), ("random", 7)])
def test_paper_counts(kind, seed):
    table = connection_table(kind, seed)
    check_paper_counts(table)
    layers = layer_counts(table)
    assert 256 + sum(layer.units for layer in layers.values()) == 1256 == PAPER_UNITS
    assert sum(layer.connections for layer in layers.values()) == 64660 == PAPER_CONNECTIONS
    assert sum(layer.parameters for layer in layers.values()) == 9760 == PAPER_PARAMETERS
    assert sum(layer.macs for layer in layers.values()) == 63660 == PAPER_MACS


def test_reference_module_has_the_papers_free_parameters():
    table = connection_table("block")
    net = Net1989(init_params(InitSpec(), table), table)
    free = sum(p.numel() for n, p in net.named_parameters() if n != "H2w") + int(net.mask.sum())
    assert free == 9760
    assert [net.H1w.numel() + net.H1b.numel(), int(net.mask.sum()) + net.H2b.numel()] == [1068, 2592]


def test_tables_read_8_of_12():
    for kind, seed in [("block", 0), ("random", 3)]:
        table = connection_table(kind, seed)
        assert (table.sum(axis=1) == 8).all()
    assert (connection_table("block").sum(axis=0) == 8).all()  # every H1 map feeds 8 H2 maps
    assert not np.array_equal(connection_table("random", 1), connection_table("random", 2))
    assert np.array_equal(connection_table("random", 5), connection_table("random", 5))
    full = connection_table("full")
    assert full.all() and layer_counts(full)["H2"].parameters == 12 * 12 * 25 + 192


@pytest.mark.parametrize("init", ["sqrt", "linear"])
@pytest.mark.parametrize("fan_in_bias", [False, True])
def test_init_ranges(init, fan_in_bias):
    spec = InitSpec(init=init, fan_in_bias=fan_in_bias, seed=3)
    table = connection_table("block")
    params = init_params(spec, table)
    extra = 1 if fan_in_bias else 0
    expect = {"H1w": 25, "H2w": 200, "H3w": 192, "outw": 30}
    for name, fan_in in expect.items():
        f = fan_in + extra
        bound = 2.4 / (f**0.5 if init == "sqrt" else f)
        assert init_bound(spec, fan_in) == pytest.approx(bound)
        w = params[name]
        if name == "H2w":
            w = w[torch.from_numpy(np.repeat(table, 25, axis=1))]
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.9 * bound  # the whole range is used
        assert abs(float(w.mean())) < 0.1 * bound
    assert (params["H2w"][~torch.from_numpy(np.repeat(table, 25, axis=1))] == 0).all()
    assert (params["outb"] == -1).all() and (params["H1b"] == 0).all()


def test_init_is_seeded():
    table = connection_table("block")
    a, b = init_params(InitSpec(seed=1), table), init_params(InitSpec(seed=1), table)
    c = init_params(InitSpec(seed=2), table)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["H1w"], c["H1w"])


def test_unknown_table_and_init_name_the_key():
    with pytest.raises(ValueError, match=r"model\.table.*block, random, full"):
        connection_table("diagonal")
    with pytest.raises(ValueError, match=r"model\.init.*sqrt, linear"):
        init_params(InitSpec(init="foo"), connection_table("block"))


def test_the_gap_to_the_paper_is_zero_on_its_figures_and_symmetric_in_log_ratio():
    from zipnet import paper

    figures = dict(paper.FIGURES)
    assert paper.gap(figures, 7291, 2007) == 0.0
    twice = {k: 2 * v for k, v in figures.items()}
    half = {k: v / 2 for k, v in figures.items()}
    assert paper.gap(twice, 7291, 2007) == pytest.approx(math.log(2))
    assert paper.gap(half, 7291, 2007) == pytest.approx(math.log(2))
    perfect = dict(figures, **{"train/error": 0.0})  # 0 misses counts as half a miss
    assert paper.gap(perfect, 7291, 2007) == pytest.approx(abs(math.log((50 / 7291) / 0.14)) / 4)
