"""Per-example update rules for a population: each member has its own learning rate and schedule.

An optimiser sees the gradients of one example for all K members and updates the
parameters in place. The paper's diagonal-Hessian method ("a special version of
Newton's algorithm") and a modern one plug in here with the same three methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

OPTIMS = ("sgd",)


@dataclass(frozen=True)
class OptimSpec:
    name: str = "sgd"
    lr: float = 0.03  # the seed's value; the paper publishes none
    lr_by_pass: tuple[float, ...] | None = None  # one lr per pass, the last one repeating

    def lr_at(self, pass_index: int) -> float:
        if self.lr_by_pass:
            return float(self.lr_by_pass[min(pass_index, len(self.lr_by_pass) - 1)])
        return float(self.lr)


class SGD:
    """w <- w - lr * dE/dw after every example."""

    def __init__(self, specs: list[OptimSpec], device: torch.device | str = "cpu"):
        self.specs = list(specs)
        self.lr = torch.zeros(len(self.specs), device=device)
        self.fused = True  # the engine may apply lr * delta outer products directly

    def start_pass(self, pass_index: int) -> list[float]:
        lrs = [spec.lr_at(pass_index) for spec in self.specs]
        self.lr.copy_(torch.tensor(lrs))
        return lrs

    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> None:
        for name, p in params.items():
            g = grads[name]
            p.addcmul_(self.lr.view(-1, *([1] * (g.dim() - 1))), g, value=-1.0)

    def keep(self, index: torch.Tensor) -> None:
        """Drop members: keep only those at `index` (diverged or pruned ones leave)."""
        self.specs = [self.specs[i] for i in index.tolist()]
        self.lr = self.lr[index.to(self.lr.device)].clone()


def make_optimiser(specs: list[OptimSpec], device) -> SGD:
    names = {spec.name for spec in specs}
    if len(names) != 1:
        raise ValueError(f"one population trains with one optimiser; got {sorted(names)}")
    name = names.pop()
    if name == "sgd":
        return SGD(specs, device)
    from zipnet.errors import ConfigError

    raise ConfigError("optim.name", f"{name!r} is not allowed; choose one of {', '.join(OPTIMS)}")
