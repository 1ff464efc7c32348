"""examples/hparams_search/: lightning-hydra-template's `hparams_search` pattern (a `# @package
_global_` file that overrides /hydra/sweeper and names `optimized_metric`) on a tiny plain app,
composed with Hydra's compose API and run as a user runs it, against a real sqlite storage."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from optuna.trial import TrialState

APP = Path(__file__).resolve().parents[1] / "examples" / "hparams_search"


def _train_module():
    spec = importlib.util.spec_from_file_location("hparams_search_train", APP / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compose(overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=str(APP / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=hydra)


def test_the_hparams_search_file_chooses_the_sweeper_and_names_the_metric():
    cfg = _compose(["hparams_search=line_optuna"], hydra=True)
    assert cfg.optimized_metric == "val/loss" and cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.runtime.choices["hydra/sweeper"] == "zipnet_optuna"
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.zipnet_optuna.zipnet_optuna_sweeper.ZipnetOptunaSweeper"
    assert sweeper.sampler == {"_target_": "optuna.samplers.TPESampler", "seed": 1234, "n_startup_trials": 8}
    assert dict(sweeper.params) == {"optim.lr": "interval(0.001, 0.5)", "trainer.batch_size": "choice(4, 8, 16, 32)"}
    assert _compose([]).optimized_metric is None  # without the file: one run, nothing to optimise


def test_the_hparams_search_study_optimises_the_metric_the_config_names(tmp_path):
    command = [
        sys.executable,
        str(APP / "train.py"),
        "hparams_search=line_optuna",  # no -m: the file sets hydra.mode
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        "hydra.sweeper.n_trials=6",
        "trainer.steps=30",
    ]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="line", storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = study.trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert "study 'line': 6/6 trials (6 complete" in proc.stdout + proc.stderr
    train = _train_module()
    for t in trials:  # each trial's value is its run's val/loss, as a run with its params measures it
        assert 0.001 <= t.params["optim.lr"] <= 0.5 and t.params["trainer.batch_size"] in (4, 8, 16, 32)
        cfg = _compose(
            [
                "trainer.steps=30",
                f"optim.lr={t.params['optim.lr']!r}",
                f"trainer.batch_size={t.params['trainer.batch_size']}",
            ]
        )
        assert t.value == pytest.approx(train.fit(cfg)["val/loss"], rel=1e-12)
