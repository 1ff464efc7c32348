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
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from zipnet import kernel
from zipnet.errors import ConfigError
from zipnet.net import ACTIVATIONS, InitSpec, PARAM_NAMES, connection_table, h2_mask, init_params
from zipnet.optim import OptimSpec, make_optimiser

BACKENDS = ("auto", "torch", "c")
AUTO_KERNEL_MIN_K = 8  # below this the torch path is faster
MSE_C = {"mean": 0.2, "sum": 2.0, "half_sum": 1.0}  # E = (c/2) sum_k (d_k - x_k)^2 (REFERENCE.md §2)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Member:
    """Everything that may differ between members of one population."""

    init: InitSpec = InitSpec()
    table: str = "block"
    table_seed: int = 0
    activation: str = "tanh"
    mse: str = "mean"
    target_negative: float = -1.0
    target_positive: float = 1.0
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
    c, ky, kx, oy, ox = np.meshgrid(np.arange(12), np.arange(5), np.arange(5), np.arange(4), np.arange(4), indexing="ij")
    fields = c * 144 + (2 * oy + ky) * 12 + (2 * ox + kx)
    c, i, j = np.meshgrid(np.arange(12), np.arange(8), np.arange(8), indexing="ij")
    units = c * 144 + (2 + i) * 12 + (2 + j)
    return torch.from_numpy(fields.reshape(-1)), torch.from_numpy(units.reshape(-1))


