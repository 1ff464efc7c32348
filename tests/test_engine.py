"""The population engine against the autograd reference: gradients, SGD steps, members vs single runs."""

from dataclasses import replace

import pytest
import torch
from stand_ins import close as _close
from stand_ins import data as _data
from stand_ins import digits as _digits
from stand_ins import evaluated, one_pass

from zipnet.engine import Member, Population, backend_for, input_patches, train
from zipnet.engine.torch_ops import TorchOps
from zipnet.net import PARAM_NAMES, InitSpec, connection_table
from zipnet.optim import OptimSpec
from zipnet.reference import Net1989, example_loss, train_pass

MEMBERS = [
    Member(init=InitSpec(seed=0), mse="mean", optim=OptimSpec(lr=0.03)),
    Member(
        init=InitSpec(init="linear", seed=1, fan_in_bias=True),
        table="random",
        table_seed=4,
        activation="scaled_tanh",
        mse="half_sum",
        target_negative=-0.8,
        target_positive=0.9,
        optim=OptimSpec(lr=0.01),
    ),
    Member(init=InitSpec(seed=2, out_bias=0.0), table="full", mse="sum", optim=OptimSpec(lr=0.005)),
]


def _reference(pop: Population, k: int) -> Net1989:
    m = pop.members[k]
    return Net1989(pop.member_params(k), connection_table(m.table, m.table_seed), m.activation)


@pytest.mark.parametrize("members", [MEMBERS[:1], MEMBERS], ids=["K=1", "K=3"])
def test_gradients_match_autograd(members):
    x, y = _digits(4)
    pop = Population(members)
    ops = TorchOps(pop)
    patches = input_patches(x)
    for i in range(4):
        grads = ops.gradients(patches[i], int(y[i]))
        for k, m in enumerate(members):
            ref = _reference(pop, k)
            example_loss(ref(x[i : i + 1])[0], pop.targets[k, y[i]], m.mse).backward()
            expected = ref.engine_grads()
            for name in PARAM_NAMES:
                want = expected[name] * (pop.mask[k] if name == "H2w" else 1)
                _close(grads[name][k], want)


@pytest.mark.parametrize("mse", ["mean", "sum", "half_sum"])
def test_each_mse_gradient_equals_autograd_of_its_loss(mse):
    x, y = _digits(1, seed=5)
    member = Member(mse=mse)
    pop = Population([member])
    grads = TorchOps(pop).gradients(input_patches(x)[0], int(y[0]))
    ref = _reference(pop, 0)
    out = ref(x)[0]
    t = pop.targets[0, y[0]]
    scale = {"mean": 1 / 10, "sum": 1.0, "half_sum": 0.5}[mse]  # written out independently of the engine
    (scale * ((out - t) ** 2).sum()).backward()
    _close(grads["outb"][0], ref.outb.grad)
    _close(grads["H1w"][0], ref.H1w.grad.reshape(12, 25))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit-gradients"])
@pytest.mark.parametrize("members", [MEMBERS[:1], MEMBERS], ids=["K=1", "K=3"])
def test_sgd_steps_match_the_reference_loop(members, fused):
    x, y = _digits(5, seed=1)
    pop = Population(members)
    ops = TorchOps(pop, fused=fused)
    refs = [_reference(pop, k) for k in range(len(members))]
    pop.optim.start_pass(0)
    patches = input_patches(x)
    with torch.no_grad():
        for i in range(5):
            ops.step(patches[i], int(y[i]))
    for k, (m, ref) in enumerate(zip(members, refs)):
        train_pass(ref, x, pop.targets[k, y], lr=m.optim.lr, mse=m.mse)
        want = ref.engine_params()
        for name in PARAM_NAMES:
            _close(pop.params[name][k], want[name])


def test_evaluation_matches_the_reference_forward():
    x, y = _digits(50, seed=2)
    pop = Population(MEMBERS)
    loss, misses, out = evaluated(TorchOps(pop), x, y)
    for k in range(len(MEMBERS)):
        with torch.no_grad():
            ref_out = _reference(pop, k)(x)
        torch.testing.assert_close(out[k], ref_out, rtol=1e-5, atol=1e-6)
        t = pop.targets[k, y]
        assert float(loss[k]) == pytest.approx(float(((ref_out - t) ** 2).mean()), rel=1e-5)
        assert int(misses[k]) == int((ref_out.argmax(1) != y).sum())


KERNEL_MEMBERS = [replace(m, table="block") for m in MEMBERS]


@pytest.mark.parametrize("backend,members", [("torch", MEMBERS), ("c", KERNEL_MEMBERS)])
def test_population_member_equals_its_single_run(backend, members):
    """Members of one population read their own datasets (three data seeds) and still equal their
    single runs: exactly on the kernel, to float rounding on torch ops (batched products of another
    size may add in another order)."""
    datasets = [_data(seed=20 + k) for k in range(len(members))]
    together = train(members, datasets, passes=2, log=None, backend=backend)
    for member, got, data in zip(members, together, datasets):
        (alone,) = train([member], data, passes=2, log=None, backend=backend)
        assert got.status == alone.status == "finished"
        for a, b in zip(got.history, alone.history):
            assert a["train/misses"] == b["train/misses"] and a["test/misses"] == b["test/misses"]
            if backend == "c":
                assert a["train/loss"] == b["train/loss"] and a["test/loss"] == b["test/loss"]
            assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
            assert a["test/loss"] == pytest.approx(b["test/loss"], rel=1e-5)


