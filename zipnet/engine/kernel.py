"""The compiled CPU backend: kernel.c built on first use, verified, cached, called through ctypes.

kernel.c computes every member with one fixed sequence of float operations (explicit fused
multiply-adds, no contraction by the compiler), so its results do not depend on the vector
width it was compiled for, the population's size or a member's place in it. The build key
names that arithmetic: a hash of the source, the flags that affect rounding and the
compiler. The cached library's file name adds the CPU, since `-march=native` code runs
only where it was built.

Loading verifies what it loads (the ABI, the layout and the build key the library exports)
and rebuilds on any mismatch or load error; only when that rebuild fails too does it warn
once and leave the engine to torch ops.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from zipnet.net import PARAM_NAMES, SHAPES  # the parameter block: kernel.c's order

SOURCE = Path(__file__).with_name("kernel.c")
ABI = 3
# flags that decide the arithmetic (part of the build key), and the target (part of the file name)
ROUNDING = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
# ZIPNET_KERNEL_TARGET (e.g. "-march=x86-64-v3", AVX2) builds for another CPU than this one; same numbers
TARGET = os.environ.get("ZIPNET_KERNEL_TARGET", "-march=native -mprefer-vector-width=512").split()
LINK = ["-fopenmp", "-shared", "-fPIC"]
LANES = (8, 16)  # members per block on the lanes path
N_PARAMS = sum(int(np.prod(s)) for s in SHAPES.values())
# per-member constants, in kernel.c's order
CONSTS = (
    "A",
    "S",
    "c",
    "lr",
    "target_negative",
    "target_positive",
    "mu",
    "hessian_decay",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "dropout",
    "step",  # adamw: the updates the member took before the call (a float: exact up to 2^24)
)
SPARE = {"A": 1.0, "S": 1.0, "mu": 1.0, "beta1": 0.9, "beta2": 0.999, "eps": 1.0}  # inert values for empty lanes
OPTIMS = {"sgd": 0, "sdlm": 1, "adamw": 2}


class Setup(ctypes.Structure):
    """What a whole population shares (kernel.c's Setup)."""

    _fields_ = [
        ("relu", ctypes.c_int32),
        ("linear_out", ctypes.c_int32),
        ("cross_entropy", ctypes.c_int32),
        ("optim", ctypes.c_int32),
        ("running", ctypes.c_int32),
    ]


@dataclass(frozen=True)
class Kernel:
    lib: ctypes.CDLL
    build: str  # the build key: the arithmetic's identity


def cache_dir() -> Path:
    root = os.environ.get("ZIPNET_CACHE") or Path.home() / ".cache" / "zipnet"
    return Path(root) / "kernel"


# cpu_model and cpu_flags read the machine once per process (functools.cache, no arguments): facts
# of the machine, immutable, safe to share between threads and populations.


@cache
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo), or the platform's word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


@cache
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def vector_width(found: Kernel | None) -> int:
    """Bits per SIMD register `found` runs with: 512 (AVX-512), 256 (AVX2) or 128; the CPU's without a kernel."""
    if found is not None:
        return int(found.lib.zn_simd_bits())
    flags = cpu_flags()
    return 512 if "avx512f" in flags else 256 if "avx2" in flags else 128


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build_key(cc: str) -> str:
    """A hash of what decides the kernel's arithmetic: source, ABI, rounding flags, compiler."""
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = cc
    parts = [SOURCE.read_text(), str(ABI), " ".join(ROUNDING), version.splitlines()[0] if version else cc]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def compile_to(target: Path, cc: str, key: str, target_flags: list[str] | None = None) -> None:
    """Compile kernel.c into `target` (exporting `key` as its build key)."""
    cmd = [
        cc,
        *ROUNDING,
        *(TARGET if target_flags is None else target_flags),
        *LINK,
        f'-DZN_BUILD_ID="{key}"',
        "-o",
        str(target),
        str(SOURCE.resolve()),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)


