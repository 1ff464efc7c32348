"""Learnable stand-in digits for engine tests (fast, no data files), and a backend's pass and
evaluation over one such set of digits, shared by every member."""

from dataclasses import dataclass

import torch


def digits(n: int, seed: int = 0):
    """Learnable stand-in digits: a fixed random prototype per class plus noise, in [-1, 1]."""
    prototypes = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(99)) * 2 - 1
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (prototypes[y] + 0.8 * torch.randn(n, 1, 16, 16, generator=g)).clamp(-1, 1)
    return x, y


def close(got, want, tol=1e-6):
    """Equal to ~1e-6 of the tensor's scale (float32 sums in another order differ in the last bits)."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=tol * max(1.0, float(want.abs().max())))


@dataclass
class Digits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def data(n_train=1000, n_test=200, seed=3):
    """Stand-in train and test digits; another seed draws other digits (another data.seed)."""
    x, y = digits(n_train + n_test, seed=seed)
    return Digits(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def one_pass(ops, x, y) -> None:
    """One training pass of every member of the backend's population over the same (N, 1, 16, 16) digits."""
    pop = ops.pop
    ops.train_pass(ops.prepare(x.unsqueeze(0).to(pop.device), y.unsqueeze(0).to(pop.device)), [0] * pop.K)


def evaluated(ops, x, y):
    """Per member on the same digits: the loss (K,), misses (K,) and (K, N, 10) outputs."""
    ((loss, misses, out),) = ops.evaluate([(x.unsqueeze(0), y.unsqueeze(0))], [0] * ops.pop.K, outputs=(True,))
    return loss, misses, out