@pytest.mark.parametrize("backend", ["torch", "c"])
def test_a_diverging_member_stops_and_the_others_go_on(backend):
    data = _data()
    bad = replace(MEMBERS[0], mse="sum", optim=OptimSpec(lr=3e38))  # weights overflow to inf, then NaN
    lines = []
    results = train([MEMBERS[0], bad], data, passes=3, log=lines.append, backend=backend)
    (alone,) = train([MEMBERS[0]], data, passes=3, log=None, backend=backend)
    assert results[1].status == "diverged" and results[1].diverged_at_pass == 1
    assert len(results[1].history) == 1
    assert any("diverged at pass 1" in line for line in lines)
    assert results[0].status == "finished" and len(results[0].history) == 3
    assert [r["test/misses"] for r in results[0].history] == [r["test/misses"] for r in alone.history]


@pytest.mark.parametrize("backend", ["torch", "c"])
def test_pruned_members_leave_after_their_pass(backend):
    data = _data()
    members = [replace(MEMBERS[0], init=InitSpec(seed=s)) for s in range(3)]
    seen = []

    def prune_second(pass_number, live):
        seen.append((pass_number, len(live)))
        return {1} if pass_number == 1 else set()

    results = train(members, data, passes=2, log=None, on_pass=prune_second, backend=backend)
    assert seen == [(1, 3), (2, 2)]
    assert [r.status for r in results] == ["finished", "pruned", "finished"]
    assert [len(r.history) for r in results] == [2, 1, 2]
    assert results[1].params is not None
    # each result records who trained with it per pass (zipnet-reproduce replays this)
    assert [r.population_sizes for r in results] == [[3, 2], [3], [3, 2]]
    assert [r.population_positions for r in results] == [[0, 0], [1], [2, 1]]


def test_per_pass_lr_schedule_is_applied():
    data = _data(50, 10)
    member = replace(MEMBERS[0], optim=OptimSpec(lr=0.03, lr_by_pass=(0.05, 0.02)))
    (result,) = train([member], data, passes=3, log=None)
    assert [row["lr"] for row in result.history] == [0.05, 0.02, 0.02]


def test_compiled_kernel_matches_the_torch_path():
    """The C kernel (members in SIMD lanes) against the torch ops, over 300 updates and an evaluation."""
    x, y = _digits(300, seed=6)
    members = KERNEL_MEMBERS + [Member(init=InitSpec(seed=s)) for s in range(10, 25)]  # 18: two kernel blocks
    ops, comp = backend_for(Population(members), "torch"), backend_for(Population(members), "c")
    assert (ops.name, comp.name) == ("torch", "c")
    for backend in (ops, comp):
        backend.pop.optim.start_pass(0)
        with torch.no_grad():
            one_pass(backend, x, y)
    for name in PARAM_NAMES:
        _close(comp.pop.params[name], ops.pop.params[name], tol=1e-5)
    loss_ops, misses_ops, out_ops = evaluated(ops, x, y)
    loss_c, misses_c, out_c = evaluated(comp, x, y)
    _close(out_c, out_ops, tol=1e-5)
    torch.testing.assert_close(loss_c.float(), loss_ops, rtol=1e-4, atol=0)


def test_kernel_results_do_not_depend_on_threads_or_neighbours():
    data = _data(300, 100)
    members = [Member(init=InitSpec(seed=s), optim=OptimSpec(lr=0.01 * (1 + s))) for s in range(20)]
    one = train(members, data, passes=1, log=None, backend="c", threads=1)
    two = train(members, data, passes=1, log=None, backend="c", threads=2)
    # 17 shares its block of 8 lanes with 7 others above, with 1 other here (a single member
    # takes the kernel's one-member path instead, which rounds differently)
    pair = train(members[16:18], data, passes=1, log=None, backend="c", threads=1)

    def strip(r):
        return {k: v for k, v in r.history[0].items() if not k.endswith("seconds")}

    assert [strip(a) for a in one] == [strip(b) for b in two]
    assert strip(one[17]) == strip(pair[1])
    assert all(torch.equal(one[17].params[n], pair[1].params[n]) for n in PARAM_NAMES)


def test_the_one_member_kernel_path_matches_the_torch_path():
    data = _data()
    member = Member(init=InitSpec(seed=5), optim=OptimSpec(lr=0.02))
    (fast,) = train([member], data, passes=2, log=None, backend="c")
    (slow,) = train([member], data, passes=2, log=None, backend="torch")
    for a, b in zip(fast.history, slow.history):
        assert a["train/misses"] == b["train/misses"] and a["test/misses"] == b["test/misses"]
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
    for name in PARAM_NAMES:
        _close(fast.params[name], slow.params[name], tol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_population_matches_the_cpu():
    data = _data(300, 100)
    members = [Member(init=InitSpec(seed=s), optim=OptimSpec(lr=0.01)) for s in range(4)]
    cpu = train(members, data, passes=1, log=None, backend="torch")
    gpu = train(members, data, passes=1, device="cuda", log=None, backend="auto")
    for a, b in zip(cpu, gpu):
        assert a.history[0]["test/misses"] == b.history[0]["test/misses"]
        assert a.history[0]["test/loss"] == pytest.approx(b.history[0]["test/loss"], rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_a_cuda_member_equals_its_cuda_single_run():
    """On CUDA (torch ops), members with their own data seeds against their single runs on CUDA."""
    datasets = [_data(300, 100, seed=30 + k % 2) for k in range(len(MEMBERS))]
    together = train(MEMBERS, datasets, passes=2, device="cuda", log=None)
    for member, got, data in zip(MEMBERS, together, datasets):
        (alone,) = train([member], data, passes=2, device="cuda", log=None)
        assert got.backend == alone.backend == "torch"
        for a, b in zip(got.history, alone.history):
            assert a["train/misses"] == b["train/misses"] and a["test/misses"] == b["test/misses"]
            assert a["test/loss"] == pytest.approx(b["test/loss"], rel=1e-5)
