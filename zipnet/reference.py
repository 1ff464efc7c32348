"""The reference implementation: the seed's algorithm as a plain nn.Module with an autograd loop.

Kept only to check the population engine against (tests) and to time it against
(benchmarks). It trains one model, one example at a time, in the data's constant order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zipnet.net import SQUASHES, h2_mask

MSE_SCALE = {"mean": 0.1, "sum": 1.0, "half_sum": 0.5}  # E = scale * sum_k (y_k - t_k)^2


class Net1989(nn.Module):
    def __init__(
        self, params: dict[str, torch.Tensor], table: np.ndarray, activation: str = "tanh", output: str = "squash"
    ):
        super().__init__()
        self.relu = activation == "relu"
        self.A, self.S = SQUASHES.get(activation, (1.0, 1.0))
        self.linear_out = output == "linear"
        self.keep = None  # optional (B, 192) dropout multipliers on H2's output (0 or 1/(1-p))
        self.register_buffer("mask", h2_mask(table).reshape(12, 12, 5, 5))
        self.H1w = nn.Parameter(params["H1w"].reshape(12, 1, 5, 5).clone())
        self.H1b = nn.Parameter(params["H1b"].reshape(12, 8, 8).clone())
        self.H2w = nn.Parameter(params["H2w"].reshape(12, 12, 5, 5).clone())
        self.H2b = nn.Parameter(params["H2b"].reshape(12, 4, 4).clone())
        self.H3w = nn.Parameter(params["H3w"].t().clone())  # (192, 30)
        self.H3b = nn.Parameter(params["H3b"].clone())
        self.outw = nn.Parameter(params["outw"].t().clone())  # (30, 10)
        self.outb = nn.Parameter(params["outb"].clone())

    def f(self, a):
        return torch.relu(a) if self.relu else self.A * torch.tanh(self.S * a)

    def forward(self, x):  # x: (B, 1, 16, 16)
        x = F.pad(x, (2, 2, 2, 2), "constant", -1.0)  # "constant padding of -1"
        x = self.f(F.conv2d(x, self.H1w, stride=2) + self.H1b)
        x = F.pad(x, (2, 2, 2, 2), "constant", -1.0)
        x = self.f(F.conv2d(x, self.H2w * self.mask, stride=2) + self.H2b)
        x = x.flatten(start_dim=1)
        if self.keep is not None:
            x = x * self.keep
        x = self.f(x @ self.H3w + self.H3b)
        y = x @ self.outw + self.outb
        return y if self.linear_out else self.f(y)

    def engine_params(self) -> dict[str, torch.Tensor]:
        """The parameters in the engine's layout (no K axis)."""
        return {
            "H1w": self.H1w.detach().reshape(12, 25),
            "H1b": self.H1b.detach().reshape(12, 64),
            "H2w": (self.H2w * self.mask).detach().reshape(12, 300),
            "H2b": self.H2b.detach().reshape(12, 16),
            "H3w": self.H3w.detach().t(),
            "H3b": self.H3b.detach(),
            "outw": self.outw.detach().t(),
            "outb": self.outb.detach(),
        }

    def engine_grads(self) -> dict[str, torch.Tensor]:
        """The last backward's gradients in the engine's layout."""
        return {
            "H1w": self.H1w.grad.reshape(12, 25),
            "H1b": self.H1b.grad.reshape(12, 64),
            "H2w": self.H2w.grad.reshape(12, 300),
            "H2b": self.H2b.grad.reshape(12, 16),
            "H3w": self.H3w.grad.t(),
            "H3b": self.H3b.grad,
            "outw": self.outw.grad.t(),
            "outb": self.outb.grad,
        }


def example_loss(y: torch.Tensor, t: torch.Tensor, mse: str) -> torch.Tensor:
    return MSE_SCALE[mse] * ((y - t) ** 2).sum()


def example_cross_entropy(y: torch.Tensor, label: int) -> torch.Tensor:
    return -torch.log_softmax(y, dim=0)[label]


def train_pass(model: Net1989, x: torch.Tensor, targets: torch.Tensor, lr: float, mse: str = "mean") -> None:
    """One pass of per-example SGD with autograd, as the seed trains."""
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        loss = example_loss(model(x[i : i + 1])[0], targets[i], mse)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(lr * p.grad)
