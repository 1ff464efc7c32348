"""Per-example update rules for a population: each member has its own rates and schedule.

An optimiser sees the gradients of one example for all K members and updates the
parameters in place. Three rules:

- `sgd`: w <- w - lr dE/dw.
- `sdlm`: the paper's "special version of Newton's algorithm that uses a positive,
  diagonal approximation of the Hessian" (stochastic diagonal Levenberg-Marquardt,
  Becker & LeCun 1988; LeCun et al. 1998, appendix C): w_k <- w_k - eta / (mu + h_k) dE/dw_k,
  with h_k >= 0 a Gauss-Newton estimate of d2E/dw_k^2 that the engine computes (engine.Population.curvature).
- `adamw`: the modern recipe's rule (decoupled weight decay), one step per example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

OPTIMS = ("sgd", "sdlm", "adamw")
HESSIANS = ("pass", "running")  # sdlm: h fixed per pass from a sample, or a running average


@dataclass(frozen=True)
class OptimSpec:
    name: str = "sgd"
    lr: float = 0.03  # sgd's lr, sdlm's eta, adamw's lr; the paper publishes none
    lr_by_pass: tuple[float, ...] | None = None  # one lr per pass, the last one repeating
    lr_end: float | None = None  # linear from lr (first pass) to lr_end (last pass)
    # sdlm
    mu: float = 0.02  # LeNet-5's value; keeps eta / (mu + h) bounded where h is small
    hessian: str = "pass"
    hessian_samples: int = 500  # patterns averaged for h before each pass ("pass")
    hessian_decay: float = 0.01  # h <- (1 - g) h + g h_pattern ("running")
    # adamw (torch's defaults)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01

    def lr_at(self, pass_index: int, passes: int) -> float:
        if self.lr_by_pass:
            return float(self.lr_by_pass[min(pass_index, len(self.lr_by_pass) - 1)])
        if self.lr_end is not None and passes > 1:
            return float(self.lr + (self.lr_end - self.lr) * pass_index / (passes - 1))
        return float(self.lr)


def _per_member(values: list[float], device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (K,) vector shaped to broadcast against a (K, ...) parameter."""
    return v.view(-1, *([1] * (like.dim() - 1)))


