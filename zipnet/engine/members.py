"""What a population is made of: each member's settings, and each member's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zipnet.net import InitSpec
from zipnet.optim import OptimSpec

BACKENDS = ("auto", "torch", "c")
MSE_C = {"mean": 0.2, "sum": 2.0, "half_sum": 1.0}  # E = (c/2) sum_k (d_k - x_k)^2 (LeCun et al. 1998, appendix C)


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
    # per pass: how many members trained together, and this one's place among them (kept for
    # zipnet-reproduce; on the compiled kernel a member's numbers depend on neither)
    population_sizes: list[int] = field(default_factory=list)
    population_positions: list[int] = field(default_factory=list)
    # what actually ran: "c" (the compiled kernel) or "torch" (torch ops, on the device given to train);
    # the kernel's build key ("" for torch ops) and the CPU's model name
    backend: str = ""
    kernel_build: str = ""
    cpu: str = ""
