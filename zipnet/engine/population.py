"""A population's state: K members' parameters stacked on a leading axis, their per-member
constants, their optimiser, and the backend that computes their steps.

Two backends compute the same steps: torch ops (torch_ops.py; any device, any settings) and
the compiled CPU kernel (kernel_ops.py). `backend="auto"` takes the kernel wherever it
applies; a member's numbers on the kernel do not depend on the population's size, its
place in it or the thread count.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from zipnet.engine import kernel
from zipnet.engine.kernel_ops import KernelOps
from zipnet.engine.members import BACKENDS, MSE_C, Member
from zipnet.engine.torch_ops import TorchOps
from zipnet.errors import ConfigError
from zipnet.net import PARAM_NAMES, SQUASHES, connection_table, h2_mask, init_params
from zipnet.optim import make_optimiser


class Population:
    """K members' parameters and constants, with the batched per-pattern step."""

    def __init__(
        self,
        members: list[Member],
        device: str | torch.device = "cpu",
        fused: bool = True,
        backend: str = "torch",
        threads: int = 0,
    ):
        if backend not in BACKENDS:
            raise ConfigError("trainer.backend", f"{backend!r} is not allowed; choose one of {', '.join(BACKENDS)}")
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
        self.same_table = all(np.array_equal(t, self.table) for t in tables)
        per_member = [init_params(m.init, t) for m, t in zip(members, tables)]
        self.params = {n: torch.stack([p[n] for p in per_member]).to(self.device) for n in PARAM_NAMES}
        self.mask = torch.stack([h2_mask(t) for t in tables]).to(self.device)  # (K, 12, 300)
        act = torch.tensor([SQUASHES.get(m.activation, (1.0, 1.0)) for m in members], dtype=torch.float32)
        self.A = act[:, 0].to(self.device)
        self.S = act[:, 1].to(self.device)
        self.c = torch.tensor([MSE_C[m.mse] for m in members], dtype=torch.float32, device=self.device)
        self.dropout = torch.tensor([m.dropout for m in members], dtype=torch.float32, device=self.device)
        # target rows by label: (K, 10 labels, 10 outputs)
        neg = torch.tensor([m.target_negative for m in members]).view(-1, 1, 1)
        pos = torch.tensor([m.target_positive for m in members]).view(-1, 1, 1)
        self.targets = (neg + (pos - neg) * torch.eye(10)).to(self.device)
        self.optim = make_optimiser([m.optim for m in members], self.device)
        self.keep_masks: torch.Tensor | None = None  # (K, N, 192) dropout keep masks for the pass
        self.ops = TorchOps(self)
        self.kernel = self._kernel(backend)

    def _kernel(self, backend: str) -> KernelOps | None:
        """The compiled CPU kernel where it applies (the CPU, one connection table), else None (torch ops)."""
        if backend == "torch" or not self.fused:
            return None
        why = (
            "it runs on the CPU only"
            if self.device.type != "cpu"
            else "its members must share one connection table"
            if not self.same_table
            else None
        )
        found = kernel.load() if why is None else None
        if found is None and backend == "c":
            raise ConfigError(
                "trainer.backend", f"'c' is not available here ({why or 'no C compiler'}); use auto or torch"
            )
        return KernelOps(self, found) if found is not None else None

    @property
    def K(self) -> int:
        return len(self.members)

    @property
    def backend(self) -> str:
        return "c" if self.kernel is not None else "torch"

    @property
    def kernel_build(self) -> str:
        return self.kernel.build if self.kernel is not None else ""

    # --- the per-pattern step (torch ops; tests check it against autograd) -------------------

    def gradients(self, patches, label, i=None, curvature=False):
        return self.ops.gradients(patches, label, i, curvature)

    def curvature(self, patches):
        return self.ops.curvature(patches)

    def estimate_curvature(self, patches):
        return self.ops.estimate_curvature(patches)

    def step(self, patches, label, i=None) -> None:
        self.ops.step(patches, label, i)

    def train_pass(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """One pass over the same (N, 1, 16, 16) digits for every member, on this population's backend."""
        from zipnet.engine.streams import training_pass

        tp = training_pass(
            x.unsqueeze(0).to(self.device), labels.unsqueeze(0).to(self.device), 0, 0, 0, self.kernel is not None
        )
        if self.kernel is not None:
            self.kernel.train_pass(tp.inputs, tp.labels32, [0] * self.K)
        else:
            self.ops.train_pass(tp.patches, tp.labels, torch.zeros(self.K, dtype=torch.long, device=self.device))

    def outputs(self, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        return self.ops.outputs(x, chunk=chunk)

    def evaluate(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per member on the same digits: the loss, misses, and (K, N, 10) outputs."""
        from zipnet.engine.evaluation import evaluate

        ((loss, misses, y),) = evaluate(self, [(x.unsqueeze(0), labels.unsqueeze(0))], [0] * self.K, outputs=(True,))
        return loss, misses, y

    # --- per-member state ---------------------------------------------------------------------

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
        self.ops = TorchOps(self)

    def finite(self) -> torch.Tensor:
        """(K,) bool: whether all of a member's parameters are finite."""
        ok = torch.ones(self.K, dtype=torch.bool, device=self.device)
        for t in self.params.values():
            ok &= torch.isfinite(t.view(self.K, -1)).all(dim=1)
        return ok

    def member_params(self, k: int) -> dict[str, torch.Tensor]:
        return {n: t[k].detach().cpu().clone() for n, t in self.params.items()}
