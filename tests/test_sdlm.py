"""optim=sdlm: the Gauss-Newton second-derivative pass against autograd, and the update rule."""

from dataclasses import replace

import pytest
import torch
from stand_ins import close, data, digits, evaluated
from torch.func import functional_call, jacrev

from zipnet.engine import MSE_C, Member, Population, input_patches, train
from zipnet.engine.torch_ops import TorchOps
from zipnet.net import PARAM_NAMES, InitSpec, connection_table
from zipnet.optim import OptimSpec
from zipnet.reference import Net1989, example_loss

SDLM = OptimSpec(name="sdlm", lr=5e-4, mu=0.02)
MEMBERS = [
    Member(init=InitSpec(seed=0), optim=SDLM),
    Member(
        init=InitSpec(init="linear", seed=1),
        activation="scaled_tanh",
        mse="half_sum",
        target_negative=-0.8,
        target_positive=0.8,
        optim=replace(SDLM, lr=2e-4, mu=0.1),
    ),
    Member(init=InitSpec(seed=2), mse="sum", optim=replace(SDLM, lr=1e-4, mu=0.05)),
]


def _reference_layout(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Engine-layout parameters (no K axis) as Net1989's named parameters."""
    return {
        "H1w": p["H1w"].reshape(12, 1, 5, 5),
        "H1b": p["H1b"].reshape(12, 8, 8),
        "H2w": p["H2w"].reshape(12, 12, 5, 5),
        "H2b": p["H2b"].reshape(12, 4, 4),
        "H3w": p["H3w"].t(),
        "H3b": p["H3b"],
        "outw": p["outw"].t(),
        "outb": p["outb"],
    }


def _gauss_newton_diagonal(pop: Population, k: int, x: torch.Tensor, label: int) -> dict[str, torch.Tensor]:
    """diag(J^T E'' J) with autograd: J = dy/dw of the reference net, E'' the loss's Hessian in y.

    This is the Hessian of E with every f'' term dropped, computed without the engine's recursion.
    """
    m = pop.members[k]
    model = Net1989(pop.member_params(k), connection_table(m.table, m.table_seed), m.activation, m.output)
    params = pop.member_params(k)
    y = model(x)[0].detach()
    jac = jacrev(lambda p: functional_call(model, _reference_layout(p), (x,))[0])(params)
    if m.loss == "cross_entropy":
        prob = torch.softmax(y, dim=0)
        hess_y = torch.diag(prob) - torch.outer(prob, prob)
    else:
        hess_y = MSE_C[m.mse] * torch.eye(10)
    out = {}
    for name in PARAM_NAMES:
        J = jac[name].reshape(10, -1)
        out[name] = torch.einsum("ap,ab,bp->p", J, hess_y, J).reshape(params[name].shape)
    return out


def test_h_is_never_negative():
    x, y = digits(20, seed=7)
    pop = Population(MEMBERS)
    ops = TorchOps(pop)
    patches = input_patches(x)
    for i in range(20):
        for name, h in ops.curvature(patches[i]).items():
            assert bool((h >= 0).all()), name


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_output_layer_h_is_the_exact_gauss_newton_diagonal(loss):
    x, y = digits(3, seed=8)
    members = [replace(m, loss=loss, output="linear" if loss == "cross_entropy" else "squash") for m in MEMBERS]
    pop = Population(members)
    ops = TorchOps(pop)
    patches = input_patches(x)
    for i in range(3):
        h = ops.curvature(patches[i])
        for k in range(len(members)):
            want = _gauss_newton_diagonal(pop, k, x[i : i + 1], int(y[i]))
            close(h["outw"][k], want["outw"])
            close(h["outb"][k], want["outb"])


def test_along_a_chain_the_recursion_equals_the_gauss_newton_diagonal():
    """One path from every weight to the output, so nothing the recursion drops is there to drop.

    Only outw[0, 0], H3w[0, u] and one H2 weight (H2 map 0 <- H1 map 0) are non-zero, so a
    single H1 unit, H2 unit and H3 unit carry everything: a chain of one unit per layer.
    The recursion must then match the autograd Gauss-Newton diagonal for all 9,760 weights,
    shared and unshared.
    """
    x, y = digits(3, seed=9)
    pop = Population(MEMBERS[:2])
    ops = TorchOps(pop)
    for k in range(pop.K):
        p = {name: pop.params[name][k] for name in PARAM_NAMES}
        keep_out, keep_h3, keep_h2 = p["outw"][0, 0].item(), p["H3w"][0, 5].item(), p["H2w"][0, 12].item()
        for name in ("outw", "H3w", "H2w"):
            p[name].zero_()
        p["outw"][0, 0], p["H3w"][0, 5], p["H2w"][0, 12] = 2.0 * keep_out, 3.0 * keep_h3 + 0.5, 2.0 * keep_h2 + 0.5
    patches = input_patches(x)
    for i in range(3):
        h = ops.curvature(patches[i])
        for k in range(pop.K):
            want = _gauss_newton_diagonal(pop, k, x[i : i + 1], int(y[i]))
            for name in PARAM_NAMES:
                close(h[name][k], want[name], tol=1e-5)
            assert float(want["H1w"].abs().sum()) > 0  # the chain reaches H1


def test_a_shared_weight_sums_h_over_its_positions():
    """H1's kernel k at offset (ky, kx): the sum over its 64 units u of s_u x_{u,(ky,kx)}^2,
    with s_u the unit's own h (its bias's) and x read from the -1-padded input by hand."""
    x, y = digits(2, seed=10)
    pop = Population(MEMBERS)
    h = TorchOps(pop).curvature(input_patches(x)[1])
    padded = torch.nn.functional.pad(x[1, 0], (2, 2, 2, 2), value=-1.0)
    want = torch.zeros(pop.K, 12, 25)
    for ky in range(5):
        for kx in range(5):
            for oy in range(8):
                for ox in range(8):
                    xj = padded[2 * oy + ky, 2 * ox + kx]
                    want[:, :, ky * 5 + kx] += h["H1b"][:, :, oy * 8 + ox] * xj * xj
    close(h["H1w"], want, tol=1e-5)


def test_one_step_is_eta_over_mu_plus_h_times_the_gradient():
    x, y = digits(40, seed=11)
    pop = Population(MEMBERS)
    ops = TorchOps(pop)
    patches = input_patches(x)
    pop.optim.start_pass(0)
    h = ops.estimate_curvature(patches[:30])
    pop.optim.set_curvature(h)
    before = {name: t.clone() for name, t in pop.params.items()}
    grads = []
    for k, m in enumerate(pop.members):  # dE/dw from autograd on the reference net
        model = Net1989(pop.member_params(k), connection_table(m.table), m.activation)
        example_loss(model(x[35:36])[0], pop.targets[k, y[35]], m.mse).backward()
        grads.append(model.engine_grads())
    with torch.no_grad():
        ops.step(patches[35], int(y[35]))
    for k, m in enumerate(pop.members):
        for name in PARAM_NAMES:
            step = m.optim.lr / (m.optim.mu + h[name][k]) * grads[k][name] * (pop.mask[k] if name == "H2w" else 1)
            close(pop.params[name][k], before[name][k] - step)


def test_running_h_is_a_running_average_of_the_pattern_h():
    x, y = digits(3, seed=12)
    members = [replace(m, optim=replace(m.optim, hessian="running", hessian_decay=0.1)) for m in MEMBERS]
    pop = Population(members)
    ops = TorchOps(pop)
    patches = input_patches(x)
    h0 = ops.estimate_curvature(patches[:2])
    pop.optim.set_curvature(h0)
    h_pattern = ops.curvature(patches[2])
    with torch.no_grad():
        ops.step(patches[2], int(y[2]))
    for name in PARAM_NAMES:
        close(pop.optim.h[name], 0.9 * h0[name] + 0.1 * h_pattern[name])


def test_one_pass_reduces_the_loss():
    d = data(1000, 200)
    pop = Population(MEMBERS)
    initial, _, _ = evaluated(TorchOps(pop), d.train_x, d.train_y)
    results = train(MEMBERS, d, passes=1, log=None)
    for k, result in enumerate(results):
        assert result.history[0]["train/loss"] < 0.8 * float(initial[k])


def test_an_sdlm_member_equals_its_single_run():
    d = data(1000, 200)
    together = train(MEMBERS, d, passes=2, log=None)
    for member, got in zip(MEMBERS, together):
        (alone,) = train([member], d, passes=2, log=None)
        assert [r["train/misses"] for r in got.history] == [r["train/misses"] for r in alone.history]
        assert [r["test/misses"] for r in got.history] == [r["test/misses"] for r in alone.history]
        for a, b in zip(got.history, alone.history):
            assert a["test/loss"] == pytest.approx(b["test/loss"], rel=1e-5)
