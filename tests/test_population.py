"""Many configurations as populations: grouping, and hydra/launcher=population against the basic launcher."""

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from zipnet import population
from zipnet.train import CONF_DIR

SMALL = ["data.n_train=300", "data.n_test=100", "trainer.passes=2", "tracking.enabled=false", "trainer.progress=off"]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_groups_split_on_data_trainer_and_table_only():
    key = lambda *o: population.group_key(_compose(list(o)))
    assert key("optim.lr=0.1", "model.init=linear", "seed=3", "loss.mse=sum", "model.activation=scaled_tanh",
               "data.target_positive=0.5") == key()
    for structural in ("data.n_train=100", "data.seed=2", "trainer.passes=3", "model.table=full"):
        assert key(structural) != key(), structural


def test_train_configs_keeps_order_and_skips_invalid_configs(capsys):
    cfgs = [_compose(SMALL + o) for o in (["optim.lr=0.03"], ["data.n_train=200"], ["optim.lr=-1"], ["seed=5"])]
    lines = []
    results = population.train_configs(cfgs, log=lines.append)
    assert results[2] is None  # its own job reports the error
    assert [len(r.history) for i, r in enumerate(results) if i != 2] == [2, 2, 2]
    assert len(lines) == 2 and "2 members" in lines[0] and "1 members" in lines[1]
    population.provide(cfgs, results)
    assert population.take(cfgs[3]) is results[3] and population.take(cfgs[3]) is None
    for cfg in cfgs:
        population.take(cfg)


def _multirun(tmp_path, name, *extra):
    args = [sys.executable, "-m", "zipnet.train", "-m", *SMALL, "optim.lr=0.01,0.03", "model.init=sqrt,linear",
            f"hydra.sweep.dir={tmp_path}/{name}", *extra]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((tmp_path / name).glob("*/metrics.json"), key=lambda p: int(p.parent.name))
    return proc, [json.loads(p.read_text())["history"] for p in jobs]


def test_population_launcher_jobs_equal_their_basic_launcher_runs(tmp_path):
    # lr <= 0.03: at 0.1 this tiny set is chaotic, and float rounding that differs between
    # batched and single matrix products grows into different misses within a pass
    proc, together = _multirun(tmp_path, "population", "hydra/launcher=population")
    assert "population 1/1: 4 members" in proc.stderr + proc.stdout
    _, alone = _multirun(tmp_path, "basic")
    assert len(together) == len(alone) == 4
    for a, b in zip(together, alone):
        assert [r["train/misses"] for r in a] == [r["train/misses"] for r in b]
        assert [r["test/misses"] for r in a] == [r["test/misses"] for r in b]
        for ra, rb in zip(a, b):
            assert ra["test/loss"] == pytest.approx(rb["test/loss"], rel=1e-5)
