"""The modern recipe's parts against independent references: cross-entropy, relu, dropout,
AdamW (torch.optim.AdamW), shifts, the linear lr schedule, and the experiment=modern presets."""

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from stand_ins import close, data, digits, evaluated

from zipnet import config as checks
from zipnet.cli.train import CONF_DIR
from zipnet.engine import Member, Population, input_patches, shifted, train
from zipnet.engine.torch_ops import TorchOps
from zipnet.net import PARAM_NAMES, InitSpec, connection_table
from zipnet.optim import OptimSpec
from zipnet.reference import Net1989, example_cross_entropy

ADAMW = OptimSpec(name="adamw", lr=3e-3, weight_decay=0.01)
MODERN = [
    Member(init=InitSpec(seed=0), activation="relu", output="linear", loss="cross_entropy", dropout=0.25, optim=ADAMW),
    Member(
        init=InitSpec(seed=1, init="linear"),
        activation="relu",
        output="linear",
        loss="cross_entropy",
        dropout=0.5,
        optim=replace(ADAMW, lr=1e-3, weight_decay=0.0, beta1=0.8),
    ),
]
PRESETS = [
    "modern/1_cross_entropy",
    "modern/2_adamw",
    "modern/3_shifts",
    "modern/4_relu_dropout",
    "modern/5_full_mnist",
]


def _reference(pop: Population, k: int) -> Net1989:
    m = pop.members[k]
    return Net1989(pop.member_params(k), connection_table(m.table, m.table_seed), m.activation, m.output)


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_cross_entropy_gradients_with_dropout_match_autograd(activation):
    x, y = digits(4, seed=21)
    members = [replace(m, activation=activation) for m in MODERN]
    pop = Population(members)
    ops = TorchOps(pop)
    pop.draw_dropout(4, pass_index=0)
    patches = input_patches(x)
    for i in range(4):
        grads = ops.gradients(patches[i], int(y[i]), i)
        for k in range(pop.K):
            ref = _reference(pop, k)
            ref.keep = pop.keep_masks[k, i].float().view(1, 192) / (1 - members[k].dropout)
            example_cross_entropy(ref(x[i : i + 1])[0], int(y[i])).backward()
            want = ref.engine_grads()
            for name in PARAM_NAMES:
                close(grads[name][k], want[name] * (pop.mask[k] if name == "H2w" else 1))


def test_adamw_steps_match_torch_adamw():
    x, y = digits(6, seed=22)
    members = [replace(m, dropout=0.0) for m in MODERN]
    pop = Population(members)
    ops = TorchOps(pop)
    refs = [_reference(pop, k) for k in range(pop.K)]
    opts = [
        torch.optim.AdamW(
            ref.parameters(),
            lr=m.optim.lr,
            betas=(m.optim.beta1, m.optim.beta2),
            eps=m.optim.eps,
            weight_decay=m.optim.weight_decay,
        )
        for m, ref in zip(members, refs)
    ]
    pop.optim.start_pass(0, 1)
    patches = input_patches(x)
    for i in range(6):
        with torch.no_grad():
            ops.step(patches[i], int(y[i]), i)
        for ref, opt in zip(refs, opts):
            opt.zero_grad()
            example_cross_entropy(ref(x[i : i + 1])[0], int(y[i])).backward()
            opt.step()
    for k, ref in enumerate(refs):
        want = ref.engine_params()
        for name in PARAM_NAMES:
            close(pop.params[name][k], want[name], tol=1e-5)


def test_cross_entropy_loss_is_computed_on_the_split_evaluated():
    x, y = digits(50, seed=23)
    pop = Population(MODERN)
    loss, misses, out = evaluated(TorchOps(pop), x, y)
    for k in range(pop.K):
        with torch.no_grad():
            logits = _reference(pop, k)(x)  # dropout is off in evaluation
        assert float(loss[k]) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
        assert int(misses[k]) == int((logits.argmax(1) != y).sum())