class SGD:
    """w <- w - lr * dE/dw after every example."""

    fused = True  # the engine may fold lr into the deltas and fuse the outer products
    curvature: str | None = None  # what second-order information the engine must supply
    carried: tuple[str, ...] = ()  # what a pass hands the next: dicts of (K, ...) tensors (lr is set per pass)

    def __init__(self, specs: list[OptimSpec], device: torch.device | str = "cpu"):
        self.specs = list(specs)
        self.device = device
        self.lr = torch.zeros(len(self.specs), device=device)

    def start_pass(self, pass_index: int | list[int], passes: int = 1) -> list[float]:
        """Each member's lr for its pass: one pass index for all, or one per member (a refilled
        member starts its schedule at pass 0 beside members further on)."""
        indices = pass_index if isinstance(pass_index, list) else [pass_index] * len(self.specs)
        lrs = [spec.lr_at(i, passes) for spec, i in zip(self.specs, indices)]
        self.lr.copy_(torch.tensor(lrs))
        return lrs

    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> None:
        for name, p in params.items():
            p.addcmul_(_expand(self.lr, p), grads[name], value=-1.0)

    def state(self) -> dict[str, torch.Tensor]:
        """What the next pass reads besides the parameters, every tensor (K, ...) on the CPU: a checkpoint's."""
        return {
            f"{name}.{part}": t.detach().cpu().clone()
            for name in self.carried
            for part, t in getattr(self, name).items()
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """The state() of a population of the same size, as the next pass will read it."""
        for name in self.carried:
            prefix = f"{name}."
            parts = {k[len(prefix) :]: t.to(self.device).clone() for k, t in state.items() if k.startswith(prefix)}
            setattr(self, name, parts)

    def copy_member(self, target: int, source: int) -> None:
        """Member `target` takes member `source`'s state (all that state() holds) as it is now (PBT's exploit)."""
        for name in self.carried:
            for t in getattr(self, name).values():
                t[target] = t[source]

    def respec(self, k: int, spec: OptimSpec) -> None:
        """Member k goes on with `spec` from the next pass: its lr schedule is read at every start_pass."""
        self.specs[k] = spec

    def extend(self, fresh: SGD) -> None:
        """Members join: `fresh`, an optimiser of the same rule made for them, its state appended.
        State one side has not made yet (SDLM's h before its first estimate, AdamW's moments before
        its first step) is zeros there, as it would be made."""
        if type(fresh) is not type(self):
            names = f"{type(self).__name__} and {type(fresh).__name__}"
            raise ValueError(f"one population trains with one optimiser; got {names}")
        old = len(self.specs)
        self.specs = self.specs + fresh.specs
        for name, value in list(vars(self).items()):
            other = getattr(fresh, name)
            if isinstance(value, torch.Tensor):
                setattr(self, name, torch.cat([value, other.to(value.device)]))
            elif isinstance(value, dict) and (value or other):
                like = value or other
                parts = {}
                for key, t in like.items():
                    mine = value.get(key, t.new_zeros((old, *t.shape[1:])))
                    theirs = other.get(key, t.new_zeros((len(fresh.specs), *t.shape[1:])))
                    parts[key] = torch.cat([mine, theirs.to(mine.device)])
                setattr(self, name, parts)

    def keep(self, index: torch.Tensor) -> None:
        """Drop members: keep only those at `index` (diverged or pruned ones leave)."""
        self.specs = [self.specs[i] for i in index.tolist()]
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(self, name, value[index.to(value.device)].clone())
            elif isinstance(value, dict):
                setattr(self, name, {k: v[index.to(v.device)].clone() for k, v in value.items()})


class SDLM(SGD):
    """Stochastic diagonal Levenberg-Marquardt: a step eta / (mu + h_k) per parameter.

    "pass": before each pass (after `start_pass` sets eta) the engine averages h over
    `hessian_samples` patterns and calls `set_curvature`; the step sizes then hold for the
    pass (LeNet-5's procedure). "running": the engine hands every pattern's h to `observe`
    before the step. Either call recomputes eta / (mu + h).
    """

    fused = False
    carried = ("h", "step_size")  # "running" mode carries h over; "pass" mode estimates it again

    def __init__(self, specs: list[OptimSpec], device: torch.device | str = "cpu"):
        super().__init__(specs, device)
        modes = {(s.hessian, s.hessian_samples) for s in specs}
        if len(modes) != 1:
            raise ValueError(f"one population estimates h one way; got {sorted(modes)}")
        self.curvature, self.samples = modes.pop()
        self.mu = _per_member([s.mu for s in specs], device)
        self.decay = _per_member([s.hessian_decay for s in specs], device)
        self.h: dict[str, torch.Tensor] = {}
        self.step_size: dict[str, torch.Tensor] = {}

    def respec(self, k: int, spec: OptimSpec) -> None:
        """mu is read at every step-size computation, so it may change between passes too."""
        super().respec(k, spec)
        self.mu[k] = spec.mu

    def extend(self, fresh: SGD) -> None:
        if (fresh.curvature, fresh.samples) != (self.curvature, self.samples):
            raise ValueError("one population estimates h one way")
        super().extend(fresh)

    def set_curvature(self, h: dict[str, torch.Tensor], rows: list[int] | None = None) -> None:
        """h for every member, or for the members at `rows` only (the others keep theirs)."""
        if rows is None:
            self.h = {name: t.clone() for name, t in h.items()}
        else:
            for name, t in h.items():
                self.h[name][torch.tensor(rows, device=t.device)] = t
        self._step_sizes()

    def observe(self, h: dict[str, torch.Tensor]) -> None:
        """Running average: h <- (1 - g) h + g h_pattern."""
        for name, t in h.items():
            g = _expand(self.decay, t)
            self.h[name].mul_(1 - g).addcmul_(g, t)
        self._step_sizes()

    def _step_sizes(self) -> None:
        # eps_k = eta / (mu + h_k)
        self.step_size = {name: _expand(self.lr, h) / (_expand(self.mu, h) + h) for name, h in self.h.items()}

    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> None:
        for name, p in params.items():
            p.addcmul_(self.step_size[name], grads[name], value=-1.0)


class AdamW(SGD):
    """Adam with decoupled weight decay, one step per example (the seed's modern.py rule)."""

    fused = False
    carried = ("m", "v")

    def __init__(self, specs: list[OptimSpec], device: torch.device | str = "cpu"):
        super().__init__(specs, device)
        self.beta1 = _per_member([s.beta1 for s in specs], device)
        self.beta2 = _per_member([s.beta2 for s in specs], device)
        self.eps = _per_member([s.eps for s in specs], device)
        self.weight_decay = _per_member([s.weight_decay for s in specs], device)
        self.t = torch.zeros(len(specs), dtype=torch.int64)  # per member: the steps it took (members join at 0)
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def respec(self, k: int, spec: OptimSpec) -> None:
        """The decoupled weight decay is read at every step, so it may change between passes too."""
        super().respec(k, spec)
        self.weight_decay[k] = spec.weight_decay

    def state(self) -> dict[str, torch.Tensor]:
        """The moments, and each member's step count."""
        return {**super().state(), "t": self.t.clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state(state)
        self.t = state["t"].to(torch.int64).clone()

    def copy_member(self, target: int, source: int) -> None:
        super().copy_member(target, source)
        self.t[target] = self.t[source]

    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> None:
        # one flat (K, P) vector per state: a handful of tensor ops per pattern, not eight times as many
        g = torch.cat([grads[name].reshape(len(self.specs), -1) for name in params], dim=1)
        if not self.m:
            self.m, self.v = {"flat": torch.zeros_like(g)}, {"flat": torch.zeros_like(g)}
        self.t += 1
        m, v = self.m["flat"], self.v["flat"]
        b1, b2 = self.beta1.view(-1, 1), self.beta2.view(-1, 1)
        t = self.t.to(device=b1.device, dtype=b1.dtype).view(-1, 1)
        m.mul_(b1).addcmul_(1 - b1, g)
        v.mul_(b2).addcmul_((1 - b2) * g, g)
        lr = self.lr.view(-1, 1)
        denom = (v / (1 - b2**t)).sqrt_().add_(self.eps.view(-1, 1))
        update = (m * (lr / (1 - b1**t))).div_(denom)
        decay = 1 - self.lr * self.weight_decay  # decoupled weight decay, (K,)
        offset = 0
        for p in params.values():
            size = p[0].numel()
            p.mul_(_expand(decay, p)).sub_(update[:, offset : offset + size].view_as(p))
            offset += size


def make_optimiser(specs: list[OptimSpec], device) -> SGD:
    names = {spec.name for spec in specs}
    if len(names) != 1:
        raise ValueError(f"one population trains with one optimiser; got {sorted(names)}")
    name = names.pop()
    rules = {"sgd": SGD, "sdlm": SDLM, "adamw": AdamW}
    if name not in rules:
        from zipnet.errors import ConfigError

        raise ConfigError("optim.name", f"{name!r} is not allowed; choose one of {', '.join(OPTIMS)}")
    return rules[name](specs, device)