def _verified(path: Path, key: str) -> ctypes.CDLL:
    """Load a library and check that it is this kernel: ABI, layout and build key. Raises OSError if not."""
    lib = ctypes.CDLL(str(path))
    try:
        lib.zn_build.restype = ctypes.c_char_p
        found = (lib.zn_abi(), lib.zn_nparams(), lib.zn_nconsts(), lib.zn_build().decode())
    except AttributeError as err:
        raise OSError(f"{path.name} is not a zipnet kernel ({err})") from err
    if found != (ABI, N_PARAMS, len(CONSTS), key):
        wanted = (ABI, N_PARAMS, len(CONSTS), key)
        raise OSError(f"{path.name} is another build (ABI, layout, key {found}; wanted {wanted})")
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    ptr, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    lib.zn_train_lanes.argtypes = [i32, ptr, ptr, ptr, i32, ptr, ptr, ptr, ptr, ptr, i64, ptr, i32]
    lib.zn_curvature_lanes.argtypes = [i32, ptr, ptr, ptr, i32, ptr, ptr, ptr, ptr, ptr, i64, ptr, i32, i32]
    lib.zn_train_one.argtypes = [ptr, ptr, i32, ptr, ptr, ptr, ptr, ptr, i64, i32]
    lib.zn_evaluate.argtypes = [ptr, ptr, i32, ptr, ptr, ptr, i32, ptr, i32, i32]
    lib.zn_eval_lanes.restype = lib.zn_simd_bits.restype = i32
    for fn in (lib.zn_train_lanes, lib.zn_curvature_lanes, lib.zn_train_one, lib.zn_evaluate):
        fn.restype = i32


def cached_library() -> tuple[Path, str, str]:
    """Where this machine's build lives in the cache, the compiler and the build key."""
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler (cc or gcc) on PATH")
    key = build_key(cc)
    where = hashlib.sha256(f"{sorted(cpu_flags())}{cpu_model()}{TARGET}".encode()).hexdigest()[:8]
    return cache_dir() / f"zipnet-kernel-{key}-{where}.so", cc, key


def _load() -> Kernel:
    target, cc, key = cached_library()
    if target.exists():
        try:
            lib = _verified(target, key)
            _declare(lib)
            return Kernel(lib, key)
        except OSError:
            pass  # a broken or foreign file: build again below
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        compile_to(built, cc, key)
        lib = _verified(built, key)  # loaded under its own name, so a bad file at `target` is never reused
        os.replace(built, target)
    _declare(lib)
    return Kernel(lib, key)


# What load() found, keyed by what decides it: the ZIPNET_KERNEL switch, the cache folder and the
# compiler. A Kernel is immutable and every call into it allocates its own scratch memory, so all
# populations and threads of a process share it; None records one that could not be built (warned
# once per key). Threads that race on a new key both build into their own temporary file and
# either result serves. Another key (a test's own ZIPNET_CACHE) loads afresh.
_loaded: dict[tuple[bool, str, str | None], Kernel | None] = {}


def load() -> Kernel | None:
    """The kernel, built and verified once per process and cache; None (after one warning) where it cannot be built."""
    key = (os.environ.get("ZIPNET_KERNEL", "1") != "0", str(cache_dir()), _compiler())
    if key in _loaded:
        return _loaded[key]
    found = None
    if key[0]:
        try:
            found = _load()
        except (OSError, subprocess.SubprocessError) as err:
            stderr = getattr(err, "stderr", b"") or b""
            last = stderr.decode(errors="replace").strip().splitlines()[-1:] if isinstance(stderr, bytes) else []
            why = f"{err}: {last[0]}" if last else str(err)
            warnings.warn(
                f"zipnet: the compiled CPU kernel is unavailable ({why}); training with torch ops instead", stacklevel=2
            )
    _loaded[key] = found
    return found


# --- layouts ---------------------------------------------------------------------------------


def flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """(K, N_PARAMS) float32, contiguous: each member's parameters in kernel.c's order."""
    K = params["H1w"].shape[0]
    return torch.cat([params[n].reshape(K, -1).float() for n in PARAM_NAMES], dim=1).contiguous()


