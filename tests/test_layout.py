"""The layout: the generic sweeper (the override grammar, the study, the workers' asks, heartbeats
and counts, the Hydra plugin) serves any Hydra app, so it loads nothing of zipnet's trainer. What
only the trainer needs (zipnet/sweeps/trial.py, zipnet.config's checks) is imported where it runs."""

import json
import subprocess
import sys

import pytest

GENERIC = (
    "hydra_plugins.zipnet_optuna.zipnet_optuna_sweeper",
    "zipnet.overrides",
    "zipnet.sweeps",
    "zipnet.sweeps.study",
    "zipnet.sweeps.storage",
    "zipnet.sweeps.heartbeat",
    "zipnet.sweeps.snapshot",
    "zipnet.sweeps.pruning",
    "zipnet.sweeps.sweep",
    "zipnet.sweeps.app_trial",
    "zipnet.sweeps.search_space",
)
TRAINER = ("torch", "zipnet.engine", "zipnet.runner", "zipnet.config", "zipnet.sweeps.trial")


def test_the_generic_sweeper_imports_nothing_of_the_trainer():
    code = (
        "import importlib, json, sys\n"
        f"for name in {GENERIC!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.splitlines()[-1])
    assert set(GENERIC) <= set(loaded)  # the check saw every generic module
    assert [m for m in loaded if m in TRAINER or m.startswith("zipnet.engine.")] == []


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=population"]], ids=["basic", "population"])
def test_a_plain_apps_study_runs_without_loading_the_trainer(tmp_path, launcher):
    """End to end: a plain app's sweep under Hydra's basic launcher and under zipnet's population
    launcher (which runs a plain app's jobs one by one), its task function looking at what the
    process holds while the sweeper runs it."""
    app = tmp_path / "app.py"
    app.write_text(
        "import json, sys\n"
        "import hydra\n\n"
        '@hydra.main(version_base="1.3", config_path=None, config_name=None)\n'
        "def app(cfg):\n"
        f"    held = [m for m in sys.modules if m in {TRAINER!r} or m.startswith('zipnet.engine.')]\n"
        "    print('loaded', json.dumps(held))\n"
        "    return float(cfg.x)\n\n"
        'if __name__ == "__main__":\n'
        "    app()\n"
    )
    command = [
        sys.executable,
        str(app),
        "-m",
        "hydra/sweeper=zipnet_optuna",
        "+x=interval(0,1)",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        *launcher,
    ]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [ln for ln in proc.stdout.splitlines() if ln.startswith("loaded")] == ["loaded []"] * 2
