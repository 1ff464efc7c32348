"""zipnet-reproduce across backends: a run the kernel trained, rerun where only torch ops are
allowed (ZIPNET_KERNEL=0, as on a machine without a compiler), is reproduced within the stated
tolerance, and says so, instead of crying wolf."""

import os
import subprocess
import sys

import pytest
from sweep_helpers import env_for


def _run(cwd, *args, **env):
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env={**env_for(cwd), **env}, capture_output=True, text=True, timeout=600
    )


def test_a_kernel_run_rerun_on_torch_ops_is_reproduced_within_tolerance(tmp_path):
    from zipnet.engine import kernel

    if kernel.load() is None:
        pytest.skip("no compiled kernel here: nothing to compare torch ops against")
    trained = _run(
        tmp_path,
        "zipnet.cli.train",
        "data.n_train=300",
        "data.n_test=100",
        "trainer.passes=2",
        "optim.lr=0.01",
        "tracking.figures=false",
        "trainer.progress=off",
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    run_id = trained.stdout.strip().splitlines()[-1].split()[2]
    from mlflow import MlflowClient

    tags = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").get_run(run_id).data.tags
    assert tags["zipnet.backend"] == "c" and tags["zipnet.kernel_build"] and tags["zipnet.cpu"]

    same = _run(tmp_path, "zipnet.cli.reproduce", run_id)
    assert same.returncode == 0 and f"run {run_id}: reproduced exactly" in same.stdout, same.stdout + same.stderr

    other = _run(tmp_path, "zipnet.cli.reproduce", run_id, ZIPNET_KERNEL="0")
    out = other.stdout + other.stderr
    assert other.returncode == 0, out
    assert "another backend or CPU: backend c -> torch" in out and "kernel_build" in out
    assert f"run {run_id}: reproduced within tolerance (backend c -> torch)" in out
    for key in ("train/misses", "test/misses", "train/error", "test/error"):  # still exactly
        assert any(line.strip().startswith(key) and "match (2 passes)" in line for line in out.splitlines()), out
    assert os.environ.get("ZIPNET_KERNEL") != "0"
