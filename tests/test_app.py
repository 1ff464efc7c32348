"""The Hydra app: every config group composes, bad values fail clearly, a short run learns."""

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from zipnet import config as checks
from zipnet.cli.train import CONF_DIR, run
from zipnet.errors import ConfigError

SMALL = ["data.n_train=500", "data.n_test=500", "trainer.passes=1"]


def _compose(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "model", "loss", "optim", "trainer"])
def test_every_option_of_every_group_composes_and_validates(group):
    assert _options(group), f"conf/{group} has no options"
    for option in _options(group):
        cfg = _compose([f"{group}={option}"])
        checks.member(cfg)
        checks.trainer(cfg)
        text = (CONF_DIR / group / f"{option}.yaml").read_text().removeprefix("# @package _global_\n")
        assert text.startswith("# zipnet-train"), f"conf/{group}/{option}.yaml lacks its header command"


def test_defaults_are_the_seeds_settings():
    cfg = _compose()
    m = checks.member(cfg)
    assert (m.init.init, m.activation, m.mse, m.table, m.optim.name, m.optim.lr) == (
        "sqrt",
        "tanh",
        "mean",
        "block",
        "sgd",
        0.03,
    )
    assert (cfg.data.source, cfg.data.n_train, cfg.data.n_test, cfg.trainer.passes) == ("embedded", 7291, 2007, 23)


def test_overrides_reach_the_member():
    cfg = _compose(
        ["model.init=linear", "loss.mse=half_sum", "optim.lr=0.01", "trainer.passes=5", "model.activation=scaled_tanh"]
    )
    m = checks.member(cfg)
    assert (m.init.init, m.mse, m.optim.lr, m.activation) == ("linear", "half_sum", 0.01, "scaled_tanh")
    assert checks.trainer(cfg)["passes"] == 5


@pytest.mark.parametrize(
    "override,key,allowed",
    [
        ("model.init=foo", "model.init", "sqrt, linear"),
        ("model.activation=sigmoid", "model.activation", "tanh, scaled_tanh, relu"),
        ("model.table=diag", "model.table", "block, random, full"),
        ("loss.mse=l1", "loss.mse", "mean, sum, half_sum"),
        ("optim.lr=-0.1", "optim.lr", "> 0"),
        ("optim.lr=abc", "optim.lr", "finite number"),
        ("trainer.passes=0", "trainer.passes", ">= 1"),
        ("trainer.device=tpu", "trainer.device", "cpu, cuda"),
        ("trainer.backend=fortran", "trainer.backend", "auto, torch, c"),
        ("model.fan_in_bias=maybe", "model.fan_in_bias", "true, false"),
        ("data.target_negative=2", "data.target_negative", "below"),
    ],
)
def test_invalid_values_name_the_key_and_what_is_allowed(override, key, allowed):
    cfg = _compose([override])
    with pytest.raises(ConfigError) as err:
        checks.member(cfg)
        checks.trainer(cfg)
    assert err.value.key == key and allowed in str(err.value)


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "zipnet.cli.train", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "override,expect",
    [
        ("model.init=foo", "model.init: 'foo' is not allowed; choose one of sqrt, linear"),
        ("optim.lr=-1", "optim.lr: -1 is not allowed; give a number > 0"),
        ("data.n_train=9000", "data.n_train"),
        ("model.nope=1", "nope"),
        ("optim=nesterov", "optim"),
    ],
)
def test_cli_rejects_bad_values_with_a_clear_message(tmp_path, override, expect):
    proc = _cli(override, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode != 0
    assert expect in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_refuses_a_deslant_that_is_not_a_boolean_in_one_line(tmp_path):
    proc = _cli(
        "data.deslant=maybe", "data.n_train=100", "data.n_test=50", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["zipnet-train: error: data.deslant: 'maybe' is not allowed; choose one of true, false"]


def test_cli_trains_and_writes_the_run_directory(tmp_path):
    proc = _cli(*SMALL, "optim.lr=0.03", f"hydra.run.dir={tmp_path}/run", "trainer.progress=off", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "eval: split train. loss " in proc.stdout and "eval: split test . loss " in proc.stdout
    run_dir = tmp_path / "run"
    resolved = OmegaConf.load(run_dir / "config_resolved.yaml")
    assert resolved.data.n_train == 500 and "${" not in (run_dir / "config_resolved.yaml").read_text()
    assert "data.n_train=500" in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert len(history) == 1 and history[0]["pass"] == 1


def test_same_config_in_two_processes_gives_bit_identical_metrics(tmp_path):
    args = ["data.n_train=300", "data.n_test=100", "trainer.passes=2", "seed=4", "data.seed=7", "trainer.progress=off"]
    outs = []
    for name in ("a", "b"):
        proc = _cli(*args, f"hydra.run.dir={tmp_path}/{name}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        outs.append(json.loads((tmp_path / name / "metrics.json").read_text()))

    def strip(h):
        return [{k: v for k, v in row.items() if k not in ("seconds", "eval_seconds")} for row in h["history"]]

    assert strip(outs[0]) == strip(outs[1])
    assert outs[0]["data_fingerprint"] == outs[1]["data_fingerprint"]


def test_one_pass_on_500_digits_is_far_below_chance():
    result = run(_compose(SMALL + ["trainer.progress=off"]), log=lambda line: None)
    assert result.status == "finished"
    assert result.history[0]["test/error"] < 50.0  # chance is 90%


def test_a_diverging_run_stops_cleanly_with_its_pass(tmp_path):
    lines = []
    cfg = _compose(
        [
            "data.n_train=200",
            "data.n_test=50",
            "trainer.passes=3",
            "optim.lr=3e38",
            "loss.mse=sum",
            "trainer.progress=off",
        ]
    )
    result = run(cfg, log=lines.append)
    assert result.status == "diverged" and result.diverged_at_pass == 1
    assert any("diverged at pass 1" in line for line in lines)


@pytest.mark.parametrize(
    "overrides,expect",
    [
        (["trainer.device=cuda"], "trainer.device: 'cuda' asked for, but no CUDA device is available; use cpu"),
        (
            ["loss=cross_entropy", "model.output=squash"],
            "model.output: 'squash' is not allowed with loss=cross_entropy",
        ),
    ],
)
def test_a_value_this_machine_or_loss_cannot_use_is_refused_before_a_run_exists(tmp_path, overrides, expect):
    import torch

    if "trainer.device=cuda" in overrides and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = _cli(*overrides, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)  # tracking on
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("zipnet-train: error:")] == [
        f"zipnet-train: error: {expect}" + proc.stderr.split(expect, 1)[1].splitlines()[0]
    ]
    db = tmp_path / "mlruns" / "mlflow.db"
    if db.exists():  # the store may exist; it holds no run
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_loss_cross_entropy_makes_the_outputs_linear():
    cfg = _compose(["loss=cross_entropy"])
    assert (cfg.loss.name, cfg.model.output) == ("cross_entropy", "linear")
    checks.member(cfg)
