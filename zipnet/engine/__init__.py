"""The population trainer: K configurations of the 1989 net trained in lockstep.

Every member takes one pattern of its own example stream at each step, so the K forward
and backward passes are one batched computation. A single run is a population of one.

    members.py      Member (what may differ between members), RunResult (one member's outcome)
    streams.py      each member's dataset, the pass's (shifted) digits, SDLM's curvature sample
    population.py   the stacked parameters and per-member constants; which backend computes them
    torch_ops.py    the torch backend: the batched per-pattern step, backprop and curvature by hand
    kernel_ops.py   the kernel backend: passes, curvature and evaluation on the compiled C kernel
    evaluation.py   loss and misses on train and test after every pass
    training.py     train(): the loop over passes, divergence, pruning, logging
"""

from zipnet.engine.members import BACKENDS, MSE_C, Member, RunResult
from zipnet.engine.population import Population
from zipnet.engine.streams import hessian_sample, input_patches, shifted
from zipnet.engine.training import PassHook, format_pass, train
from zipnet.metrics import SPLITS

__all__ = [
    "BACKENDS",
    "MSE_C",
    "SPLITS",
    "Member",
    "RunResult",
    "Population",
    "PassHook",
    "format_pass",
    "train",
    "input_patches",
    "hessian_sample",
    "shifted",
]
