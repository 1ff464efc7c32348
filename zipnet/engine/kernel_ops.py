"""The kernel backend: a population's passes, curvature and evaluation on the compiled CPU kernel.

The engine keeps its parameters in its own (K, ...) layout; each call packs them (and the
optimiser's state) into the kernel's layout and unpacks the result. Per pass, the cheaper of
the kernel's two training paths runs: members in SIMD lanes (blocks of 8 or 16), or each
member on its own, vectorised across its units (the paper's SGD net only). Both compute the
same numbers, so the choice changes the time and nothing else.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from zipnet.engine import kernel

# Seconds per pattern of one member alone ("one") or of one block of lanes, on 1 thread, measured
# with the AVX-512 and the AVX2 build on a Xeon (Sapphire Rapids); only their ratios matter. An
# AVX2 build runs blocks of 16 (two registers a lane vector) five times slower: never chosen.
STEP_SECONDS = {512: {"one": 7.0e-6, 8: 34e-6, 16: 58e-6}, 256: {"one": 10e-6, 8: 51e-6}}


def choose(K: int, threads: int, one_fits: bool, width: int) -> int:
    """The training path for K members on `threads` threads of a `width`-bit build: 0 (each member on
    its own) or a block width."""
    seconds = STEP_SECONDS[512 if width >= 512 else 256]
    costs = {blk: math.ceil(math.ceil(K / blk) / threads) * seconds[blk] for blk in kernel.LANES if blk in seconds}
    if one_fits:
        costs[0] = math.ceil(K / threads) * seconds["one"]
    return min(costs, key=lambda path: (costs[path], path))


class KernelOps:
    """The kernel backend of one Population: drives zipnet.engine.kernel (the CPU only, one connection table)."""

    name = "c"  # what a RunResult records

    def __init__(self, pop, found: kernel.Kernel, threads: int = 0):
        self.pop = pop
        self.k = found
        self.build = found.build
        self.width = kernel.vector_width(found)
        self.threads = threads or os.cpu_count() or 1  # the results do not depend on it
        self._eval_inputs: dict[int, tuple] = {}  # id of a split's digits -> (digits, padded inputs, int32 labels)
        self._grids: tuple | None = None  # (training inputs, the same as 5x5 grids) for the one-member path

    def setup(self) -> kernel.Setup:
        pop, optim = self.pop, self.pop.optim
        name = pop.members[0].optim.name
        return kernel.Setup(
            relu=int(pop.relu),
            linear_out=int(pop.linear_out),
            cross_entropy=int(pop.cross_entropy),
            optim=kernel.OPTIMS[name],
            running=int(getattr(optim, "curvature", None) == "running"),
        )

    def consts(self) -> torch.Tensor:
        """(K, N_CONSTS) per-member constants, in kernel.CONSTS order."""
        pop = self.pop
        specs = [m.optim for m in pop.members]
        columns = {
            "A": pop.A,
            "S": pop.S,
            "c": pop.c,
            "lr": pop.optim.lr,
            "target_negative": pop.targets[:, 0, 1],
            "target_positive": pop.targets[:, 0, 0],
            "dropout": pop.dropout,
            "step": getattr(pop.optim, "t", torch.zeros(pop.K)),  # adamw: per member, its steps so far
        }
        for name in ("mu", "hessian_decay", "beta1", "beta2", "eps", "weight_decay"):
            columns[name] = torch.tensor([float(getattr(s, name)) for s in specs])
        return torch.stack([columns[name].float().cpu() for name in kernel.CONSTS], dim=1).contiguous()

    def one_fits(self) -> bool:
        """Whether the one-member path computes this population: the paper's net with SGD and the MSE."""
        pop = self.pop
        return (
            pop.members[0].optim.name == "sgd"
            and not pop.relu
            and not pop.linear_out
            and not pop.cross_entropy
            and pop.keep_masks is None
        )

    # --- training ---------------------------------------------------------------------------

    def _state(self) -> list[torch.Tensor]:
        """The optimiser's state as (K, N_PARAMS) rows, in kernel.c's order for its rule."""
        optim, K = self.pop.optim, self.pop.K
        name = self.pop.members[0].optim.name
        if name == "sdlm":
            rows = [kernel.flat(optim.step_size)]
            return rows + [kernel.flat(optim.h)] if optim.curvature == "running" else rows
        if name == "adamw":
            if not optim.m:
                zeros = torch.zeros(K, kernel.N_PARAMS)
                optim.m, optim.v = {"flat": zeros}, {"flat": zeros.clone()}
            return [optim.m["flat"].contiguous(), optim.v["flat"].contiguous()]
        return []

    def _restore(self, rows: list[torch.Tensor], steps: int) -> None:
        optim = self.pop.optim
        name = self.pop.members[0].optim.name
        if name == "sdlm" and optim.curvature == "running":
            h = {n: torch.empty_like(t) for n, t in optim.h.items()}
            kernel.unflat(rows[1], h)
            optim.set_curvature(h)
        elif name == "adamw":
            optim.m["flat"], optim.v["flat"] = rows[0], rows[1]
            optim.t += steps

    def prepare(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A pass's digits x (D, N, 1, 16, 16) as (D, N, 20, 20) padded inputs, with the (D, N) labels as int32."""
        return torch.stack([kernel.padded_inputs(xd) for xd in x]), labels.to(torch.int32).contiguous()

    def train_pass(self, prepared: tuple[torch.Tensor, torch.Tensor], member_index: list[int]) -> None:
        """One pass in place over prepare()'s inputs; member_index (K,) into D."""
        inputs, labels = prepared
        pop = self.pop
        path = choose(pop.K, self.threads, self.one_fits(), self.width)
        rows = kernel.flat(pop.params)
        consts = self.consts()
        if path == 0:
            if self._grids is None or self._grids[0] is not inputs:
                self._grids = (inputs, kernel.grids(inputs))
            dataset = torch.tensor(member_index, dtype=torch.int32)
            kernel.train_one(self.k, rows, consts, pop.table, inputs, self._grids[1], labels, dataset, self.threads)
            kernel.unflat(rows, pop.params)
            return
        blk = path
        state = self._state()
        packed = kernel.blocks(rows, blk)
        nblocks = packed.shape[0]
        packed_state = None
        if state:  # (nblocks, nstate, N_PARAMS, blk)
            packed_state = torch.stack([kernel.blocks(r, blk) for r in state], dim=1).contiguous()
        lanes = member_index + [member_index[0]] * (nblocks * blk - pop.K)  # empty lanes read member 0's stream
        dataset = torch.tensor(lanes, dtype=torch.int32)
        keep = None
        if pop.keep_masks is not None:
            bits = np.packbits(pop.keep_masks.cpu().numpy(), axis=2, bitorder="little")  # (K, N, 24)
            keep = [np.ascontiguousarray(bits[min(b, pop.K - 1)]) for b in range(nblocks * blk)]
        kernel.train_lanes(
            self.k,
            blk,
            packed,
            kernel.blocks(consts, blk, kernel.spare_consts()),
            packed_state,
            self.setup(),
            pop.table,
            inputs,
            labels,
            dataset,
            keep,
            self.threads,
        )
        kernel.unflat(kernel.unblocks(packed, pop.K), pop.params)
        if state:
            self._restore(
                [kernel.unblocks(packed_state[:, s], pop.K).contiguous() for s in range(len(state))], inputs.shape[1]
            )

    def sample_curvature(
        self,
        prepared: tuple[torch.Tensor, torch.Tensor],
        member_index: list[int],
        sample: list[int],
        members: list[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """SDLM's h: per member (or per member at `members`), the mean over the sample's patterns of
        its own dataset (no dropout)."""
        inputs, labels = prepared
        pop = self.pop
        places = list(range(pop.K)) if members is None else members
        K = len(places)
        rows, consts = kernel.flat(pop.params), self.consts()
        if members is not None:
            rows, consts = rows[places].contiguous(), consts[places].contiguous()
        blk = kernel.LANES[0] if K <= kernel.LANES[0] else choose(K, self.threads, False, self.width)
        packed = kernel.blocks(rows, blk)
        nblocks = packed.shape[0]
        lanes = [member_index[k] for k in places]
        dataset = torch.tensor(lanes + [lanes[0]] * (nblocks * blk - K), dtype=torch.int32)
        total = kernel.curvature_sum(
            self.k,
            blk,
            packed,
            kernel.blocks(consts, blk, kernel.spare_consts()),
            self.setup(),
            pop.table,
            inputs,
            labels,
            dataset,
            sample,
            self.threads,
        )
        out = {n: torch.empty((K, *t.shape[1:]), dtype=t.dtype) for n, t in pop.params.items()}
        kernel.unflat(kernel.unblocks(total, K).contiguous(), out)
        return {name: t.div_(len(sample)) for name, t in out.items()}

    # --- evaluation -------------------------------------------------------------------------

    def evaluate(
        self, splits: list[tuple[torch.Tensor, torch.Tensor]], member_index: list[int], outputs: tuple[bool, ...]
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Every member on its own dataset, all splits in one kernel call; per split (loss, misses, outputs)."""
        pop = self.pop
        laid_out = []
        for (x, y), want in zip(splits, outputs):
            key = id(x)
            if key not in self._eval_inputs or self._eval_inputs[key][0] is not x:  # laid out once per split
                if len(self._eval_inputs) >= len(splits):  # the datasets changed (members joined): the old go
                    self._eval_inputs = {}
                inputs = kernel.tiles(self.k, torch.stack([kernel.padded_inputs(xd) for xd in x]))
                self._eval_inputs[key] = (x, inputs, y.to(torch.int32).contiguous())
            _, inputs, labels = self._eval_inputs[key]
            laid_out.append((inputs, labels, want))
        dataset = torch.tensor(member_index, dtype=torch.int32)
        found = kernel.evaluate(
            self.k, kernel.flat(pop.params), self.consts(), self.setup(), pop.table, dataset, laid_out, self.threads
        )
        out = []
        for (_, y), (loss_sum, misses, y_out) in zip(splits, found):
            n = y.shape[1]
            per = n if pop.cross_entropy else 10 * n  # the MSE is "averaged over the patterns and the output units"
            out.append((torch.from_numpy(loss_sum / per), torch.from_numpy(misses.astype(np.int64)), y_out))
        return out
