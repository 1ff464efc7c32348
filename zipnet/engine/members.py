"""What a population is made of: each member's settings, and each member's outcome."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from zipnet.net import InitSpec
from zipnet.optim import OptimSpec

BACKENDS = ("auto", "torch", "c")
# What a member may change between passes (population-based training), per optimiser, as config keys.
# The engine reads these afresh at every pass (the lr schedule at start_pass) or every step (mu,
# the weight decay), so a member that changes them goes on as if it had had them all along from
# that pass. Everything else is fixed for a member's life: its init and seeds decided its first
# weights and its dropout masks, its data.seed its example stream, its table, activation, output
# and loss the net's shape and what its weights mean, its targets and MSE scaling the objective,
# its optimiser's name and SDLM's curvature mode the population it trains in.
MUTABLE = {
    "sgd": ("optim.lr", "optim.lr_end"),
    "sdlm": ("optim.lr", "optim.lr_end", "optim.mu"),
    "adamw": ("optim.lr", "optim.lr_end", "optim.weight_decay"),
}
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


def mutable_values(member: Member) -> dict[str, float | None]:
    """The member's values of what it may change between passes (MUTABLE), by config key."""
    return {key: getattr(member.optim, key.split(".", 1)[1]) for key in MUTABLE[member.optim.name]}


def mutated(member: Member, values: dict[str, float | None]) -> Member:
    """The member with other values of its mutable settings; any other key is refused."""
    allowed = MUTABLE[member.optim.name]
    for key in values:
        if key not in allowed:
            raise ValueError(f"{key} cannot change between passes with optim={member.optim.name}; allowed: {allowed}")
    fields = {key.split(".", 1)[1]: value for key, value in values.items()}
    return dataclasses.replace(member, optim=dataclasses.replace(member.optim, **fields))


@dataclass
class Copy:
    """Population-based training's exploit at the end of a pass: the member at `target` (a position in
    the members given to train) takes the weights and optimiser state of the one at `source`, and goes
    on as `member` (the target's settings with other mutable values: MUTABLE)."""

    target: int
    source: int
    member: Member
    source_run: str = ""  # the caller's name for the source (its MLflow run id)
    source_trial: int | None = None
    changes: dict[str, tuple] = field(default_factory=dict)  # config key -> (old, new)
    pass_number: int = 0  # set by the engine: the pass after which it copied
    state: object | None = None  # set by the engine: the target's Checkpoint just after the copy


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
    copies: list[Copy] = field(default_factory=list)  # PBT: each exploit of this member, in order

    @property
    def current(self) -> Member:
        """The settings it trains with now: its member, or the last copy's."""
        return self.copies[-1].member if self.copies else self.member
