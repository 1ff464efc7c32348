"""Evaluation after each pass: every member's loss and misses on train and test, and its outputs.

The loss is the MSE "averaged over the patterns and over the output units", or for
cross-entropy members the mean cross-entropy; either way it is computed from the split's own
outputs (the seed's modern.py reported the last training example's loss). Each member is
evaluated on its own dataset. On the kernel both splits are one call, the forward pass with
examples in SIMD lanes; on torch ops, convolutions and batched matrix products per dataset.
"""

from __future__ import annotations

import torch


def evaluate(
    pop, splits: list[tuple[torch.Tensor, torch.Tensor]], member_index: list[int], outputs: tuple[bool, ...]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Per split (x (D, N, 1, 16, 16), labels (D, N)): per member the loss (K,), misses (K,), and the
    (K, N, 10) outputs where asked for."""
    if pop.kernel is not None:
        return pop.kernel.evaluate(splits, member_index, outputs)
    return [_torch_split(pop, x, y, member_index, want) for (x, y), want in zip(splits, outputs)]


def _torch_split(pop, x: torch.Tensor, labels: torch.Tensor, member_index: list[int], want: bool):
    K, N = pop.K, x.shape[1]
    if x.shape[0] == 1:
        y = pop.ops.outputs(x[0])
    else:
        y = torch.empty(K, N, 10, device=pop.device)
        index = torch.tensor(member_index, device=pop.device)
        for d in sorted(set(member_index)):
            rows = (index == d).nonzero().view(-1)
            y[rows] = pop.ops.outputs(x[d], index=rows)
    per_member = labels[torch.tensor(member_index, device=labels.device)]  # (K, N)
    if pop.cross_entropy:
        per_pattern = -torch.log_softmax(y, dim=2).gather(2, per_member.unsqueeze(2))
    else:
        rows = torch.arange(K, device=pop.device).view(K, 1)
        per_pattern = (y - pop.targets[rows, per_member]) ** 2  # (K, N, 10), contiguous like y
    loss = per_pattern.mean(dim=(1, 2))
    misses = (y.argmax(dim=2) != per_member).sum(dim=1)
    return loss, misses, y if want else None
