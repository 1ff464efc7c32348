"""The population trainer: K configurations of the 1989 net trained in lockstep.

Every member sees the same example at the same step, so the K forward and backward
passes are one batched computation with a leading K axis. A single run is a
population of one. Backprop is written out by hand (the engine never builds an
autograd graph); tests check it against the autograd reference in reference.py.

"The network was trained ... the weights were updated after each pattern
presentation", in a constant order, for 23 passes; train and test are evaluated
after every pass.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from zipnet import kernel, paper
from zipnet.errors import ConfigError
from zipnet.net import PARAM_NAMES, SQUASHES, InitSpec, connection_table, h2_mask, init_params
from zipnet.optim import OptimSpec, make_optimiser

BACKENDS = ("auto", "torch", "c")
AUTO_KERNEL_MIN_K = 8  # from 2 members to this, the torch path is faster; one member has its own kernel path
MSE_C = {"mean": 0.2, "sum": 2.0, "half_sum": 1.0}  # E = (c/2) sum_k (d_k - x_k)^2 (REFERENCE.md §2)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Member:
    """Everything that may differ between members of one population."""

    init: InitSpec = InitSpec()
    table: str = "block"
    table_seed: int = 0
    activation: str = "tanh"
    output: str = "squash"  # squash: the paper's squashed outputs | linear (for cross-entropy)
    loss: str = "mse"  # mse | cross_entropy (softmax over the 10 outputs)
    mse: str = "mean"
    target_negative: float = -1.0
    target_positive: float = 1.0
    dropout: float = 0.0  # on H2's output while training; masks drawn from init.seed and the pass
    optim: OptimSpec = OptimSpec()


@dataclass
class RunResult:
    """One member's outcome: per-pass metrics as data, and its final parameters."""

    member: Member
    history: list[dict[str, float]] = field(default_factory=list)
    status: str = "running"  # running | finished | diverged | pruned
    diverged_at_pass: int | None = None
    params: dict[str, torch.Tensor] | None = None
    test_outputs: torch.Tensor | None = None  # (N_test, 10) after the last evaluated pass
    # per pass: how many members trained together, and this one's place among them; the
    # last bits of its metrics depend on both (zipnet-reproduce replays them)
    population_sizes: list[int] = field(default_factory=list)
    population_positions: list[int] = field(default_factory=list)


def input_patches(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 16, 16) digits -> (N, 25, 64) H1 receptive fields, edges reading -1.

    "The input is surrounded by a constant background of -1": pad by 2, 5x5 windows, stride 2.
    """
    padded = F.pad(x, (2, 2, 2, 2), "constant", -1.0)
    return F.unfold(padded, kernel_size=5, stride=2)


def h2_field_index() -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices into the padded (12, 12, 12) H1 maps.

    Returns the H2 receptive fields in (12 maps x 5 x 5, 4 x 4 positions) order, and the
    768 real H1 units (the rest is the -1 border).
    """
    c, ky, kx, oy, ox = np.meshgrid(
        np.arange(12), np.arange(5), np.arange(5), np.arange(4), np.arange(4), indexing="ij"
    )
    fields = c * 144 + (2 * oy + ky) * 12 + (2 * ox + kx)
    c, i, j = np.meshgrid(np.arange(12), np.arange(8), np.arange(8), indexing="ij")
    units = c * 144 + (2 + i) * 12 + (2 + j)
    return torch.from_numpy(fields.reshape(-1)), torch.from_numpy(units.reshape(-1))


