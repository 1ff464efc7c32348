"""The 1989 net as a plain `torch.nn.Module`, for using a trained run outside zipnet's trainer.

    from zipnet.model import ZipNet
    net = ZipNet.from_params(torch.load("weights.pt", weights_only=True), table="block")
    outputs = net(images)                  # (N, 10): the ten output units
    digits = net(images, output="digit")   # (N,): the predicted digit, 0..9

`images` are float32 16x16 digits with grey levels in [-1, 1] ("the gray levels of each
pixel [are] scaled to [-1, 1]"), shaped (N, 16, 16), (N, 1, 16, 16) or (N, 256).

The parameters keep the engine's layout (zipnet/net.py), so a run's weights.pt is this
module's state_dict, and forward computes what the engine's evaluation computes for a
population of one, operation for operation: a logged model classifies the test digits
exactly as its run did. Every MLflow run logs one (`mlflow.pyfunc.load_model(...)`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zipnet.net import ACTIVATIONS, OUTPUTS, PARAM_NAMES, SHAPES, SQUASHES, connection_table, h2_mask

PREDICTIONS = ("outputs", "digit")  # what forward returns: the ten output units, or the arg-max digit


class ZipNet(nn.Module):
    """H1: 12 maps 8x8 (5x5 windows, stride 2); H2: 12 maps 4x4, each reading 8 of the 12 H1
    maps through `table`; H3: 30 units; 10 outputs. "Units do not share biases." Inputs beyond
    the edge read "a constant background of -1"."""

    def __init__(
        self, table: np.ndarray | str = "block", table_seed: int = 0, activation: str = "tanh", output: str = "squash"
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not allowed; choose one of {', '.join(ACTIVATIONS)}")
        if output not in OUTPUTS:
            raise ValueError(f"output {output!r} is not allowed; choose one of {', '.join(OUTPUTS)}")
        table = connection_table(table, table_seed) if isinstance(table, str) else np.asarray(table, dtype=bool)
        self.activation, self.output = activation, output
        self.A, self.S = SQUASHES.get(activation, (1.0, 1.0))  # f(a) = A tanh(S a)
        # not in the state_dict, which is exactly a run's weights.pt
        self.register_buffer("table", torch.from_numpy(table.copy()), persistent=False)
        self.register_buffer("mask", h2_mask(table), persistent=False)  # (12, 300): 1 where an H1 map feeds an H2 map
        for name in PARAM_NAMES:
            self.register_parameter(name, nn.Parameter(torch.zeros(SHAPES[name])))

    @classmethod
    def from_params(cls, params: dict[str, torch.Tensor], **settings) -> ZipNet:
        """A net holding `params` (engine layout, as in weights.pt); `settings` as for ZipNet()."""
        net = cls(**settings)
        with torch.no_grad():
            for name in PARAM_NAMES:
                getattr(net, name).copy_(params[name].reshape(SHAPES[name]))
        return net

    @classmethod
    def from_member(cls, params: dict[str, torch.Tensor], member) -> ZipNet:
        """The net of an engine member (zipnet.engine.Member) with its trained `params`."""
        return cls.from_params(
            params, table=member.table, table_seed=member.table_seed, activation=member.activation, output=member.output
        )

    def f(self, a: torch.Tensor) -> torch.Tensor:
        """The squashing function, with the engine's arithmetic (out of place, so autograd works)."""
        if self.activation == "relu":
            return a.clamp(min=0.0)
        if self.A == 1.0 and self.S == 1.0:
            return a.tanh()
        return (a * self.S).tanh() * self.A

    def forward(self, x: torch.Tensor, output: str = "outputs") -> torch.Tensor:
        """(N, 10) outputs, or with output="digit" the (N,) predicted digits."""
        if output not in PREDICTIONS:
            raise ValueError(f"output {output!r} is not allowed; choose one of {', '.join(PREDICTIONS)}")
        x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 16, 16)
        n = x.shape[0]
        x1 = F.conv2d(F.pad(x, (2, 2, 2, 2), "constant", -1.0), self.H1w.reshape(12, 1, 5, 5), stride=2)
        x1 = self.f(x1 + self.H1b.reshape(1, 12, 8, 8))
        w2 = (self.H2w * self.mask).reshape(12, 12, 5, 5)
        x2 = F.conv2d(F.pad(x1, (2, 2, 2, 2), "constant", -1.0), w2, stride=2)
        x2 = self.f(x2 + self.H2b.reshape(1, 12, 4, 4)).reshape(1, n, 192)
        # batched matrix products with a population axis of one, as the engine evaluates
        x3 = self.f(torch.baddbmm(self.H3b.reshape(1, 1, 30), x2, self.H3w.t().unsqueeze(0)))
        y = torch.baddbmm(self.outb.reshape(1, 1, 10), x3, self.outw.t().unsqueeze(0))
        y = (y if self.output == "linear" else self.f(y)).reshape(n, 10)
        return y.argmax(dim=1) if output == "digit" else y
