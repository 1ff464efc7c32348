"""Refilled lanes: a member that joins a population in a lane another left (pruned or finished)
trains from its own pass 1 beside members further on, and ends bit for bit where its single run
ends (the kernel), with shifts, dropout and each optimiser's state of its own."""

from dataclasses import replace

import pytest
import torch
from stand_ins import data as _data

from zipnet.engine import Member, train
from zipnet.net import PARAM_NAMES, InitSpec
from zipnet.optim import OptimSpec

PASSES = 3
OPTIMS = {
    "sgd": OptimSpec(name="sgd", lr=0.02, lr_end=0.005),  # lr_end: the schedule's position matters
    "sdlm": OptimSpec(name="sdlm", lr=0.0005, hessian_samples=20),
    "sdlm-running": OptimSpec(name="sdlm", lr=0.0005, hessian="running", hessian_samples=20),
    "adamw": OptimSpec(name="adamw", lr=0.001, lr_by_pass=(0.002, 0.001)),
}


def _member(optim: OptimSpec, i: int) -> Member:
    return Member(
        init=InitSpec(seed=10 + i), dropout=0.1 * (i % 3 + 1), optim=replace(optim, lr=optim.lr * (1 + i / 2))
    )


def _train(members, digits, backend, **kw):
    return train(members, digits, passes=PASSES, log=None, backend=backend, shift=1, shift_seed=5, **kw)


def _rows(result):
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in result.history]


def _refilled(optim, backend):
    """Three members; member 0 is pruned after pass 1, and two more join: one in its lane at pass 1,
    one when the first two finish. Returns the results and each joiner's (member, digits)."""
    members = [_member(OPTIMS[optim], i) for i in range(3)]
    digits = [_data(60, 20, seed=20 + i) for i in range(3)]
    queue = [(_member(OPTIMS[optim], i), _data(60, 20, seed=20 + i)) for i in (3, 4)]
    asked = []

    def refill(pass_number, free, left):
        assert all(r.status in ("pruned", "finished") and r.params is not None for r in left)
        asked.append((pass_number, free, len(left)))
        joining, queue[:] = queue[:1], queue[1:]
        return joining

    def prune(pass_number, live):
        return {0} if pass_number == 1 else set()

    return (
        _train(members, digits, backend, on_pass=prune, refill=refill),
        asked,
        [(_member(OPTIMS[optim], i), _data(60, 20, seed=20 + i)) for i in (3, 4)],
    )


@pytest.mark.parametrize("optim", list(OPTIMS))
def test_a_refilled_member_equals_its_single_run_on_the_kernel(optim):
    results, asked, joined = _refilled(optim, "c")
    assert [r.status for r in results] == ["pruned", "finished", "finished", "finished", "finished"]
    assert asked[0] == (1, 1, 1)  # the pruned member's lane, at the first boundary
    assert sum(n for *_, n in asked) == 5  # every member's end is handed over when it leaves
    assert [len(r.history) for r in results] == [1, 3, 3, 3, 3]
    assert results[1].population_sizes == [3, 3, 3]  # the lane stayed filled
    assert results[3].population_sizes == [3, 3, 2]  # beside the first two, then beside the last joiner
    assert results[4].population_sizes == [2, 1, 1]
    for result, (member, digits) in zip(results[3:], joined):
        (alone,) = _train([member], digits, "c")
        assert _rows(result) == _rows(alone)
        for name in PARAM_NAMES:
            assert torch.equal(result.params[name], alone.params[name]), name
        assert torch.equal(result.test_outputs, alone.test_outputs)
    for k in (1, 2):  # the members beside it are not disturbed either
        (alone,) = _train([_member(OPTIMS[optim], k)], _data(60, 20, seed=20 + k), "c")
        assert _rows(results[k]) == _rows(alone)


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_a_refilled_member_follows_its_single_run_on_torch_ops(optim):
    """Torch's batched products over another arrangement may add in another order: the misses agree."""
    results, _, joined = _refilled(optim, "torch")
    (alone,) = _train([joined[0][0]], joined[0][1], "torch")
    assert [r["test/misses"] for r in results[3].history] == [r["test/misses"] for r in alone.history]
    assert [r["pass"] for r in results[3].history] == [1, 2, 3]