class Population:
    """K members' parameters stacked on a leading axis, with the batched per-example step."""

    def __init__(self, members: list[Member], device: str | torch.device = "cpu", fused: bool = True,
                 backend: str = "torch", threads: int = 0):
        self.fused = fused  # False: always go through optim.step with explicit gradients (for tests)
        self.device = torch.device(device)
        self.members = list(members)
        self.threads = threads or os.cpu_count() or 1  # for the compiled kernel; its results do not depend on it
        tables = [connection_table(m.table, m.table_seed) for m in members]
        self.table = tables[0]
        per_member = [init_params(m.init, t) for m, t in zip(members, tables)]
        self.params = {n: torch.stack([p[n] for p in per_member]).to(self.device) for n in PARAM_NAMES}
        self.mask = torch.stack([h2_mask(t) for t in tables]).to(self.device)  # (K, 12, 300)
        act = torch.tensor([ACTIVATIONS[m.activation] for m in members], dtype=torch.float32)
        self.A = act[:, 0].to(self.device)
        self.S = act[:, 1].to(self.device)
        self.c = torch.tensor([MSE_C[m.mse] for m in members], dtype=torch.float32, device=self.device)
        self._derive()
        # target rows by label: (K, 10 labels, 10 outputs)
        neg = torch.tensor([m.target_negative for m in members]).view(-1, 1, 1)
        pos = torch.tensor([m.target_positive for m in members]).view(-1, 1, 1)
        self.targets = (neg + (pos - neg) * torch.eye(10)).to(self.device)
        self.optim = make_optimiser([m.optim for m in members], self.device)
        self.kernel = self._kernel(backend, same_table=all(np.array_equal(t, self.table) for t in tables))
        self._h2_fields, self._h1_units = (t.to(self.device) for t in h2_field_index())
        self._make_views()

    def _kernel(self, backend: str, same_table: bool):
        """The compiled CPU kernel when it applies (cpu, SGD, one table), else None (torch ops)."""
        if backend not in BACKENDS:
            raise ConfigError("trainer.backend", f"{backend!r} is not allowed; choose one of {', '.join(BACKENDS)}")
        if backend == "torch":
            return None
        why = ("it runs on the CPU only" if self.device.type != "cpu" else
               "it implements SGD only" if not self.optim.fused else
               "its members must share one connection table" if not same_table else None)
        self.block = kernel.block_for(self.K)
        lib = kernel.library(self.block) if why is None else None
        if lib is None and backend == "c":
            raise ConfigError("trainer.backend", f"'c' is not available here ({why or 'no C compiler'}); use auto or torch")
        return lib

    def _packed(self) -> kernel.Packed:
        neg, pos = self.targets[:, 0, 1], self.targets[:, 0, 0]
        consts = torch.stack([self.A, self.S, self.c, self.optim.lr, neg, pos], dim=1)
        return kernel.Packed(self.params, consts, self.block)

    def train_pass(self, patches: torch.Tensor, order: list[int], inputs: torch.Tensor | None = None) -> None:
        """One pass of per-pattern updates in the given order (the kernel reads `inputs`, padded 20x20)."""
        if self.kernel is None:
            for i, label in enumerate(order):
                self.step(patches[i], label)
            return
        packed = self._packed()
        kernel.train_pass(self.kernel, packed, self.table, inputs, torch.tensor(order, dtype=torch.int32), self.threads)
        packed.unpack_into(self.params)

    def _derive(self) -> None:
        """Constants that follow from the members: f' factors, and which shortcuts apply."""
        self.SA, self.S_over_A = self.S * self.A, self.S / self.A
        self._same_act = len({m.activation for m in self.members}) == 1
        self._masked = not all(m.table == "full" for m in self.members)
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

    def _f(self, a: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """f(a) = A tanh(S a), in place on the pre-activation `a`."""
        if self._same_act:
            A, S = ACTIVATIONS[self.members[0].activation]
            return a.tanh_() if S == 1.0 and A == 1.0 else a.mul_(S).tanh_().mul_(A)
        return a.mul_(self.S.view(shape)).tanh_().mul_(self.A.view(shape))

    def _fprime(self, x: torch.Tensor, shape: tuple[int, ...], out: bool = False) -> torch.Tensor:
        """f'(a) from x = f(a): (S/A)(A^2 - x^2) = S A - (S/A) x^2; times c at the output layer."""
        sa, s_over_a = (self.cSA, self.cS_over_A) if out else (self.SA, self.S_over_A)
        return torch.addcmul(sa.view(shape), x * x, s_over_a.view(shape), value=-1.0)

    def _forward_one(self, patches: torch.Tensor):
        p, v, K = self.params, self._views, self.K
        x1 = self._f(torch.baddbmm(p["H1b"], p["H1w"], patches.expand(K, 25, 64)), (K, 1, 1))  # (K, 12, 64)
        v["pad_inner"].copy_(x1.view(K, 12, 8, 8))
        p2 = v["pad_flat"].index_select(1, self._h2_fields).view(K, 300, 16)  # H2 receptive fields
        x2 = self._f(torch.baddbmm(p["H2b"], p["H2w"], p2), (K, 1, 1))  # (K, 12, 16)
        x3 = self._f(torch.baddbmm(v["H3b"], p["H3w"], x2.view(K, 192, 1)), (K, 1, 1))  # (K, 30, 1)
        y = self._f(torch.baddbmm(v["outb"], p["outw"], x3), (K, 1, 1))  # (K, 10, 1)
        return x1, p2, x2, x3, y

    def _deltas(self, acts, label: int):
        """dE/da per layer for E = (c/2) sum_k (d_k - x_k)^2, by ordinary backprop."""
        p, v, K = self.params, self._views, self.K
        x1, p2, x2, x3, y = acts
        d4 = (y - v["targets"][:, label]).mul_(self._fprime(y, (K, 1, 1), out=True))  # (K, 10, 1)
        d3 = torch.bmm(v["outw_t"], d4).mul_(self._fprime(x3, (K, 1, 1)))  # (K, 30, 1)
        d2 = torch.bmm(v["H3w_t"], d3).view(K, 12, 16).mul_(self._fprime(x2, (K, 1, 1)))
        dp2 = torch.bmm(v["H2w_t"], d2).view(K, 4800)
        # "nothing flows into the -1 padding": gather back only the 768 H1 units
        dpad = torch.zeros(K, 1728, device=self.device).index_add_(1, self._h2_fields, dp2)
        d1 = dpad.index_select(1, self._h1_units).view(K, 12, 64).mul_(self._fprime(x1, (K, 1, 1)))
        return d1, d2, d3, d4

    def gradients(self, patches: torch.Tensor, label: int) -> dict[str, torch.Tensor]:
        """dE/dw for one example, all members: forward, then backprop by hand."""
        K = self.K
        acts = self._forward_one(patches)
        x1, p2, x2, x3, y = acts
        d1, d2, d3, d4 = self._deltas(acts, label)
        return {
            "H1w": torch.matmul(d1, patches.t()),
            "H1b": d1,
            "H2w": torch.bmm(d2, p2.transpose(1, 2)).mul_(self.mask),
            "H2b": d2,
            "H3w": torch.bmm(d3, x2.view(K, 1, 192)),
            "H3b": d3.view(K, 30),
            "outw": torch.bmm(d4, x3.view(K, 1, 30)),
            "outb": d4.view(K, 10),
        }

    def step(self, patches: torch.Tensor, label: int) -> None:
        """One per-pattern update of every member."""
        if not (self.fused and self.optim.fused):
            self.optim.step(self.params, self.gradients(patches, label))
            return
        # SGD: w <- w - lr dE/dw, with lr folded into the deltas and the outer products fused into the update
        p, v, K = self.params, self._views, self.K
        acts = self._forward_one(patches)
        x1, p2, x2, x3, y = acts
        lr = self.optim.lr.view(K, 1, 1)
        d1, d2, d3, d4 = (d.mul_(lr) for d in self._deltas(acts, label))
        p["H1w"].baddbmm_(d1, patches.t().expand(K, 64, 25), alpha=-1.0)
        p["H1b"].sub_(d1)
        p["H2w"].baddbmm_(d2, p2.transpose(1, 2), alpha=-1.0)
        if self._masked:
            p["H2w"].mul_(self.mask)
        p["H2b"].sub_(d2)
        p["H3w"].baddbmm_(d3, x2.view(K, 1, 192), alpha=-1.0)
        v["H3b"].sub_(d3)
        p["outw"].baddbmm_(d4, x3.view(K, 1, 30), alpha=-1.0)
        v["outb"].sub_(d4)

    def outputs(self, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Forward a batch of (N, 1, 16, 16) digits through every member: (K, N, 10).

        H1 and H2 run as convolutions over all members at once (H2 grouped by member).
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
            out[:, lo : lo + B] = self._f(torch.baddbmm(p["outb"].unsqueeze(1), x3, p["outw"].transpose(1, 2)), (K, 1, 1))
        return out

    def evaluate(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per member: MSE "averaged over the patterns and over the output units", misses, and the outputs."""
        if self.kernel is None:
            y = self.outputs(x)
        else:
            y = kernel.outputs(self.kernel, self._packed(), self.table, kernel.padded_inputs(x), self.threads)
        t = self.targets[:, labels]  # (K, N, 10)
        loss = ((y - t) ** 2).mean(dim=(1, 2))
        misses = (y.argmax(dim=2) != labels.unsqueeze(0)).sum(dim=1)
        return loss, misses, y

    def keep(self, index: list[int]) -> None:
        """Continue with only the members at `index`; the others leave the population."""
        idx = torch.tensor(index, dtype=torch.long, device=self.device)
        self.members = [self.members[i] for i in index]
        self.params = {n: t.index_select(0, idx).contiguous() for n, t in self.params.items()}
        for name in ("mask", "A", "S", "c", "targets"):
            setattr(self, name, getattr(self, name).index_select(0, idx).contiguous())
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
) -> list[RunResult]:
    """Train members in lockstep and return one RunResult each, in the order given.

    `on_pass(pass_number, active_results)` runs after each pass's evaluation and may return
    the positions (in `members`) of results to stop as pruned. A member whose loss turns
    NaN or inf is stopped as diverged, with its pass number; the others go on undisturbed.
    `backend`: "torch" (torch ops), "c" (the compiled CPU kernel), or "auto" (the kernel
    for populations of AUTO_KERNEL_MIN_K or more where it applies).
    """
    dev = torch.device(device)
    if backend == "auto" and len(members) < AUTO_KERNEL_MIN_K:
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
            lrs = pop.optim.start_pass(pass_index)
            started = time.perf_counter()
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
                result = results[pos]
                result.history.append(row)
                result.population_sizes.append(len(active))
                result.population_positions.append(k)
                result.test_outputs = metrics["test"][2][k].cpu()
                if not (finite[k] and math.isfinite(row["train/loss"]) and math.isfinite(row["test/loss"])):
                    result.status, result.diverged_at_pass = "diverged", pass_number
                    gone.append(k)
            if log is not None:
                for k, pos in enumerate(active):
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
