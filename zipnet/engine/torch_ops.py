"""The torch backend: a population's per-pattern step as batched torch ops with a leading K axis.

Every member takes its pattern at the same step, so the K forward and backward passes are
one batched computation. Backprop is written out by hand (no autograd graph); tests check it
against the autograd reference in reference.py. A pattern is either shared by all members
((25, 64) receptive fields and an int label) or one per member ((K, 25, 64) and a (K,) label
tensor), when members read their own datasets. Runs on any device, with any settings.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from zipnet.net import SQUASHES


def h2_field_index() -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices into the padded (12, 12, 12) H1 maps.

    Returns the H2 receptive fields in (12 maps x 5 x 5, 4 x 4 positions) order, and the
    768 real H1 units (the rest is the -1 border).
    """
    c, ky, kx, oy, ox = np.meshgrid(
        np.arange(12), np.arange(5), np.arange(5), np.arange(4), np.arange(4), indexing="ij"
    )
    fields = c * 144 + (2 * oy + ky) * 12 + (2 * ox + kx)
    c, i, j = np.meshgrid(np.arange(12), np.arange(8), np.arange(8), indexing="ij")
    units = c * 144 + (2 + i) * 12 + (2 + j)
    return torch.from_numpy(fields.reshape(-1)), torch.from_numpy(units.reshape(-1))


