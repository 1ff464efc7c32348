"""Population-based training (hydra.sweeper.scheduler: {name: pbt}): the exploit copies a member's
weights and optimiser state bit for bit, each member's run records its lineage, a member is
replayed exactly from what its run stored, and a perturb key the engine cannot change is refused."""

from dataclasses import replace

import pytest
import torch
from stand_ins import data as _data

from zipnet.engine import Member, train
from zipnet.engine.members import Copy, mutable_values, mutated
from zipnet.net import InitSpec
from zipnet.optim import OptimSpec

PASSES = 3
OPTIMS = {
    "sgd": OptimSpec(name="sgd", lr=0.02, lr_end=0.005),
    "sdlm": OptimSpec(name="sdlm", lr=0.0005, hessian_samples=20),
    "adamw": OptimSpec(name="adamw", lr=0.001, weight_decay=0.02),
}


def _members(optim: OptimSpec, k: int = 4) -> list[Member]:
    return [Member(init=InitSpec(seed=10 + i), optim=replace(optim, lr=optim.lr * (1 + i / 2))) for i in range(k)]


def _rows(history):
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in history]


def _copy_after_first(members, source: int, target: int, member: Member | None = None):
    """An exploit hook: after pass 1, `target` takes `source`'s state, going on as `member` (by
    default with the source's mutable values, as an unperturbed PBT copy)."""

    def exploit(pass_number, live):
        if pass_number != 1:
            return []
        now = member or mutated(members[target], mutable_values(members[source]))
        return [Copy(target=target, source=source, member=now)]

    return exploit


@pytest.mark.parametrize("optim", sorted(OPTIMS))
def test_exploit_copies_the_lane_bit_for_bit(optim):
    """On the kernel: just after the copy the target's weights and optimiser state are the source's,
    bit for bit, and with the same settings and data the two go on identical to the last pass."""
    digits, members = _data(n_train=300, n_test=100), _members(OPTIMS[optim])
    states = {}

    def keep(checkpoint, positions):
        states[checkpoint.passes_done] = checkpoint

    results = train(
        members,
        digits,
        passes=PASSES,
        log=None,
        backend="c",
        exploit=_copy_after_first(members, source=0, target=2),
        checkpoint_every=1,
        on_checkpoint=keep,
    )
    assert [r.backend for r in results] == ["c"] * 4
    after = states[1].members
    for part in ("params", "optim"):
        source, target = getattr(after[0], part), getattr(after[2], part)
        assert source.keys() == target.keys() and (source or (part, optim) == ("optim", "sgd"))
        for name in source:
            assert torch.equal(source[name], target[name]), (part, name)
    (copy,) = results[2].copies
    assert (copy.pass_number, copy.source, copy.target) == (1, 0, 2)
    for name, t in copy.state.members[0].params.items():  # what the run stores: the state just after
        assert torch.equal(t, after[0].params[name])
    assert results[2].current.optim.lr == members[0].optim.lr
    assert _rows(results[2].history[1:]) == _rows(results[0].history[1:])
    assert _rows(results[2].history[:1]) != _rows(results[0].history[:1])
    for name, t in results[0].params.items():
        assert torch.equal(t, results[2].params[name])


@pytest.mark.parametrize("optim", sorted(OPTIMS))
def test_member_replays_from_its_stored_copy(optim):
    """The target's state just after the copy, resumed as a single run with its new settings,
    ends bit for bit where the member ended in the population (the replay zipnet-reproduce runs)."""
    digits, members = _data(n_train=300, n_test=100), _members(OPTIMS[optim])
    values = {key: (v * 1.25 if v is not None else None) for key, v in mutable_values(members[1]).items()}
    now = mutated(members[3], values)
    results = train(
        members, digits, passes=PASSES, log=None, backend="c", exploit=_copy_after_first(members, 1, 3, now)
    )
    (copy,) = results[3].copies
    (alone,) = train([now], digits, passes=PASSES, log=None, backend="c", start=copy.state)
    assert _rows(alone.history) == _rows(results[3].history)
    assert [row["lr"] for row in alone.history[1:]] == [now.optim.lr_at(p, PASSES) for p in range(1, PASSES)]
    for name, t in results[3].params.items():
        assert torch.equal(t, alone.params[name])


def test_a_copy_changes_only_what_may_change():
    members = _members(OPTIMS["sgd"], k=2)
    with pytest.raises(ValueError, match="optim.mu cannot change between passes with optim=sgd"):
        mutated(members[0], {"optim.mu": 0.1})
    other = replace(members[1], target_negative=-0.5)
    with pytest.raises(ValueError, match="a copy may change only optim.lr, optim.lr_end"):
        train(
            members, _data(n_train=50, n_test=20), passes=2, log=None, exploit=_copy_after_first(members, 0, 1, other)
        )