def unflat(rows: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
    offset = 0
    for name in PARAM_NAMES:
        size = int(np.prod(SHAPES[name]))
        params[name].copy_(rows[:, offset : offset + size].view_as(params[name]))
        offset += size


def blocks(rows: torch.Tensor, blk: int, spare: torch.Tensor | None = None) -> torch.Tensor:
    """(K, F) per-member rows -> (nblocks, F, blk), members in lanes; empty lanes get `spare` (F,) or 0."""
    K, F = rows.shape
    nblocks = -(-K // blk)
    pad = nblocks * blk - K
    fill = rows.new_zeros(pad, F) if spare is None else spare.expand(pad, F)
    return torch.cat([rows, fill]).view(nblocks, blk, F).transpose(1, 2).contiguous()


def unblocks(packed: torch.Tensor, K: int) -> torch.Tensor:
    nblocks, F, blk = packed.shape
    return packed.transpose(1, 2).reshape(nblocks * blk, F)[:K]


def spare_consts() -> torch.Tensor:
    return torch.tensor([SPARE.get(name, 0.0) for name in CONSTS], dtype=torch.float32)


def _ptr(t: torch.Tensor | np.ndarray | None) -> int | None:
    if t is None:
        return None
    return t.data_ptr() if isinstance(t, torch.Tensor) else t.ctypes.data


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise MemoryError(f"zipnet kernel: {what} could not allocate its scratch memory")


def train_lanes(
    k: Kernel,
    blk: int,
    params: torch.Tensor,
    consts: torch.Tensor,
    state: torch.Tensor | None,
    setup: Setup,
    table: np.ndarray,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    dataset: torch.Tensor,
    keep: list[np.ndarray] | None,
    threads: int,
) -> None:
    """One pass, in place: params (nblocks, N_PARAMS, blk), consts (nblocks, N_CONSTS, blk), state (nblocks,
    nstate, N_PARAMS, blk) or None; inputs (D, n, 20, 20); labels (D, n) int32; dataset (nblocks * blk,) int32;
    keep: per lane, (n, 24) uint8 dropout keep bits, or None."""
    n = inputs.shape[1]
    tab = np.ascontiguousarray(table, dtype=np.int8)
    keep_ptrs = None
    if keep is not None:
        keep_ptrs = (ctypes.c_void_p * len(keep))(*[a.ctypes.data for a in keep])
    rc = k.lib.zn_train_lanes(
        blk,
        _ptr(params),
        _ptr(consts),
        _ptr(state),
        params.shape[0],
        ctypes.byref(setup),
        _ptr(tab),
        _ptr(inputs),
        _ptr(labels),
        _ptr(dataset),
        n,
        ctypes.cast(keep_ptrs, ctypes.c_void_p) if keep_ptrs is not None else None,
        threads,
    )
    _check(rc, "a training pass")


def curvature_sum(
    k: Kernel,
    blk: int,
    params: torch.Tensor,
    consts: torch.Tensor,
    setup: Setup,
    table: np.ndarray,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    dataset: torch.Tensor,
    sample: list[int],
    threads: int,
) -> torch.Tensor:
    """SDLM: the sum of the curvature h over the sample's patterns, (nblocks, N_PARAMS, blk)."""
    tab = np.ascontiguousarray(table, dtype=np.int8)
    idx = np.ascontiguousarray(sample, dtype=np.int32)
    out = torch.empty_like(params)
    rc = k.lib.zn_curvature_lanes(
        blk,
        _ptr(params),
        _ptr(consts),
        _ptr(out),
        params.shape[0],
        ctypes.byref(setup),
        _ptr(tab),
        _ptr(inputs),
        _ptr(labels),
        _ptr(dataset),
        inputs.shape[1],
        _ptr(idx),
        len(idx),
        threads,
    )
    _check(rc, "the curvature estimate")
    return out


def grids(inputs: torch.Tensor) -> torch.Tensor:
    """(..., 20, 20) -> (..., 400): each pattern as 16 grids of 5x5, pixel (4 gy + ry, 4 gx + rx) at
    grid ry * 4 + rx, place gy * 5 + gx (the one-member path reads H1's taps from them)."""
    order = sorted(range(400), key=lambda p: ((p // 20) % 4 * 4 + (p % 20) % 4, (p // 20) // 4 * 5 + (p % 20) // 4))
    return inputs.reshape(*inputs.shape[:-2], 400)[..., order].contiguous()


def train_one(
    k: Kernel,
    rows: torch.Tensor,
    consts: torch.Tensor,
    table: np.ndarray,
    inputs: torch.Tensor,
    inputs4: torch.Tensor,
    labels: torch.Tensor,
    dataset: torch.Tensor,
    threads: int,
) -> None:
    """One pass for each member on its own, in place: rows (K, N_PARAMS), consts (K, N_CONSTS); inputs
    (D, n, 20, 20) and the same as grids(inputs)."""
    tab = np.ascontiguousarray(table, dtype=np.int8)
    rc = k.lib.zn_train_one(
        _ptr(rows),
        _ptr(consts),
        rows.shape[0],
        _ptr(tab),
        _ptr(inputs),
        _ptr(inputs4),
        _ptr(labels),
        _ptr(dataset),
        inputs.shape[1],
        threads,
    )
    _check(rc, "a training pass")


class Split(ctypes.Structure):
    """One split for zn_evaluate."""

    _fields_ = [
        ("inputs", ctypes.c_void_p),
        ("labels", ctypes.c_void_p),
        ("n", ctypes.c_int64),
        ("loss_sum", ctypes.c_void_p),
        ("misses", ctypes.c_void_p),
        ("outputs", ctypes.c_void_p),
    ]


def tiles(k: Kernel, inputs: torch.Tensor) -> torch.Tensor:
    """(D, n, 20, 20) -> (D, tiles, 400, ET): the evaluation's layout, ET patterns to a tile in SIMD lanes."""
    D, n = inputs.shape[:2]
    et = k.lib.zn_eval_lanes()
    count = -(-n // et)
    flat_inputs = torch.cat([inputs.reshape(D, n, 400), inputs.new_zeros(D, count * et - n, 400)], dim=1)
    return flat_inputs.view(D, count, et, 400).transpose(2, 3).contiguous()


def evaluate(
    k: Kernel,
    rows: torch.Tensor,
    consts: torch.Tensor,
    setup: Setup,
    table: np.ndarray,
    dataset: torch.Tensor,
    splits: list[tuple[torch.Tensor, torch.Tensor, bool]],
    threads: int,
) -> list[tuple[np.ndarray, np.ndarray, torch.Tensor | None]]:
    """Every member on its own dataset, all splits in one call. splits: (tiles(inputs), labels (D, n) int32,
    whether to return outputs). Per split: loss sums (float64, in example order), misses, (K, n, 10) or None."""
    K = rows.shape[0]
    tab = np.ascontiguousarray(table, dtype=np.int8)
    out, structs = [], (Split * len(splits))()
    for s, (inputs, labels, want) in enumerate(splits):
        n = labels.shape[1]
        loss, misses = np.zeros(K, dtype=np.float64), np.zeros(K, dtype=np.int32)
        outputs = torch.empty(K, n, 10) if want else None
        structs[s] = Split(_ptr(inputs), _ptr(labels), n, _ptr(loss), _ptr(misses), _ptr(outputs))
        out.append((loss, misses, outputs))
    D = splits[0][1].shape[0]
    rc = k.lib.zn_evaluate(
        _ptr(rows), _ptr(consts), K, ctypes.byref(setup), _ptr(tab), _ptr(dataset), D, structs, len(splits), threads
    )
    _check(rc, "the evaluation")
    return out


def padded_inputs(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 16, 16) -> (N, 20, 20) contiguous float32 with the -1 border the kernel reads."""
    return torch.nn.functional.pad(x[:, 0].float(), (2, 2, 2, 2), "constant", -1.0).contiguous()
