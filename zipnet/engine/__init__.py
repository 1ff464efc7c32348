"""The population trainer: K configurations of the 1989 net trained in lockstep.

Every member takes one pattern of its own example stream at each step, so the K forward
and backward passes are one batched computation. A single run is a population of one.

    members.py      Member (what may differ between members), RunResult (one member's outcome),
                    MUTABLE and Copy (what a member may change between passes: PBT's exploit)
    streams.py      each member's dataset, the pass's (shifted) digits, SDLM's curvature sample
    population.py   the stacked parameters, per-member constants, optimiser and dropout masks
    backend.py      the backend contract (prepare a pass, train it, curvature, evaluate) and the
                    one place that picks a population's backend
    torch_ops.py    the torch backend: the batched per-pattern step, backprop and curvature by
                    hand, evaluation
    kernel_ops.py   the kernel backend: passes, curvature and evaluation on the compiled kernel
    kernel.py       the compiled CPU kernel (kernel.c): built, verified, cached, called by ctypes
    training.py     train(): the loop over passes, each member's rows, divergence, pruning, and
                    refilled lanes (each member at its own pass index)
    checkpoint.py   a population at a pass boundary, saved and restored: resumed, it ends bit
                    for bit where the uninterrupted run ends
"""

from zipnet.engine.backend import Backend, backend_for
from zipnet.engine.checkpoint import Checkpoint
from zipnet.engine.members import BACKENDS, MSE_C, MUTABLE, Copy, Member, RunResult
from zipnet.engine.population import Population
from zipnet.engine.streams import hessian_sample, shifted
from zipnet.engine.torch_ops import input_patches
from zipnet.engine.training import PassHook, format_pass, train
from zipnet.metrics import SPLITS

__all__ = [
    "BACKENDS",
    "MSE_C",
    "SPLITS",
    "MUTABLE",
    "Copy",
    "Member",
    "RunResult",
    "Population",
    "Backend",
    "Checkpoint",
    "backend_for",
    "PassHook",
    "format_pass",
    "train",
    "input_patches",
    "hessian_sample",
    "shifted",
]
