"""The compiled kernel: one arithmetic whatever the path, population, neighbours, vector width or
datasets; against torch ops to float rounding for every rule; and a cache that heals itself."""

import ctypes
import subprocess
import sys
import warnings
from dataclasses import replace

import pytest
import torch
from stand_ins import close, data, digits, evaluated, one_pass

from zipnet.engine import Member, Population, backend_for, kernel, kernel_ops, train
from zipnet.net import PARAM_NAMES, InitSpec
from zipnet.optim import OptimSpec

needs_kernel = pytest.mark.skipif(kernel.load() is None, reason="no C compiler for the kernel")

PAPER = [
    Member(
        init=InitSpec(seed=s, init="linear" if s % 3 == 2 else "sqrt"),
        table="random",
        table_seed=3,
        activation="scaled_tanh" if s % 2 else "tanh",
        mse=("mean", "sum", "half_sum")[s % 3],
        target_negative=-0.8 if s % 4 == 1 else -1.0,
        optim=OptimSpec(lr=0.004 * (1 + s % 5)),
    )
    for s in range(7)
]
SDLM = OptimSpec(name="sdlm", lr=2e-4, mu=0.05, hessian_samples=40)
ADAMW = OptimSpec(name="adamw", lr=5e-4, weight_decay=0.01)
RULES = {
    "sgd": PAPER,
    "sdlm-pass": [replace(m, optim=replace(SDLM, lr=SDLM.lr * (1 + k % 3))) for k, m in enumerate(PAPER)],
    "sdlm-running": [replace(m, optim=replace(SDLM, hessian="running", hessian_decay=0.05)) for m in PAPER],
    "adamw-modern": [
        replace(
            m,
            activation="relu",
            output="linear",
            loss="cross_entropy",
            dropout=0.1 * (k % 3),
            optim=replace(ADAMW, beta1=0.85 + 0.05 * (k % 2)),
        )
        for k, m in enumerate(PAPER)
    ],
}


def _rows(results):
    return [[{k: v for k, v in row.items() if not k.endswith("seconds")} for row in r.history] for r in results]


def _same(a, b) -> bool:
    return _rows([a]) == _rows([b]) and all(torch.equal(a.params[n], b.params[n]) for n in PARAM_NAMES)


@pytest.fixture
def path(monkeypatch):
    """Force the kernel's training path: 0 (each member alone) or a block width."""

    def force(choice):
        monkeypatch.setattr(kernel_ops, "choose", lambda K, threads, one_fits, width: choice)

    return force


@needs_kernel
@pytest.mark.parametrize("rule", list(RULES))
def test_a_member_equals_its_single_run_bit_for_bit_with_mixed_data_seeds(rule, path):
    members = RULES[rule]
    streams = [data(300, 100, seed=10 + k % 3) for k in range(len(members))]  # three data seeds
    path(16)  # the population in lanes of 16 members ...
    together = train(members, streams, passes=2, log=None, backend="c", shift=1 if rule == "adamw-modern" else 0)
    path(0 if rule == "sgd" else 8)  # ... each member alone: its own path (sgd) or a block of 8 lanes
    for k, member in enumerate(members):
        (alone,) = train(
            [member], streams[k], passes=2, log=None, backend="c", shift=1 if rule == "adamw-modern" else 0
        )
        assert together[k].status == alone.status == "finished"
        assert _same(together[k], alone), f"member {k}"


@needs_kernel
def test_every_training_path_and_thread_count_computes_the_same_numbers(path):
    d = data(300, 100)
    runs = []
    for choice, threads in ((0, 1), (0, 2), (8, 1), (8, 2), (16, 2)):
        path(choice)
        runs.append(train(PAPER, d, passes=1, log=None, backend="c", threads=threads))
    for other in runs[1:]:
        assert all(_same(a, b) for a, b in zip(runs[0], other))


@needs_kernel
def test_a_population_without_data_seeds_still_splits_nothing():
    d = data(300, 100)
    shared = train(PAPER[:3], d, passes=1, log=None, backend="c")
    listed = train(PAPER[:3], [d, d, d], passes=1, log=None, backend="c")
    assert all(_same(a, b) for a, b in zip(shared, listed))


@needs_kernel
@pytest.mark.parametrize("rule", ["sdlm-pass", "sdlm-running", "adamw-modern"])
def test_the_kernel_matches_torch_ops_to_float_rounding(rule):
    members = RULES[rule][:4]
    d = data(400, 200)
    fast = train(members, d, passes=1, log=None, backend="c")
    slow = train(members, d, passes=1, log=None, backend="torch")
    for a, b in zip(fast, slow):
        assert a.backend == "c" and b.backend == "torch"
        for name in PARAM_NAMES:
            close(a.params[name], b.params[name], tol=2e-5)
        assert abs(a.history[0]["test/misses"] - b.history[0]["test/misses"]) <= 1
        assert a.history[0]["train/loss"] == pytest.approx(b.history[0]["train/loss"], rel=1e-4)