class Population:
    """K members' parameters stacked on a leading axis, with the batched per-example step."""

    def __init__(
        self,
        members: list[Member],
        device: str | torch.device = "cpu",
        fused: bool = True,
        backend: str = "torch",
        threads: int = 0,
    ):
        self.fused = fused  # False: always go through optim.step with explicit gradients (for tests)
        self.device = torch.device(device)
        self.members = list(members)
        self.threads = threads or os.cpu_count() or 1  # for the compiled kernel; its results do not depend on it
        for key, values in (
            ("model.activation", {m.activation == "relu" for m in members}),
            ("model.output", {m.output for m in members}),
            ("loss.name", {m.loss for m in members}),
        ):
            if len(values) > 1:
                raise ConfigError(key, "members of one population must agree on it (population.group_key splits them)")
        self.relu = members[0].activation == "relu"  # else f(a) = A tanh(S a), A and S per member
        self.linear_out = members[0].output == "linear"
        self.cross_entropy = members[0].loss == "cross_entropy"
        tables = [connection_table(m.table, m.table_seed) for m in members]
        self.table = tables[0]
        per_member = [init_params(m.init, t) for m, t in zip(members, tables)]
        self.params = {n: torch.stack([p[n] for p in per_member]).to(self.device) for n in PARAM_NAMES}
        self.mask = torch.stack([h2_mask(t) for t in tables]).to(self.device)  # (K, 12, 300)
        act = torch.tensor([SQUASHES.get(m.activation, (1.0, 1.0)) for m in members], dtype=torch.float32)
        self.A = act[:, 0].to(self.device)
        self.S = act[:, 1].to(self.device)
        self.c = torch.tensor([MSE_C[m.mse] for m in members], dtype=torch.float32, device=self.device)
        self.dropout = torch.tensor([m.dropout for m in members], dtype=torch.float32, device=self.device)
        self._derive()
        # target rows by label: (K, 10 labels, 10 outputs)
        neg = torch.tensor([m.target_negative for m in members]).view(-1, 1, 1)
        pos = torch.tensor([m.target_positive for m in members]).view(-1, 1, 1)
        self.targets = (neg + (pos - neg) * torch.eye(10)).to(self.device)
        self.optim = make_optimiser([m.optim for m in members], self.device)
        self.keep_masks: torch.Tensor | None = None  # (K, N, 192) dropout keep masks for the pass
        self.kernel = self._kernel(backend, same_table=all(np.array_equal(t, self.table) for t in tables))
        self._h2_fields, self._h1_units = (t.to(self.device) for t in h2_field_index())
        self._make_views()

    def _kernel(self, backend: str, same_table: bool):
        """The compiled CPU kernel when it applies (cpu, SGD, the paper's net, one table), else None (torch ops)."""
        if backend not in BACKENDS:
            raise ConfigError("trainer.backend", f"{backend!r} is not allowed; choose one of {', '.join(BACKENDS)}")
        if backend == "torch":
            return None
        why = (
            "it runs on the CPU only"
            if self.device.type != "cpu"
            else "it implements SGD only"
            if not self.optim.fused
            else "it implements the paper's squashed net with MSE only"
            if self.relu or self.linear_out or self.cross_entropy
            else "it has no dropout"
            if bool((self.dropout > 0).any())
            else "its members must share one connection table"
            if not same_table
            else None
        )
        # a population of one takes the kernel's single-member path (vectorised over units)
        self.block = 1 if self.K == 1 else kernel.block_for(self.K)
        lib = kernel.library(kernel.block_for(self.K)) if why is None else None
        if lib is None and backend == "c":
            raise ConfigError(
                "trainer.backend", f"'c' is not available here ({why or 'no C compiler'}); use auto or torch"
            )
        return lib

    def _packed(self) -> kernel.Packed:
        neg, pos = self.targets[:, 0, 1], self.targets[:, 0, 0]
        consts = torch.stack([self.A, self.S, self.c, self.optim.lr, neg, pos], dim=1)
        return kernel.Packed(self.params, consts, self.block)

    def train_pass(self, patches: torch.Tensor, order: list[int], inputs: torch.Tensor | None = None) -> None:
        """One pass of per-pattern updates in the given order (the kernel reads `inputs`, padded 20x20)."""
        if self.kernel is None:
            for i, label in enumerate(order):
                self.step(patches[i], label, i)
            return
        packed = self._packed()
        labels = torch.tensor(order, dtype=torch.int32)
        if self.block == 1:
            kernel.train_pass_one(self.kernel, packed, self.table, inputs, labels)
        else:
            kernel.train_pass(self.kernel, packed, self.table, inputs, labels, self.threads)
        packed.unpack_into(self.params)

    def draw_dropout(self, n: int, pass_index: int) -> None:
        """Keep masks on H2's 192 outputs for the pass's n patterns, each member from its own seed.

        A member draws the same masks whoever it trains with, so it still equals its single run.
        """
        if not bool((self.dropout > 0).any()):
            self.keep_masks = None
            return
        masks = []
        for m in self.members:
            rng = np.random.default_rng([m.init.seed, pass_index, 1989])
            masks.append(torch.from_numpy(rng.random((n, 192), dtype=np.float32) >= m.dropout))
        self.keep_masks = torch.stack(masks).to(self.device)

    def _derive(self) -> None:
        """Constants that follow from the members: f' factors, and which shortcuts apply."""
        self.SA, self.S_over_A = self.S * self.A, self.S / self.A
        self._same_act = len({m.activation for m in self.members}) == 1
        self._masked = not all(m.table == "full" for m in self.members)
        self._keep_scale = 1.0 / (1.0 - self.dropout)  # inverted dropout: E[x] unchanged
        self.cSA, self.cS_over_A = self.c * self.SA, self.c * self.S_over_A

    def _make_views(self) -> None:
        """Buffers and views the per-example step reuses (views track in-place updates)."""
        K, p = self.K, self.params
        pad = torch.full((K, 12, 12, 12), -1.0, device=self.device)  # H1 maps with the -1 border
        self._views = {
            "pad_flat": pad.view(K, 1728),
            "pad_inner": pad[:, :, 2:10, 2:10],
            "H3b": p["H3b"].unsqueeze(2),
            "outb": p["outb"].unsqueeze(2),
            "outw_t": p["outw"].transpose(1, 2),
            "H3w_t": p["H3w"].transpose(1, 2),
            "H2w_t": p["H2w"].transpose(1, 2),
            "targets": self.targets.unsqueeze(3),  # (K, label, 10, 1)
        }

    @property
    def K(self) -> int:
        return len(self.members)

    def _f(self, a: torch.Tensor, shape: tuple[int, ...], out: bool = False) -> torch.Tensor:
        """f(a), in place on the pre-activation `a`: A tanh(S a), or relu; identity for a linear output."""
        if out and self.linear_out:
            return a
        if self.relu:
            return a.clamp_(min=0.0)
        if self._same_act:
            A, S = SQUASHES[self.members[0].activation]
            return a.tanh_() if S == 1.0 and A == 1.0 else a.mul_(S).tanh_().mul_(A)
        return a.mul_(self.S.view(shape)).tanh_().mul_(self.A.view(shape))

    def _fprime(self, x: torch.Tensor, shape: tuple[int, ...], out: bool = False, c: bool = False) -> torch.Tensor:
        """f'(a) from x = f(a): (S/A)(A^2 - x^2) = S A - (S/A) x^2; 1 [x > 0] for relu; 1 if linear.

        `c`: times the MSE's c (the squashed output layer's delta in one product)."""
        if out and self.linear_out:
            return torch.ones_like(x)
        if self.relu:
            return (x > 0).to(x.dtype)
        sa, s_over_a = (self.cSA, self.cS_over_A) if c else (self.SA, self.S_over_A)
        return torch.addcmul(sa.view(shape), x * x, s_over_a.view(shape), value=-1.0)

    def _forward_one(self, patches: torch.Tensor, i: int | None = None):
        """One pattern through every member; `i` (its place in the pass) picks the dropout masks."""
        p, v, K = self.params, self._views, self.K
        x1 = self._f(torch.baddbmm(p["H1b"], p["H1w"], patches.expand(K, 25, 64)), (K, 1, 1))  # (K, 12, 64)
        v["pad_inner"].copy_(x1.view(K, 12, 8, 8))
        p2 = v["pad_flat"].index_select(1, self._h2_fields).view(K, 300, 16)  # H2 receptive fields
        x2 = self._f(torch.baddbmm(p["H2b"], p["H2w"], p2), (K, 1, 1))  # (K, 12, 16)
        keep = None
        if self.keep_masks is not None and i is not None:
            keep = self.keep_masks[:, i].to(x2.dtype).mul_(self._keep_scale.view(K, 1)).view(K, 12, 16)
        h3_in = x2 if keep is None else x2 * keep
        x3 = self._f(torch.baddbmm(v["H3b"], p["H3w"], h3_in.reshape(K, 192, 1)), (K, 1, 1))  # (K, 30, 1)
        y = self._f(torch.baddbmm(v["outb"], p["outw"], x3), (K, 1, 1), out=True)  # (K, 10, 1)
        return x1, p2, x2, keep, h3_in, x3, y

    def _output_delta(self, y: torch.Tensor, label: int) -> torch.Tensor:
        """dE/da at the outputs: E'(y) f'(a), with E = (c/2) sum_k (d_k - y_k)^2 or softmax cross-entropy."""
        K = self.K
        if self.cross_entropy:
            g = torch.softmax(y, dim=1)
            g[:, label] -= 1.0  # dE/dy = softmax(y) - onehot
            return g.mul_(self._fprime(y, (K, 1, 1), out=True))
        d = y - self._views["targets"][:, label]
        if self.linear_out:
            return d.mul_(self.c.view(K, 1, 1))
        return d.mul_(self._fprime(y, (K, 1, 1), out=True, c=True))  # c (y - d) f'(a)

    def _deltas(self, acts, label: int):
        """dE/da per layer, by ordinary backprop."""
        v, K = self._views, self.K
        x1, p2, x2, keep, h3_in, x3, y = acts
        d4 = self._output_delta(y, label)  # (K, 10, 1)
        d3 = torch.bmm(v["outw_t"], d4).mul_(self._fprime(x3, (K, 1, 1)))  # (K, 30, 1)
        d2 = torch.bmm(v["H3w_t"], d3).view(K, 12, 16)
        if keep is not None:
            d2.mul_(keep)
        d2.mul_(self._fprime(x2, (K, 1, 1)))
        d1 = self._to_h1(torch.bmm(v["H2w_t"], d2)).mul_(self._fprime(x1, (K, 1, 1)))
        return d1, d2, d3, d4

    def _to_h1(self, field_values: torch.Tensor) -> torch.Tensor:
        """(K, 300, 16) values on H2's receptive fields, summed onto the (K, 12, 64) H1 units.

        "Nothing flows into the -1 padding": only the 768 real H1 units are gathered back."""
        K = self.K
        dpad = torch.zeros(K, 1728, device=self.device).index_add_(1, self._h2_fields, field_values.reshape(K, 4800))
        return dpad.index_select(1, self._h1_units).view(K, 12, 64)

    def gradients(self, patches: torch.Tensor, label: int, i: int | None = None, curvature: bool = False):
        """dE/dw for one example, all members: forward, then backprop by hand.

        With `curvature`, also the Gauss-Newton h of every parameter from the same forward.
        """
        K = self.K
        acts = self._forward_one(patches, i)
        x1, p2, x2, keep, h3_in, x3, y = acts
        d1, d2, d3, d4 = self._deltas(acts, label)
        grads = {
            "H1w": torch.matmul(d1, patches.t()),
            "H1b": d1,
            "H2w": torch.bmm(d2, p2.transpose(1, 2)).mul_(self.mask),
            "H2b": d2,
            "H3w": torch.bmm(d3, h3_in.view(K, 1, 192)),
            "H3b": d3.view(K, 30),
            "outw": torch.bmm(d4, x3.view(K, 1, 30)),
            "outb": d4.view(K, 10),
        }
        return (grads, self._curvature(acts, patches)) if curvature else grads

    def _curvature(self, acts, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """The SDLM second-derivative pass (REFERENCE.md §2): Gauss-Newton, so h >= 0.

        s = d2E/da2 per unit: at an output s_k = E''(y_k) f'(a_k)^2, with E'' = c for the
        MSE and softmax's p (1 - p) for cross-entropy; at a hidden unit s_j = f'(a_j)^2
        sum_i w_ij^2 s_i, "backprop with the weights and f' squared". A connection's h is
        s_i x_j^2, summed over every position that shares the weight; a bias's h is s_i.
        """
        v, K = self._views, self.K
        x1, p2, x2, keep, h3_in, x3, y = acts
        if self.cross_entropy:
            prob = torch.softmax(y, dim=1)
            curv = prob * (1 - prob)
        else:
            curv = self.c.view(K, 1, 1).expand_as(y)
        s4 = curv * self._fprime(y, (K, 1, 1), out=True).square()  # (K, 10, 1)
        s3 = torch.bmm(v["outw_t"].square(), s4).mul_(self._fprime(x3, (K, 1, 1)).square())  # (K, 30, 1)
        s2 = torch.bmm(v["H3w_t"].square(), s3).view(K, 12, 16)
        if keep is not None:
            s2.mul_(keep.square())
        s2.mul_(self._fprime(x2, (K, 1, 1)).square())
        s1 = self._to_h1(torch.bmm(v["H2w_t"].square(), s2)).mul_(self._fprime(x1, (K, 1, 1)).square())
        return {
            "H1w": torch.matmul(s1, patches.square().t()),  # summed over H1's 64 positions
            "H1b": s1,
            "H2w": torch.bmm(s2, p2.square().transpose(1, 2)).mul_(self.mask),  # over H2's 16 positions
            "H2b": s2,
            "H3w": torch.bmm(s3, h3_in.square().view(K, 1, 192)),
            "H3b": s3.view(K, 30),
            "outw": torch.bmm(s4, x3.square().view(K, 1, 30)),
            "outb": s4.view(K, 10),
        }

    def curvature(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """h for one pattern, all members (no dropout: h is estimated on the plain net).
        Gauss-Newton h does not depend on the label: E'' is c, or p (1 - p)."""
        return self._curvature(self._forward_one(patches), patches)

    def estimate_curvature(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mean h over the given patterns ("pass" mode: before each pass, LeNet-5's ~500)."""
        total = {name: torch.zeros_like(t) for name, t in self.params.items()}
        for patch in patches:
            for name, h in self.curvature(patch).items():
                total[name].add_(h)
        return {name: t.div_(len(patches)) for name, t in total.items()}

    def step(self, patches: torch.Tensor, label: int, i: int | None = None) -> None:
        """One per-pattern update of every member (`i`: the pattern's place in the pass)."""
        if not (self.fused and self.optim.fused):
            if self.optim.curvature == "running":
                grads, h = self.gradients(patches, label, i, curvature=True)
                self.optim.observe(h)
            else:
                grads = self.gradients(patches, label, i)
            self.optim.step(self.params, grads)
            return
        # SGD: w <- w - lr dE/dw, with lr folded into the deltas and the outer products fused into the update
        p, v, K = self.params, self._views, self.K
        acts = self._forward_one(patches, i)
        x1, p2, x2, keep, h3_in, x3, y = acts
        lr = self.optim.lr.view(K, 1, 1)
        d1, d2, d3, d4 = (d.mul_(lr) for d in self._deltas(acts, label))
        p["H1w"].baddbmm_(d1, patches.t().expand(K, 64, 25), alpha=-1.0)
        p["H1b"].sub_(d1)
        p["H2w"].baddbmm_(d2, p2.transpose(1, 2), alpha=-1.0)
        if self._masked:
            p["H2w"].mul_(self.mask)
        p["H2b"].sub_(d2)
        p["H3w"].baddbmm_(d3, h3_in.view(K, 1, 192), alpha=-1.0)
        v["H3b"].sub_(d3)
        p["outw"].baddbmm_(d4, x3.view(K, 1, 30), alpha=-1.0)
        v["outb"].sub_(d4)

    def outputs(self, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Forward a batch of (N, 1, 16, 16) digits through every member: (K, N, 10).

        H1 and H2 run as convolutions over all members at once (H2 grouped by member).
        Dropout is off: evaluation sees the whole net.
        """
        p, K, N = self.params, self.K, x.shape[0]
        chunk = chunk or max(16, 16384 // K)
        out = torch.empty(K, N, 10, device=self.device)
        w1 = p["H1w"].reshape(K * 12, 1, 5, 5)
        w2 = p["H2w"].reshape(K * 12, 12, 5, 5)
        for lo in range(0, N, chunk):
            B = min(chunk, N - lo)
            inp = F.pad(x[lo : lo + B], (2, 2, 2, 2), "constant", -1.0)
            x1 = F.conv2d(inp, w1, stride=2).add_(p["H1b"].reshape(1, K * 12, 8, 8))
            x1 = self._f(x1.view(B, K, 12 * 64), (1, K, 1))
            x1 = F.pad(x1.view(B, K * 12, 8, 8), (2, 2, 2, 2), "constant", -1.0)
            x2 = F.conv2d(x1, w2, stride=2, groups=K).add_(p["H2b"].reshape(1, K * 12, 4, 4))
            x2 = self._f(x2.view(B, K, 192), (1, K, 1)).transpose(0, 1)  # (K, B, 192)
            x3 = self._f(torch.baddbmm(p["H3b"].unsqueeze(1), x2, p["H3w"].transpose(1, 2)), (K, 1, 1))
            y = torch.baddbmm(p["outb"].unsqueeze(1), x3, p["outw"].transpose(1, 2))
            out[:, lo : lo + B] = self._f(y, (K, 1, 1), out=True)
        return out

    def evaluate(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per member: the loss on this split, misses, and the outputs.

        The loss is the MSE "averaged over the patterns and over the output units", or for
        cross-entropy members the mean cross-entropy; either way it is computed from this
        split's outputs (the seed's modern.py reported the last training example's loss).
        """
        if self.kernel is None or self.block == 1:  # one member: torch's batched convolutions are faster
            y = self.outputs(x)
        else:
            y = kernel.outputs(self.kernel, self._packed(), self.table, kernel.padded_inputs(x), self.threads)
        if self.cross_entropy:
            per_pattern = -torch.log_softmax(y, dim=2).gather(2, labels.view(1, -1, 1).expand(self.K, -1, 1))
        else:
            per_pattern = (y - self.targets[:, labels]) ** 2  # (K, N, 10), contiguous like y
        loss = per_pattern.mean(dim=(1, 2))
        misses = (y.argmax(dim=2) != labels.unsqueeze(0)).sum(dim=1)
        return loss, misses, y

    def keep(self, index: list[int]) -> None:
        """Continue with only the members at `index`; the others leave the population."""
        idx = torch.tensor(index, dtype=torch.long, device=self.device)
        self.members = [self.members[i] for i in index]
        self.params = {n: t.index_select(0, idx).contiguous() for n, t in self.params.items()}
        for name in ("mask", "A", "S", "c", "dropout", "targets"):
            setattr(self, name, getattr(self, name).index_select(0, idx).contiguous())
        if self.keep_masks is not None:
            self.keep_masks = self.keep_masks.index_select(0, idx).contiguous()
        self.optim.keep(idx)
        self._derive()
        self._make_views()

    def finite(self) -> torch.Tensor:
        """(K,) bool: whether all of a member's parameters are finite."""
        ok = torch.ones(self.K, dtype=torch.bool, device=self.device)
        for t in self.params.values():
            ok &= torch.isfinite(t.view(self.K, -1)).all(dim=1)
        return ok

    def member_params(self, k: int) -> dict[str, torch.Tensor]:
        return {n: t[k].detach().cpu().clone() for n, t in self.params.items()}


PassHook = Callable[[int, list[RunResult]], set[int]]


def train(
    members: list[Member],
    digits,
    passes: int = 23,
    device: str = "cpu",
    log: Callable[[str], None] | None = print,
    on_pass: PassHook | None = None,
    progress=None,
    backend: str = "auto",
    threads: int = 0,
    shift: int = 0,
    shift_seed: int = 0,
) -> list[RunResult]:
    """Train members in lockstep and return one RunResult each, in the order given.

    `on_pass(pass_number, active_results)` runs after each pass's evaluation and may return
    the positions (in `members`) of results to stop as pruned. A member whose loss turns
    NaN or inf is stopped as diverged, with its pass number; the others go on undisturbed.
    `backend`: "torch" (torch ops), "c" (the compiled CPU kernel), or "auto" (the kernel
    for a single run and for populations of AUTO_KERNEL_MIN_K or more, where it applies). `shift`: each training
    pattern moved by up to that many pixels per pass (the modern recipe), drawn from
    `shift_seed` and the pass.
    """
    dev = torch.device(device)
    if backend == "auto" and 1 < len(members) < AUTO_KERNEL_MIN_K:
        backend = "torch"
    pop = Population(members, dev, backend=backend, threads=threads)
    results = [RunResult(member=m) for m in members]
    active = list(range(len(members)))  # positions in `results` of the population's members
    x = {"train": digits.train_x.to(dev), "test": digits.test_x.to(dev)}
    y = {"train": digits.train_y.to(dev), "test": digits.test_y.to(dev)}
    train_patches = input_patches(x["train"])
    train_inputs = kernel.padded_inputs(x["train"]) if pop.kernel is not None else None
    order = digits.train_y.tolist()  # labels as Python ints: no device sync per step
    with torch.no_grad():
        for pass_index in range(passes):
            pass_number = pass_index + 1
            lrs = pop.optim.start_pass(pass_index, passes)
            started = time.perf_counter()
            if shift:
                moved = shifted(x["train"], shift, np.random.default_rng([shift_seed, pass_index]))
                train_patches = input_patches(moved)
                train_inputs = kernel.padded_inputs(moved) if pop.kernel is not None else None
            if pop.optim.curvature == "pass" or (pop.optim.curvature == "running" and pass_index == 0):
                # "before each pass, estimate h over a few hundred patterns" (LeNet-5), the same for all members
                sample = hessian_sample(len(order), pop.optim.samples, pass_index)
                pop.optim.set_curvature(pop.estimate_curvature(train_patches[sample]))
            pop.draw_dropout(len(order), pass_index)
            pop.train_pass(train_patches, order, train_inputs)
            seconds = time.perf_counter() - started
            metrics = {split: pop.evaluate(x[split], y[split]) for split in SPLITS}
            finite = pop.finite().tolist()
            gone: list[int] = []
            for k, pos in enumerate(active):
                row: dict[str, float] = {"pass": pass_number}
                for split in SPLITS:
                    loss, misses, _ = metrics[split]
                    n = y[split].shape[0]
                    row[f"{split}/loss"] = float(loss[k])
                    row[f"{split}/misses"] = int(misses[k])
                    row[f"{split}/error"] = 100.0 * int(misses[k]) / n
                row["lr"] = lrs[k]
                row["seconds"] = seconds
                if not pop.cross_entropy:  # the paper's figures are MSEs: no gap for a cross-entropy run
                    row[paper.GAP] = paper.gap(row, len(order), y["test"].shape[0])
                result = results[pos]
                result.history.append(row)
                result.population_sizes.append(len(active))
                result.population_positions.append(k)
                result.test_outputs = metrics["test"][2][k].cpu()
                if not (finite[k] and math.isfinite(row["train/loss"]) and math.isfinite(row["test/loss"])):
                    result.status, result.diverged_at_pass = "diverged", pass_number
                    gone.append(k)
            if log is not None:
                for pos in active:
                    log(format_pass(results[pos], prefix=f"member {pos}: " if len(members) > 1 else ""))
            if on_pass is not None:
                live = [results[pos] for k, pos in enumerate(active) if k not in gone]
                for pos in on_pass(pass_number, live) or ():
                    k = active.index(pos)
                    if k not in gone:
                        results[pos].status = "pruned"
                        gone.append(k)
            for k in gone:
                results[active[k]].params = pop.member_params(k)
            if progress is not None:
                progress.update(pass_number)
            if gone:
                keep = [k for k in range(len(active)) if k not in gone]
                active = [active[k] for k in keep]
                if not active:
                    break
                pop.keep(keep)
    for k, pos in enumerate(active):
        results[pos].status = "finished"
        results[pos].params = pop.member_params(k)
    return results


def hessian_sample(n: int, samples: int, pass_index: int) -> list[int]:
    """Which training patterns SDLM averages h over before a pass: a fixed draw per pass."""
    rng = np.random.default_rng([pass_index, 1989])
    return rng.choice(n, size=min(samples, n), replace=False).tolist()


def shifted(x: torch.Tensor, shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Each (1, 16, 16) digit moved by dx, dy in [-shift, shift]; the vacated edge reads the
    -1 background (the seed's modern.py rolls the image around instead)."""
    n, s = x.shape[0], shift
    moves = torch.from_numpy(rng.integers(-s, s + 1, size=(n, 2)))
    padded = F.pad(x, (s, s, s, s), "constant", -1.0)
    out = torch.empty_like(x)
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            rows = ((moves[:, 0] == dy) & (moves[:, 1] == dx)).nonzero().view(-1).to(x.device)
            if len(rows):
                out[rows] = padded[rows, :, s - dy : s - dy + 16, s - dx : s - dx + 16]
    return out


def format_pass(result: RunResult, prefix: str = "") -> str:
    """The seed's per-pass lines: `eval: split train. loss 4.07e-03. error 0.62%. misses: 45`."""
    row = result.history[-1]
    lines = [f"{prefix}pass {row['pass']}"]
    for split in SPLITS:
        lines.append(
            f"{prefix}eval: split {split:5s}. loss {row[f'{split}/loss']:.2e}. "
            f"error {row[f'{split}/error']:.2f}%. misses: {row[f'{split}/misses']}"
        )
    if result.status == "diverged":
        lines.append(f"{prefix}diverged at pass {result.diverged_at_pass}: the loss or the weights are not finite")
    return "\n".join(lines)