def input_patches(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 16, 16) digits -> (N, 25, 64) H1 receptive fields, edges reading -1.

    "The input is surrounded by a constant background of -1": pad by 2, 5x5 windows, stride 2.
    """
    padded = F.pad(x, (2, 2, 2, 2), "constant", -1.0)
    return F.unfold(padded, kernel_size=5, stride=2)


class TorchOps:
    """The torch backend of one Population: its batched step, curvature and evaluation."""

    name = "torch"  # what a RunResult records
    build = ""  # no compiled kernel

    def __init__(self, pop, fused: bool = True):
        self.pop = pop
        self.fused = fused  # False: always through optim.step with explicit gradients (tests check both)
        self._h2_fields, self._h1_units = (t.to(pop.device) for t in h2_field_index())
        self._bind()

    def _bind(self) -> None:
        """What the step reads of the population's members, made from them; made again when they
        change (Population.keep gives the survivors new parameter tensors)."""
        pop = self.pop
        self._bound = pop.params
        p, K, dev = pop.params, pop.K, pop.device
        self.SA, self.S_over_A = pop.S * pop.A, pop.S / pop.A
        self.cSA, self.cS_over_A = pop.c * self.SA, pop.c * self.S_over_A
        self._same_act = len({m.activation for m in pop.members}) == 1
        self._masked = not all(m.table == "full" for m in pop.members)
        self._keep_scale = 1.0 / (1.0 - pop.dropout)  # inverted dropout: E[x] unchanged
        pad = torch.full((K, 12, 12, 12), -1.0, device=dev)  # H1 maps with the -1 border
        self.views = {
            "pad_flat": pad.view(K, 1728),
            "pad_inner": pad[:, :, 2:10, 2:10],
            "H3b": p["H3b"].unsqueeze(2),
            "outb": p["outb"].unsqueeze(2),
            "outw_t": p["outw"].transpose(1, 2),
            "H3w_t": p["H3w"].transpose(1, 2),
            "H2w_t": p["H2w"].transpose(1, 2),
            "targets": pop.targets.unsqueeze(3),  # (K, label, 10, 1)
        }
        self._rows = torch.arange(K, device=dev)

    def _follow(self) -> None:
        """Bind again if the population's members changed since (every step and evaluation starts here)."""
        if self._bound is not self.pop.params:
            self._bind()

    @property
    def K(self) -> int:
        return self.pop.K

    def _f(
        self,
        a: torch.Tensor,
        shape: tuple[int, ...],
        out: bool = False,
        A: torch.Tensor | None = None,
        S: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """f(a), in place on the pre-activation `a`: A tanh(S a), or relu; identity for a linear output.
        `A` and `S` are the members' squash constants (all the population's by default)."""
        pop = self.pop
        if out and pop.linear_out:
            return a
        if pop.relu:
            return a.clamp_(min=0.0)
        if self._same_act:
            A0, S0 = SQUASHES[pop.members[0].activation]
            return a.tanh_() if S0 == 1.0 and A0 == 1.0 else a.mul_(S0).tanh_().mul_(A0)
        A, S = (pop.A if A is None else A), (pop.S if S is None else S)
        return a.mul_(S.view(shape)).tanh_().mul_(A.view(shape))

    def _fprime(self, x: torch.Tensor, shape: tuple[int, ...], out: bool = False, c: bool = False) -> torch.Tensor:
        """f'(a) from x = f(a): (S/A)(A^2 - x^2) = S A - (S/A) x^2; 1 [x > 0] for relu; 1 if linear.

        `c`: times the MSE's c (the squashed output layer's delta in one product)."""
        pop = self.pop
        if out and pop.linear_out:
            return torch.ones_like(x)
        if pop.relu:
            return (x > 0).to(x.dtype)
        sa, s_over_a = (self.cSA, self.cS_over_A) if c else (self.SA, self.S_over_A)
        return torch.addcmul(sa.view(shape), x * x, s_over_a.view(shape), value=-1.0)

    def _patches(self, patches: torch.Tensor) -> torch.Tensor:
        return patches.expand(self.K, 25, 64) if patches.dim() == 2 else patches

    def forward_one(self, patches: torch.Tensor, i: int | None = None):
        """One pattern through every member; `i` (its place in the pass) picks the dropout masks."""
        self._follow()
        pop, v, K = self.pop, self.views, self.K
        p = pop.params
        x1 = self._f(torch.baddbmm(p["H1b"], p["H1w"], self._patches(patches)), (K, 1, 1))  # (K, 12, 64)
        v["pad_inner"].copy_(x1.view(K, 12, 8, 8))
        p2 = v["pad_flat"].index_select(1, self._h2_fields).view(K, 300, 16)  # H2 receptive fields
        x2 = self._f(torch.baddbmm(p["H2b"], p["H2w"], p2), (K, 1, 1))  # (K, 12, 16)
        keep = None
        if pop.keep_masks is not None and i is not None:
            keep = pop.keep_masks[:, i].to(x2.dtype).mul_(self._keep_scale.view(K, 1)).view(K, 12, 16)
        h3_in = x2 if keep is None else x2 * keep
        x3 = self._f(torch.baddbmm(v["H3b"], p["H3w"], h3_in.reshape(K, 192, 1)), (K, 1, 1))  # (K, 30, 1)
        y = self._f(torch.baddbmm(v["outb"], p["outw"], x3), (K, 1, 1), out=True)  # (K, 10, 1)
        return x1, p2, x2, keep, h3_in, x3, y

    def _output_delta(self, y: torch.Tensor, label) -> torch.Tensor:
        """dE/da at the outputs: E'(y) f'(a), with E = (c/2) sum_k (d_k - y_k)^2 or softmax cross-entropy."""
        pop, K = self.pop, self.K
        if pop.cross_entropy:
            g = torch.softmax(y, dim=1)
            if isinstance(label, int):
                g[:, label] -= 1.0  # dE/dy = softmax(y) - onehot
            else:
                g[self._rows, label] -= 1.0
            return g.mul_(self._fprime(y, (K, 1, 1), out=True))
        targets = self.views["targets"]
        d = y - (targets[:, label] if isinstance(label, int) else targets[self._rows, label])
        if pop.linear_out:
            return d.mul_(pop.c.view(K, 1, 1))
        return d.mul_(self._fprime(y, (K, 1, 1), out=True, c=True))  # c (y - d) f'(a)

    def _deltas(self, acts, label):
        """dE/da per layer, by ordinary backprop."""
        v, K = self.views, self.K
        x1, p2, x2, keep, h3_in, x3, y = acts
        d4 = self._output_delta(y, label)  # (K, 10, 1)
        d3 = torch.bmm(v["outw_t"], d4).mul_(self._fprime(x3, (K, 1, 1)))  # (K, 30, 1)
        d2 = torch.bmm(v["H3w_t"], d3).view(K, 12, 16)
        if keep is not None:
            d2.mul_(keep)
        d2.mul_(self._fprime(x2, (K, 1, 1)))
        d1 = self._to_h1(torch.bmm(v["H2w_t"], d2)).mul_(self._fprime(x1, (K, 1, 1)))
        return d1, d2, d3, d4

    def _to_h1(self, field_values: torch.Tensor) -> torch.Tensor:
        """Sum (K, 300, 16) receptive-field values back onto the (K, 12, 64) H1 units (border dropped)."""
        K = self.K
        out = torch.zeros(K, 1728, device=field_values.device)
        out.index_add_(1, self._h2_fields, field_values.reshape(K, -1))
        return out.index_select(1, self._h1_units).view(K, 12, 64)

    def gradients(self, patches: torch.Tensor, label, i: int | None = None, curvature: bool = False):
        """dE/dw for every member at one pattern (the explicit path: SDLM, AdamW, and tests)."""
        K = self.K
        acts = self.forward_one(patches, i)
        x1, p2, x2, keep, h3_in, x3, y = acts
        d1, d2, d3, d4 = self._deltas(acts, label)
        grads = {
            "H1w": torch.matmul(d1, self._patches(patches).transpose(1, 2)),
            "H1b": d1,
            "H2w": torch.bmm(d2, p2.transpose(1, 2)).mul_(self.pop.mask),
            "H2b": d2,
            "H3w": torch.bmm(d3, h3_in.view(K, 1, 192)),
            "H3b": d3.view(K, 30),
            "outw": torch.bmm(d4, x3.view(K, 1, 30)),
            "outb": d4.view(K, 10),
        }
        return (grads, self._curvature(acts, patches)) if curvature else grads

    def _curvature(self, acts, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """The SDLM second-derivative pass (LeCun et al. 1998, appendix C): Gauss-Newton, so h >= 0.

        s = d2E/da2 per unit: at an output s_k = E''(y_k) f'(a_k)^2, with E'' = c for the
        MSE and softmax's p (1 - p) for cross-entropy; at a hidden unit s_j = f'(a_j)^2
        sum_i w_ij^2 s_i, "backprop with the weights and f' squared". A connection's h is
        s_i x_j^2, summed over every position that shares the weight; a bias's h is s_i.
        """
        pop, v, K = self.pop, self.views, self.K
        x1, p2, x2, keep, h3_in, x3, y = acts
        if pop.cross_entropy:
            prob = torch.softmax(y, dim=1)
            curv = prob * (1 - prob)
        else:
            curv = pop.c.view(K, 1, 1).expand_as(y)
        s4 = curv * self._fprime(y, (K, 1, 1), out=True).square()  # (K, 10, 1)
        s3 = torch.bmm(v["outw_t"].square(), s4).mul_(self._fprime(x3, (K, 1, 1)).square())  # (K, 30, 1)
        s2 = torch.bmm(v["H3w_t"].square(), s3).view(K, 12, 16)
        if keep is not None:
            s2.mul_(keep.square())
        s2.mul_(self._fprime(x2, (K, 1, 1)).square())
        s1 = self._to_h1(torch.bmm(v["H2w_t"].square(), s2)).mul_(self._fprime(x1, (K, 1, 1)).square())
        return {
            "H1w": torch.matmul(s1, self._patches(patches).square().transpose(1, 2)),  # over H1's 64 positions
            "H1b": s1,
            "H2w": torch.bmm(s2, p2.square().transpose(1, 2)).mul_(pop.mask),  # over H2's 16 positions
            "H2b": s2,
            "H3w": torch.bmm(s3, h3_in.square().view(K, 1, 192)),
            "H3b": s3.view(K, 30),
            "outw": torch.bmm(s4, x3.square().view(K, 1, 30)),
            "outb": s4.view(K, 10),
        }

    def curvature(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """h for one pattern, all members (no dropout: h is estimated on the plain net).
        Gauss-Newton h does not depend on the label: E'' is c, or p (1 - p)."""
        return self._curvature(self.forward_one(patches), patches)

    def estimate_curvature(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mean h over the given patterns ("pass" mode: before each pass, LeNet-5's ~500).
        patches: (S, 25, 64) shared, or (S, K, 25, 64) one per member."""
        total = {name: torch.zeros_like(t) for name, t in self.pop.params.items()}
        for patch in patches:
            for name, h in self.curvature(patch).items():
                total[name].add_(h)
        return {name: t.div_(len(patches)) for name, t in total.items()}

    def step(self, patches: torch.Tensor, label, i: int | None = None) -> None:
        """One per-pattern update of every member (`i`: the pattern's place in the pass)."""
        pop = self.pop
        if not (self.fused and pop.optim.fused):
            if pop.optim.curvature == "running":
                grads, h = self.gradients(patches, label, i, curvature=True)
                pop.optim.observe(h)
            else:
                grads = self.gradients(patches, label, i)
            pop.optim.step(pop.params, grads)
            return
        # SGD: w <- w - lr dE/dw, with lr folded into the deltas and the outer products fused into the update
        acts = self.forward_one(patches, i)
        p, v, K = pop.params, self.views, self.K
        x1, p2, x2, keep, h3_in, x3, y = acts
        lr = pop.optim.lr.view(K, 1, 1)
        d1, d2, d3, d4 = (d.mul_(lr) for d in self._deltas(acts, label))
        p["H1w"].baddbmm_(d1, self._patches(patches).transpose(1, 2), alpha=-1.0)
        p["H1b"].sub_(d1)
        p["H2w"].baddbmm_(d2, p2.transpose(1, 2), alpha=-1.0)
        if self._masked:
            p["H2w"].mul_(pop.mask)
        p["H2b"].sub_(d2)
        p["H3w"].baddbmm_(d3, h3_in.view(K, 1, 192), alpha=-1.0)
        v["H3b"].sub_(d3)
        p["outw"].baddbmm_(d4, x3.view(K, 1, 30), alpha=-1.0)
        v["outb"].sub_(d4)

    # --- the backend's contract (backend.py) --------------------------------------------------

    def prepare(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A pass's digits x (D, N, 1, 16, 16) as (D, N, 25, 64) receptive fields, with the (D, N) labels."""
        return torch.stack([input_patches(xd) for xd in x]), labels

    def train_pass(self, prepared: tuple[torch.Tensor, torch.Tensor], member_index: list[int]) -> None:
        """One pass of per-pattern updates over prepare()'s patterns; member_index (K,) into D."""
        patches, labels = prepared
        if patches.shape[0] == 1:  # one dataset: every member takes the same pattern
            for i, label in enumerate(labels[0].tolist()):
                self.step(patches[0, i], label, i)
            return
        index = torch.tensor(member_index, dtype=torch.long, device=self.pop.device)
        for i in range(patches.shape[1]):
            self.step(patches[index, i], labels[index, i], i)

    def sample_curvature(
        self,
        prepared: tuple[torch.Tensor, torch.Tensor],
        member_index: list[int],
        sample: list[int],
        members: list[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """SDLM's h: per member (or per member at `members`), the mean over the sample's patterns of
        its own dataset (no dropout). Every member is computed; `members` picks rows."""
        patches = prepared[0][:, sample]  # (D, S, 25, 64)
        if patches.shape[0] == 1:
            h = self.estimate_curvature(patches[0])
        else:
            index = torch.tensor(member_index, dtype=torch.long, device=self.pop.device)
            h = self.estimate_curvature(patches[index].transpose(0, 1))
        if members is None:
            return h
        rows = torch.tensor(members, dtype=torch.long, device=self.pop.device)
        return {name: t.index_select(0, rows) for name, t in h.items()}

    def evaluate(
        self, splits: list[tuple[torch.Tensor, torch.Tensor]], member_index: list[int], outputs: tuple[bool, ...]
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Every member on its own dataset: per split (x (D, N, 1, 16, 16), labels (D, N)) the loss (K,),
        misses (K,), and the (K, N, 10) outputs where asked for; convolutions and batched matrix products
        per dataset."""
        return [self._evaluate_split(x, y, member_index, want) for (x, y), want in zip(splits, outputs)]

    def _evaluate_split(self, x: torch.Tensor, labels: torch.Tensor, member_index: list[int], want: bool):
        """The loss is the MSE "averaged over the patterns and over the output units", or for cross-entropy
        members the mean cross-entropy; either way computed from the split's own outputs (the seed's
        modern.py reported the last training example's loss)."""
        pop = self.pop
        K, N = pop.K, x.shape[1]
        if x.shape[0] == 1:
            y = self.outputs(x[0])
        else:
            y = torch.empty(K, N, 10, device=pop.device)
            index = torch.tensor(member_index, device=pop.device)
            for d in sorted(set(member_index)):
                rows = (index == d).nonzero().view(-1)
                y[rows] = self.outputs(x[d], index=rows)
        per_member = labels[torch.tensor(member_index, device=labels.device)]  # (K, N)
        if pop.cross_entropy:
            per_pattern = -torch.log_softmax(y, dim=2).gather(2, per_member.unsqueeze(2))
        else:
            rows = torch.arange(K, device=pop.device).view(K, 1)
            per_pattern = (y - pop.targets[rows, per_member]) ** 2  # (K, N, 10), contiguous like y
        loss = per_pattern.mean(dim=(1, 2))
        misses = (y.argmax(dim=2) != per_member).sum(dim=1)
        return loss, misses, y if want else None

    def outputs(self, x: torch.Tensor, index: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
        """Forward a batch of (N, 1, 16, 16) digits through the members at `index` (all by default): (k, N, 10).

        H1 and H2 run as convolutions over all those members at once (H2 grouped by member).
        Dropout is off: evaluation sees the whole net.
        """
        self._follow()
        pop = self.pop
        p = pop.params if index is None else {n: t.index_select(0, index) for n, t in pop.params.items()}
        K, N = p["H1w"].shape[0], x.shape[0]
        A = pop.A if index is None else pop.A.index_select(0, index)
        S = pop.S if index is None else pop.S.index_select(0, index)
        chunk = chunk or max(16, 16384 // K)
        out = torch.empty(K, N, 10, device=pop.device)
        w1 = p["H1w"].reshape(K * 12, 1, 5, 5)
        w2 = p["H2w"].reshape(K * 12, 12, 5, 5)

        def f(a, shape, last=False):  # the squash with these members' constants
            return self._f(a, shape, out=last, A=A, S=S)

        for lo in range(0, N, chunk):
            B = min(chunk, N - lo)
            inp = F.pad(x[lo : lo + B], (2, 2, 2, 2), "constant", -1.0)
            x1 = F.conv2d(inp, w1, stride=2).add_(p["H1b"].reshape(1, K * 12, 8, 8))
            x1 = f(x1.view(B, K, 12 * 64), (1, K, 1))
            x1 = F.pad(x1.view(B, K * 12, 8, 8), (2, 2, 2, 2), "constant", -1.0)
            x2 = F.conv2d(x1, w2, stride=2, groups=K).add_(p["H2b"].reshape(1, K * 12, 4, 4))
            x2 = f(x2.view(B, K, 192), (1, K, 1)).transpose(0, 1)  # (K, B, 192)
            x3 = f(torch.baddbmm(p["H3b"].unsqueeze(1), x2, p["H3w"].transpose(1, 2)), (K, 1, 1))
            y = torch.baddbmm(p["outb"].unsqueeze(1), x3, p["outw"].transpose(1, 2))
            out[:, lo : lo + B] = f(y, (K, 1, 1), last=True)
        return out
