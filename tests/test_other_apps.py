"""zipnet's Hydra plugins from another Hydra app (Hydra loads every plugin in `hydra_plugins`):
hydra/launcher=population against Hydra's own launcher suites, as Hydra's launcher plugins
(joblib, submitit, ray, rq) run them, a task function that is not zipnet's trainer running its
jobs one by one, and the sweeper's messages naming the sweeper, not zipnet-train."""

import subprocess
import sys
import textwrap

import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite


@pytest.mark.parametrize("launcher_name, overrides", [("population", [])])
class TestPopulationLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [({}, ["-m", "hydra/launcher=population"])])
class TestPopulationLauncherIntegration(IntegrationTestSuite):
    pass


def _sphere_app(tmp_path):
    app = tmp_path / "sphere.py"
    app.write_text(
        textwrap.dedent("""
            import hydra

            @hydra.main(version_base="1.3", config_path=None, config_name=None)
            def sphere(cfg):
                value = float(cfg.x) ** 2
                print(f"x={cfg.x} value={value}")
                return value

            if __name__ == "__main__":
                sphere()
        """)
    )
    return app


def test_another_apps_jobs_run_one_by_one_and_say_so(tmp_path):
    app = _sphere_app(tmp_path)
    command = [sys.executable, str(app), "-m", "hydra/launcher=population", "+x=1,2,3"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Running 3 jobs one by one: the task function is not zipnet's trainer" in proc.stdout + proc.stderr
    assert [ln for ln in proc.stdout.splitlines() if ln.startswith("x=")] == [
        "x=1 value=1.0",
        "x=2 value=4.0",
        "x=3 value=9.0",
    ]


def test_the_sweepers_errors_name_the_sweeper_in_another_app(tmp_path):
    app = _sphere_app(tmp_path)
    command = [sys.executable, str(app), "-m", "hydra/sweeper=zipnet_optuna", "hydra.sweeper.n_trials=0", "+x=1,2"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert line.startswith("hydra/sweeper=zipnet_optuna: error: hydra.sweeper: n_trials:"), line
    assert "zipnet-train" not in proc.stderr and "Traceback" not in proc.stderr
