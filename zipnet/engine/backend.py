"""The engine's backend: one contract for what computes a population's passes, and the one place
that picks it.

Two backends keep the contract: torch ops (torch_ops.py; any device, any settings) and the
compiled CPU kernel (kernel_ops.py). The training loop has its backend lay out a pass's digits,
train the pass, estimate SDLM's curvature on it and evaluate every member, and never asks which
one it holds. `backend="auto"` takes the kernel wherever it applies; a member's numbers on the
kernel do not depend on the population's size, its place in it or the thread count.
"""

from __future__ import annotations

from typing import Protocol

import torch

from zipnet.engine import kernel
from zipnet.engine.kernel_ops import KernelOps
from zipnet.engine.members import BACKENDS
from zipnet.engine.population import Population
from zipnet.engine.torch_ops import TorchOps
from zipnet.errors import ConfigError

# a pass's digits and labels as one backend reads them: what its own prepare() made
Prepared = tuple[torch.Tensor, torch.Tensor]
# per split evaluated: every member's loss (K,), misses (K,), and its (K, N, 10) outputs where asked for
Scores = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


class Backend(Protocol):
    """What computes the steps of one Population. `member_index`: per member, the dataset it reads."""

    name: str  # what a RunResult records: "c" (the compiled kernel) or "torch" (torch ops)
    build: str  # the kernel's build key, the arithmetic's identity; "" for torch ops

    def prepare(self, x: torch.Tensor, labels: torch.Tensor) -> Prepared:
        """A pass's training digits x (D, N, 1, 16, 16) and labels (D, N), laid out for this backend."""
        ...

    def train_pass(self, prepared: Prepared, member_index: list[int]) -> None:
        """One pass of per-pattern updates of every member, in place."""
        ...

    def sample_curvature(
        self, prepared: Prepared, member_index: list[int], sample: list[int], members: list[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """SDLM's h: per member (or per member at `members`: members at another pass draw another
        sample), the mean over the sample's patterns of its own dataset (no dropout)."""
        ...

    def evaluate(
        self, splits: list[tuple[torch.Tensor, torch.Tensor]], member_index: list[int], outputs: tuple[bool, ...]
    ) -> list[Scores]:
        """Every member on its own dataset, per split (x (D, N, 1, 16, 16), labels (D, N)); outputs: per
        split, whether to return the members' outputs."""
        ...


def backend_for(pop: Population, name: str = "auto", threads: int = 0) -> Backend:
    """The backend `name` asks for: "torch" (torch ops), "c" (the compiled kernel, on `threads` threads;
    0: every core) or "auto" (the kernel where it applies: on the CPU, with one connection table)."""
    if name not in BACKENDS:
        raise ConfigError("trainer.backend", f"{name!r} is not allowed; choose one of {', '.join(BACKENDS)}")
    if name == "torch":
        return TorchOps(pop)
    why = (
        "it runs on the CPU only"
        if pop.device.type != "cpu"
        else "its members must share one connection table"
        if not pop.same_table
        else None
    )
    found = kernel.load() if why is None else None
    if found is not None:
        return KernelOps(pop, found, threads)
    if name == "c":
        raise ConfigError("trainer.backend", f"'c' is not available here ({why or 'no C compiler'}); use auto or torch")
    return TorchOps(pop)
