"""zipnet's Hydra plugins from another Hydra app (Hydra loads every plugin in `hydra_plugins`):
hydra/launcher=population against Hydra's own launcher suites, as Hydra's launcher plugins
(joblib, submitit, ray, rq) run them, a task function that is not zipnet's trainer running its
jobs one by one, and the sweeper's messages naming the sweeper, not zipnet-train."""

import subprocess
import sys
import textwrap

import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite


@pytest.fixture(autouse=True)
def unspecified_version_base():
    """Hydra's suites run their apps with no version_base given (Hydra 1.1's defaults: a job
    changes into its folder). A zipnet app run earlier in this process set Hydra's process-wide
    version base to 1.3; each test here starts without it and puts it back."""
    from hydra import version

    base = version.VersionBase.instance()
    before, base.version_base = base.version_base, version._UNSPECIFIED_
    yield
    base.version_base = before


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


SPHERE_CONFIG = """\
defaults:
  - override hydra/sweeper: zipnet_optuna
  - _self_
x: 1.0
y: 1.0
hydra:
  sweeper:
    n_trials: 8
    n_jobs: 3
    storage: sqlite:///{db}
    study_name: sphere
    sampler: {{name: random, seed: 0}}
    params:
      x: range(-5.5, 5.5, step=0.5)
      y: interval(-5, 5)
"""


def _configured_sphere(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(SPHERE_CONFIG.format(db=tmp_path / "optuna.db"))
    app = tmp_path / "sphere.py"
    app.write_text(
        textwrap.dedent("""
            import hydra

            @hydra.main(version_base="1.3", config_path="conf", config_name="config")
            def sphere(cfg):
                if cfg.x == 5.0:
                    raise ValueError("x is at the edge")
                return cfg.x**2 + cfg.y**2

            if __name__ == "__main__":
                sphere()
        """)
    )
    return app


def test_the_sweeper_optimises_another_apps_return_value(tmp_path):
    """The sphere example of hydra-optuna-sweeper's documentation, written anew: the task
    function's return value is each trial's value, and a job that raises fails its trial."""
    import optuna
    from optuna.trial import TrialState

    app = _configured_sphere(tmp_path)
    proc = subprocess.run([sys.executable, str(app), "-m"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="sphere", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 8
    for t in study.trials:
        assert -5.5 <= t.params["x"] <= 5.0 and (t.params["x"] * 2).is_integer() and -5 <= t.params["y"] <= 5
        if t.params["x"] == 5.0:
            assert t.state == TrialState.FAIL and "x is at the edge" in t.user_attrs["zipnet.fail_reason"]
        else:
            assert t.state == TrialState.COMPLETE and t.value == pytest.approx(t.params["x"] ** 2 + t.params["y"] ** 2)
    assert "mlruns" not in {p.name for p in tmp_path.iterdir()}  # another app's study is not tracked in MLflow
    assert "; best value " in proc.stderr + proc.stdout


def test_two_workers_of_another_app_stop_at_exactly_n_trials(tmp_path):
    import optuna

    app = _configured_sphere(tmp_path)
    command = [sys.executable, str(app), "-m", "hydra.sweeper.n_trials=12", "hydra.sweeper.n_jobs=2"]
    procs = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    study = optuna.load_study(study_name="sphere", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 12  # nothing asked past the target
    assert all(any("batch: trials" in line for line in o.splitlines()) for o in outs)  # both worked


def test_another_app_reports_per_step_and_is_pruned_through_current_trial(tmp_path):
    """A plain app's task function reports a curve per step through `current_trial()` (Optuna's
    own Trial) and raises TrialPruned when told: the study keeps its intermediate values, and
    the median pruner stops the trials whose curves run above the others'."""
    import optuna
    from optuna.trial import TrialState

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(
        textwrap.dedent(f"""\
            defaults:
              - override hydra/sweeper: zipnet_optuna
              - _self_
            level: 0.0
            hydra:
              sweeper:
                n_trials: 12
                n_jobs: 4
                storage: sqlite:///{tmp_path / "optuna.db"}
                study_name: curves
                sampler: {{name: random, seed: 0}}
                pruner: {{name: median, n_startup_trials: 4, n_warmup_steps: 1}}
                params:
                  level: interval(0, 10)
        """)
    )
    app = tmp_path / "curves.py"
    app.write_text(
        textwrap.dedent("""
            import hydra
            import optuna

            from zipnet.sweeps import current_trial

            @hydra.main(version_base="1.3", config_path="conf", config_name="config")
            def curves(cfg):
                trial = current_trial()
                for step in range(5):
                    value = cfg.level + 1.0 / (step + 1)
                    trial.report(value, step)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
                return value

            if __name__ == "__main__":
                curves()
        """)
    )
    proc = subprocess.run([sys.executable, str(app), "-m"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="curves", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = study.trials
    assert len(trials) == 12 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete and all(len(t.intermediate_values) == 5 for t in complete)
    for t in pruned:  # stopped after its warm-up, at a step where it ran above the median before it
        last = max(t.intermediate_values)
        assert 1 <= last <= 4 and len(t.intermediate_values) == last + 1
        assert t.intermediate_values[last] == pytest.approx(t.params["level"] + 1.0 / (last + 1))
    for t in complete:
        assert t.value == pytest.approx(t.params["level"] + 0.2)


def test_several_objectives_from_another_app(tmp_path):
    """A task that returns two values, one per direction: each trial keeps both, and the study
    a Pareto front."""
    import optuna
    from optuna.trial import TrialState

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(
        textwrap.dedent(f"""\
            defaults:
              - override hydra/sweeper: zipnet_optuna
              - _self_
            x: 0.0
            y: 0.0
            hydra:
              sweeper:
                direction: [minimize, minimize]
                n_trials: 10
                n_jobs: 5
                storage: sqlite:///{tmp_path / "optuna.db"}
                study_name: two
                sampler: {{_target_: optuna.samplers.NSGAIISampler, seed: 0}}
                params:
                  x: interval(0, 5)
                  y: interval(0, 3)
        """)
    )
    app = tmp_path / "binh_korn.py"
    app.write_text(
        textwrap.dedent("""
            import hydra

            @hydra.main(version_base="1.3", config_path="conf", config_name="config")
            def binh_korn(cfg):
                return 4 * cfg.x**2 + 4 * cfg.y**2, (cfg.x - 5) ** 2 + (cfg.y - 5) ** 2

            if __name__ == "__main__":
                binh_korn()
        """)
    )
    proc = subprocess.run([sys.executable, str(app), "-m"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert len(study.trials) == 10 and all(t.state == TrialState.COMPLETE for t in study.trials)
    for t in study.trials:
        x, y = t.params["x"], t.params["y"]
        assert t.values == pytest.approx([4 * x**2 + 4 * y**2, (x - 5) ** 2 + (y - 5) ** 2])
    front = study.best_trials
    assert front and f"{len(front)} trials on the Pareto front" in proc.stdout + proc.stderr
    for t in front:  # no trial is better on both objectives
        assert not any(o.values[0] < t.values[0] and o.values[1] < t.values[1] for o in study.trials)