def test_dropout_masks_depend_on_the_member_seed_and_pass_only():
    pop = Population(MODERN)
    pop.draw_dropout(300, pass_index=2)
    alone = Population([MODERN[1]])
    alone.draw_dropout(300, pass_index=2)
    assert torch.equal(pop.keep_masks[1], alone.keep_masks[0])
    rate = 1 - pop.keep_masks.float().mean(dim=(1, 2))
    assert rate[0] == pytest.approx(0.25, abs=0.01) and rate[1] == pytest.approx(0.5, abs=0.01)
    alone.draw_dropout(300, pass_index=3)
    assert not torch.equal(pop.keep_masks[1], alone.keep_masks[0])


def test_a_modern_member_equals_its_single_run_and_reruns_bit_identically():
    # at the presets' lr: per-pattern Adam scales even rounding-level gradients up to lr-sized
    # steps, so at 10x that lr batched and single products (last bits apart) part within a pass
    members = [replace(m, optim=replace(m.optim, lr=3e-4)) for m in MODERN]
    d = data(1000, 200)
    together = train(members, d, passes=2, log=None, shift=1, shift_seed=4)
    again = train(members, d, passes=2, log=None, shift=1, shift_seed=4)

    def metrics(results):
        return [[{k: v for k, v in row.items() if not k.endswith("seconds")} for row in r.history] for r in results]

    assert metrics(together) == metrics(again)
    for member, got in zip(members, together):
        (alone,) = train([member], d, passes=2, log=None, shift=1, shift_seed=4)
        assert [r["test/misses"] for r in got.history] == [r["test/misses"] for r in alone.history]
        for a, b in zip(got.history, alone.history):
            assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)


def test_shifts_move_each_digit_by_at_most_one_pixel_and_fill_with_background():
    x = torch.rand(200, 1, 16, 16) * 2 - 1
    out = shifted(x, 1, np.random.default_rng(0))
    assert torch.equal(out, shifted(x, 1, np.random.default_rng(0)))
    moves = set()
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    for i in range(200):  # find each digit's move by search, independently of shifted()
        found = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(out[i, 0], padded[i, 0, 1 - dy : 17 - dy, 1 - dx : 17 - dx])
        ]
        assert len(found) == 1
        moves.add(found[0])
    assert len(moves) == 9


def test_linear_lr_schedule_runs_from_lr_to_lr_end():
    spec = OptimSpec(name="adamw", lr=3e-4, lr_end=1e-4)
    assert [spec.lr_at(p, 5) for p in range(5)] == pytest.approx([3e-4, 2.5e-4, 2e-4, 1.5e-4, 1e-4])


def test_presets_are_cumulative():
    cfgs = [_compose([f"experiment={name}"]) for name in PRESETS]
    members = [checks.member(c) for c in cfgs]
    assert [m.loss for m in members] == ["cross_entropy"] * 5 and all(m.output == "linear" for m in members)
    assert [m.optim.name for m in members] == ["sgd", "adamw", "adamw", "adamw", "adamw"]
    assert members[0].optim.lr == 0.01 and (members[1].optim.lr, members[1].optim.lr_end) == (3e-4, 1e-4)
    assert [c.trainer.passes for c in cfgs] == [23, 46, 60, 80, 80]
    assert [c.trainer.shift for c in cfgs] == [0, 0, 1, 1, 1]
    assert [(m.activation, m.dropout) for m in members][2:] == [("tanh", 0.0), ("relu", 0.25), ("relu", 0.25)]
    assert [c.data.source for c in cfgs] == ["embedded"] * 4 + ["mnist"] and cfgs[4].data.n_train == 60000


def test_a_preset_trains_from_the_command_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zipnet.cli.train",
            "experiment=modern/4_relu_dropout",
            "trainer.passes=2",
            "data.n_train=300",
            "data.n_test=100",
            "tracking.enabled=false",
            "trainer.progress=off",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("eval: split test ") == 2
