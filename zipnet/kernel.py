"""The compiled CPU backend: kernel.c built on first use, called through ctypes.

The engine keeps its parameters in its own (K, ...) layout; this module packs them into
blocks of BLK members (members in SIMD lanes) for one pass or one evaluation and unpacks
them afterwards. When no C compiler is present the engine falls back to torch ops.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from zipnet import resources
from zipnet.net import PARAM_NAMES

SOURCE = resources.kernel_source()
FLAGS = [
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fopenmp",
    "-shared",
    "-fPIC",
]
BLOCKS = (8, 16, 32)  # compiled lane counts; the engine picks one per population size
# per-member shapes in the kernel's parameter block, in kernel.c's order (H2w dense 12x12x25)
SHAPES = {
    "H1w": (12, 25),
    "H1b": (12, 64),
    "H2w": (12, 300),
    "H2b": (12, 16),
    "H3w": (30, 192),
    "H3b": (30,),
    "outw": (10, 30),
    "outb": (10,),
}
N_PARAMS = sum(int(np.prod(s)) for s in SHAPES.values())

_libraries: dict[int, ctypes.CDLL | None] = {}


def _cache_dir() -> Path:
    root = os.environ.get("ZIPNET_CACHE") or Path.home() / ".cache" / "zipnet"
    return Path(root) / "kernel"


def _cpu_id() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        return next((line for line in info.splitlines() if line.startswith("flags")), "") + platform.processor()
    except OSError:
        return platform.processor()


def library(blk: int) -> ctypes.CDLL | None:
    """The kernel compiled for `blk` lanes, built once per machine and cached; None without a compiler."""
    if blk in _libraries:
        return _libraries[blk]
    lib = None
    if os.environ.get("ZIPNET_KERNEL", "1") != "0":
        try:
            lib = _load(blk)
        except (OSError, subprocess.CalledProcessError) as err:
            warnings.warn(
                f"zipnet: the compiled CPU kernel is unavailable ({err}); training with torch ops instead", stacklevel=2
            )
    _libraries[blk] = lib
    return lib


def _load(blk: int) -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (cc or gcc) on PATH")
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), " ".join(FLAGS), str(blk), cc, _cpu_id()]).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"zipnet-kernel-{blk}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            subprocess.run([cc, *FLAGS, f"-DBLK={blk}", "-o", str(built), str(SOURCE)], check=True, capture_output=True)
            os.replace(built, target)
    lib = ctypes.CDLL(str(target))
    assert lib.zn_blk() == blk and lib.zn_nparams() == N_PARAMS, "kernel.c and kernel.py disagree on the layout"
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    lib.zn_train_pass.argtypes = [ptr, ptr, i32, ptr, ptr, ptr, i32, i32]
    lib.zn_train_pass_one.argtypes = [ptr, ptr, ptr, ptr, ptr, i32]
    lib.zn_train_pass_one.restype = i32
    lib.zn_forward.argtypes = [ptr, ptr, i32, ptr, ptr, i32, ptr, i32]
    lib.zn_train_pass.restype = lib.zn_forward.restype = i32
    return lib


def block_for(K: int) -> int:
    """Lanes per block: the widest that still makes two blocks (wider tiles run faster; two cores).

    It depends on K only, never on the thread count, so results do not depend on the machine's cores.
    """
    fits = [blk for blk in BLOCKS if K >= 2 * blk]
    return fits[-1] if fits else BLOCKS[0]


def padded_inputs(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 16, 16) -> (N, 20, 20) contiguous float32 with the -1 border the kernel reads."""
    return torch.nn.functional.pad(x[:, 0].float(), (2, 2, 2, 2), "constant", -1.0).contiguous()


class Packed:
    """A population's parameters and per-member constants in kernel blocks of `blk` lanes."""

    def __init__(self, params: dict[str, torch.Tensor], consts: torch.Tensor, blk: int):
        self.K = consts.shape[0]
        self.blk = blk
        self.nblocks = -(-self.K // blk)
        pad = self.nblocks * blk - self.K
        flat = torch.cat([params[n].reshape(self.K, -1) for n in PARAM_NAMES], dim=1)  # (K, N_PARAMS)
        flat = torch.cat([flat, flat.new_zeros(pad, N_PARAMS)])
        # spare lanes: zero weights, A=S=1, c=lr=0, targets 0 -- finite and inert
        spare = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]).expand(pad, 6)
        consts = torch.cat([consts.float(), spare])
        self.params = flat.view(self.nblocks, blk, N_PARAMS).transpose(1, 2).contiguous()
        self.consts = consts.view(self.nblocks, blk, 6).transpose(1, 2).contiguous()

    def unpack_into(self, params: dict[str, torch.Tensor]) -> None:
        flat = self.params.transpose(1, 2).reshape(self.nblocks * self.blk, N_PARAMS)[: self.K]
        offset = 0
        for name in PARAM_NAMES:
            size = int(np.prod(SHAPES[name]))
            params[name].copy_(flat[:, offset : offset + size].view_as(params[name]))
            offset += size


def train_pass(
    lib, packed: Packed, table: np.ndarray, inputs: torch.Tensor, labels: torch.Tensor, threads: int
) -> None:
    tab = np.ascontiguousarray(table, dtype=np.int8)
    labels = labels.to(torch.int32).contiguous()
    rc = lib.zn_train_pass(
        packed.params.data_ptr(),
        packed.consts.data_ptr(),
        packed.nblocks,
        tab.ctypes.data,
        inputs.data_ptr(),
        labels.data_ptr(),
        int(labels.shape[0]),
        threads,
    )
    if rc != 0:
        raise MemoryError("zipnet kernel: could not allocate its scratch memory")


def train_pass_one(lib, packed: Packed, table: np.ndarray, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    """A population of one (packed with blk=1): the kernel's single-member path, vectorised over units."""
    assert packed.K == 1 and packed.blk == 1
    tab = np.ascontiguousarray(table, dtype=np.int8)
    labels = labels.to(torch.int32).contiguous()
    rc = lib.zn_train_pass_one(
        packed.params.data_ptr(),
        packed.consts.data_ptr(),
        tab.ctypes.data,
        inputs.data_ptr(),
        labels.data_ptr(),
        int(labels.shape[0]),
    )
    if rc != 0:
        raise MemoryError("zipnet kernel: could not allocate its scratch memory")


def outputs(lib, packed: Packed, table: np.ndarray, inputs: torch.Tensor, threads: int) -> torch.Tensor:
    """(K, N, 10) outputs of every member."""
    n = inputs.shape[0]
    tab = np.ascontiguousarray(table, dtype=np.int8)
    out = torch.empty(packed.nblocks, n, 10, packed.blk)
    rc = lib.zn_forward(
        packed.params.data_ptr(),
        packed.consts.data_ptr(),
        packed.nblocks,
        tab.ctypes.data,
        inputs.data_ptr(),
        n,
        out.data_ptr(),
        threads,
    )
    if rc != 0:
        raise MemoryError("zipnet kernel: could not allocate its scratch memory")
    # contiguous whatever the block count, so sums over a member's outputs run in one order
    return out.permute(0, 3, 1, 2).reshape(packed.nblocks * packed.blk, n, 10)[: packed.K].contiguous()
