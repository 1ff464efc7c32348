"""A population's state: K members' parameters stacked on a leading axis, their per-member
constants, their optimiser and their dropout masks. What computes their steps is the
population's backend (backend.py).
"""

from __future__ import annotations

import numpy as np
import torch

from zipnet.engine.members import MSE_C, MUTABLE, Member, mutable_values, mutated
from zipnet.errors import ConfigError
from zipnet.net import PARAM_NAMES, SQUASHES, connection_table, h2_mask, init_params
from zipnet.optim import make_optimiser


class Population:
    """K members' parameters and constants, stacked on a leading axis."""

    def __init__(self, members: list[Member], device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.members = list(members)
        for key, values in (
            ("model.activation", {m.activation == "relu" for m in members}),
            ("model.output", {m.output for m in members}),
            ("loss.name", {m.loss for m in members}),
        ):
            if len(values) > 1:
                raise ConfigError(key, "members of one population must agree on it (runner.population_key splits them)")
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

    @property
    def K(self) -> int:
        return len(self.members)

    # --- per-member state ---------------------------------------------------------------------

    def draw_dropout(self, n: int, pass_index: int | list[int]) -> None:
        """Keep masks on H2's 192 outputs for the pass's n patterns, each member from its own seed and
        its own pass index (one for all, or one per member).

        A member draws the same masks whoever it trains with, so it still equals its single run.
        """
        if not bool((self.dropout > 0).any()):
            self.keep_masks = None
            return
        indices = pass_index if isinstance(pass_index, list) else [pass_index] * self.K
        masks = []
        for m, index in zip(self.members, indices):
            rng = np.random.default_rng([m.init.seed, index, 1989])
            masks.append(torch.from_numpy(rng.random((n, 192), dtype=np.float32) >= m.dropout))
        self.keep_masks = torch.stack(masks).to(self.device)

    def keep(self, index: list[int]) -> None:
        """Continue with only the members at `index`; the others leave the population. The survivors get
        new tensors: torch ops bind to them at their next step."""
        idx = torch.tensor(index, dtype=torch.long, device=self.device)
        self.members = [self.members[i] for i in index]
        self.params = {n: t.index_select(0, idx).contiguous() for n, t in self.params.items()}
        for name in ("mask", "A", "S", "c", "dropout", "targets"):
            setattr(self, name, getattr(self, name).index_select(0, idx).contiguous())
        if self.keep_masks is not None:
            self.keep_masks = self.keep_masks.index_select(0, idx).contiguous()
        self.optim.keep(idx)

    def extend(self, members: list[Member]) -> None:
        """Members join (a freed lane refilled): their own first weights, fresh optimiser state, and
        the constants they would have in a population of their own."""
        fresh = Population(members, self.device)
        for key, mine, theirs in (
            ("model.activation", self.relu, fresh.relu),
            ("model.output", self.linear_out, fresh.linear_out),
            ("loss.name", self.cross_entropy, fresh.cross_entropy),
        ):
            if mine != theirs:
                raise ConfigError(key, "members of one population must agree on it (runner.population_key splits them)")
        self.same_table = self.same_table and fresh.same_table and np.array_equal(fresh.table, self.table)
        self.members += fresh.members
        self.params = {n: torch.cat([t, fresh.params[n]]).contiguous() for n, t in self.params.items()}
        for name in ("mask", "A", "S", "c", "dropout", "targets"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(fresh, name)]).contiguous())
        self.keep_masks = None  # drawn again for the next pass
        self.optim.extend(fresh.optim)

    def copy_member(self, target: int, source: int, member: Member) -> None:
        """PBT's exploit: member `target` takes member `source`'s parameters and optimiser state, bit
        for bit, and goes on with `member`'s settings, which may differ from its own only in what
        MUTABLE allows (its seeds, data stream, targets and shape stay its own)."""
        before = self.members[target]
        if mutated(before, mutable_values(member)) != member:
            raise ValueError(f"member {target}: a copy may change only {', '.join(MUTABLE[before.optim.name])}")
        for t in self.params.values():
            t[target] = t[source]
        self.optim.copy_member(target, source)
        self.members[target] = member
        self.optim.respec(target, member.optim)

    def finite(self) -> torch.Tensor:
        """(K,) bool: whether all of a member's parameters are finite."""
        ok = torch.ones(self.K, dtype=torch.bool, device=self.device)
        for t in self.params.values():
            ok &= torch.isfinite(t.view(self.K, -1)).all(dim=1)
        return ok

    def member_params(self, k: int) -> dict[str, torch.Tensor]:
        return {n: t[k].detach().cpu().clone() for n, t in self.params.items()}
