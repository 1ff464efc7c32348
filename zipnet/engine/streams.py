"""Each member's own example stream: the distinct datasets of a population and who reads which.

Members that differ only in which digits they see, or in which order (data.seed), train in
one lockstep population: at step i every member takes example i of its own dataset. All
datasets have the same numbers of training and test digits, so every member takes the same
number of steps per pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Streams:
    """The population's distinct datasets (each with train_x/train_y/test_x/test_y) and, per member, which it reads."""

    datasets: list
    index: list[int]  # per member: its dataset

    @classmethod
    def of(cls, digits, members: int) -> Streams:
        """One dataset shared by all members, or a list with one per member (equal datasets are merged)."""
        if not isinstance(digits, (list, tuple)):
            return cls([digits], [0] * members)
        if len(digits) != members:
            raise ValueError(f"train: {len(digits)} datasets for {members} members; give one, or one per member")
        streams = cls([], [])
        streams.add(list(digits))
        return streams

    def add(self, digits: list) -> None:
        """Members join, one dataset each (one already here is read where it is)."""
        seen = {getattr(d, "fingerprint", None) or id(d): k for k, d in enumerate(self.datasets)}
        for d in digits:
            key = getattr(d, "fingerprint", None) or id(d)
            if key not in seen:
                seen[key] = len(self.datasets)
                self.datasets.append(d)
            self.index.append(seen[key])
        sizes = {(len(d.train_y), len(d.test_y)) for d in self.datasets}
        if len(sizes) > 1:
            raise ValueError(
                f"train: members of one population need equal numbers of train and test digits; got {sorted(sizes)}"
            )

    def keep(self, positions: list[int]) -> None:
        """Only the members at `positions` go on (datasets no one reads any more stay; they cost no steps)."""
        self.index = [self.index[k] for k in positions]

    def split(self, name: str, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, N, 1, 16, 16) digits and (D, N) labels of one split, every dataset stacked."""
        xs = torch.stack([getattr(d, f"{name}_x") for d in self.datasets]).to(device)
        ys = torch.stack([getattr(d, f"{name}_y") for d in self.datasets]).to(device)
        return xs, ys


def pass_digits(x: torch.Tensor, shift: int, shift_seed: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """The training digits of each (dataset, pass index) pair, stacked (P, N, 1, 16, 16): the dataset of
    x (D, N, 1, 16, 16) moved by its pass's seeded shifts (every dataset by the same ones at one pass).
    Members at different passes read different pairs; without a shift the pass does not matter."""
    if not shift:
        return torch.stack([x[d] for d, _ in pairs])
    return torch.stack([shifted(x[d], shift, np.random.default_rng([shift_seed, p])) for d, p in pairs])


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