@needs_kernel
@pytest.mark.parametrize("K", range(1, 10))
def test_every_population_size_trains_on_the_kernel(K):
    members = [replace(PAPER[0], init=InitSpec(seed=s)) for s in range(K)]
    assert backend_for(Population(members), "auto").name == "c"
    (result, *_) = train(members, data(100, 50), passes=1, log=None)
    assert result.backend == "c"


@needs_kernel
def test_results_record_the_backend_the_build_and_the_cpu():
    d = data(100, 50)
    (fast,) = train(PAPER[:1], d, passes=1, log=None, backend="c")
    (slow,) = train(PAPER[:1], d, passes=1, log=None, backend="torch")
    assert (fast.backend, fast.kernel_build) == ("c", kernel.load().build) and len(fast.kernel_build) == 16
    assert (slow.backend, slow.kernel_build) == ("torch", "")
    assert fast.cpu == slow.cpu == kernel.cpu_model() != ""


@pytest.mark.slow  # kept out of CI for the suite's 20 minutes; make test-all runs it
@needs_kernel
@pytest.mark.skipif("avx2" not in kernel.cpu_flags(), reason="the CPU has no AVX2")
def test_an_avx2_build_computes_the_same_numbers_as_the_native_one(tmp_path):
    """-march=native may pick AVX-512; members must not see the difference."""
    native = kernel.load()
    target = tmp_path / "avx2.so"
    kernel.compile_to(target, kernel.cached_library()[1], native.build, target_flags=["-march=x86-64-v3"])
    avx2 = kernel.Kernel(ctypes.CDLL(str(target)), native.build)
    kernel._declare(avx2.lib)
    x, y = digits(200, seed=4)
    results = []
    for found in (native, avx2):
        for members in (PAPER[:1], PAPER, RULES["adamw-modern"]):
            pop = Population(members)
            ops = kernel_ops.KernelOps(pop, found)
            pop.optim.start_pass(0)
            pop.draw_dropout(200, 0)
            one_pass(ops, x, y)
            results.append((kernel.flat(pop.params), evaluated(ops, x, y)))
    half = len(results) // 2
    for (p_native, e_native), (p_avx2, e_avx2) in zip(results[:half], results[half:]):
        assert torch.equal(p_native, p_avx2)
        assert all(torch.equal(a, b) for a, b in zip(e_native, e_avx2))


# --- the cache --------------------------------------------------------------------------------


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty kernel cache for this test; the session's kernel comes back afterwards."""
    monkeypatch.setenv("ZIPNET_CACHE", str(tmp_path))  # another cache: kernel.load() loads afresh
    return tmp_path


def _trains_correctly() -> None:
    """A short run on the kernel matches the same run on torch ops."""
    d = data(200, 50)
    (fast,) = train(PAPER[:1], d, passes=1, log=None, backend="c")
    (slow,) = train(PAPER[:1], d, passes=1, log=None, backend="torch")
    assert fast.backend == "c"
    assert fast.history[0]["test/misses"] == slow.history[0]["test/misses"]
    for name in PARAM_NAMES:
        close(fast.params[name], slow.params[name], tol=1e-5)


@needs_kernel
@pytest.mark.parametrize("planted", ["garbage", "another build", "an old kernel of another width"])
def test_a_bad_cached_library_is_rebuilt(fresh_cache, planted, tmp_path_factory):
    target, cc, key = kernel.cached_library()
    target.parent.mkdir(parents=True, exist_ok=True)
    if planted == "garbage":
        target.write_bytes(b"\x7fELF not really a library" * 40)
    elif planted == "another build":
        kernel.compile_to(target, cc, "0123456789abcdef")
    else:  # what an earlier zipnet cached: one width per file, no build key
        src = tmp_path_factory.mktemp("old") / "old.c"
        src.write_text("int zn_blk(void) { return 8; }\nint zn_nparams(void) { return 10960; }\n")
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(target), str(src)], check=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rebuild that works says nothing
        found = kernel.load()
    assert found is not None and found.build == key
    # the file itself is healed (checked in a fresh process: this one keeps what it opened at that path)
    check = (
        f"import ctypes; lib = ctypes.CDLL({str(target)!r}); lib.zn_build.restype = ctypes.c_char_p; "
        "print(lib.zn_build().decode())"
    )
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True).stdout.strip() == key
    _trains_correctly()


@needs_kernel
def test_when_the_rebuild_fails_too_it_warns_once_and_trains_with_torch_ops(fresh_cache, monkeypatch):
    target, cc, key = kernel.cached_library()
    monkeypatch.setattr(
        kernel,
        "compile_to",
        lambda *a, **k: (_ for _ in ()).throw(
            subprocess.CalledProcessError(1, "cc", stderr=b"kernel.c: error: out of disk")
        ),
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unavailable.*out of disk.*torch ops"):
        assert kernel.load() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        (result,) = train(PAPER[:1], data(100, 50), passes=1, log=None)
    assert result.backend == "torch" and result.kernel_build == ""
    with pytest.raises(ValueError, match="trainer.backend.*'c' is not available"):
        train(PAPER[:1], data(100, 50), passes=1, log=None, backend="c")
