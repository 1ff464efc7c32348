"""examples/optuna_sweeper/: hydra-optuna-sweeper's documented examples (one objective, two
objectives, a custom search space), written anew for hydra/sweeper=zipnet_optuna, each run as
a user runs it against a real sqlite storage; and custom_search_space's contract: what the
function returns is fixed, what it cannot do is said in one line."""

import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "optuna_sweeper"


def run_example(tmp_path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    """`python examples/optuna_sweeper/NAME.py -m` from tmp_path, its study in tmp_path/optuna.db."""
    command = [
        sys.executable,
        str(EXAMPLES / f"{name}.py"),
        "-m",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
    ]
    return subprocess.run([*command, *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=300)


def study_of(tmp_path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db")


def test_the_sphere_example_minimises_one_value(tmp_path):
    proc = run_example(tmp_path, "sphere", "hydra.sweeper.n_trials=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = study_of(tmp_path, "sphere")
    assert [d.name for d in study.directions] == ["MINIMIZE"] and len(study.trials) == 8
    for t in study.trials:
        assert t.state == TrialState.COMPLETE and -4 <= t.params["x"] <= 4 and t.params["y"] in (-2, -1, 0, 1, 2)
        assert t.value == pytest.approx(t.params["x"] ** 2 + t.params["y"] ** 2)
    best = study.best_trial
    assert f"best value {best.value:.4g} (trial {best.number}: " in proc.stdout + proc.stderr


def test_the_multi_objective_example_keeps_its_pareto_front(tmp_path):
    proc = run_example(tmp_path, "multi_objective", "hydra.sweeper.n_trials=12")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = study_of(tmp_path, "two_points")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"] and len(study.trials) == 12
    for t in study.trials:
        x, y = t.params["x"], t.params["y"]
        assert t.state == TrialState.COMPLETE
        assert t.values == pytest.approx([(x + 1) ** 2 + y**2, (x - 1) ** 2 + y**2])
    front = study.best_trials
    assert front and f"12/12 trials (12 complete, 0 pruned, 0 failed); {len(front)} trials on the Pareto front" in (
        proc.stdout + proc.stderr
    )
    beats = lambda a, b: all(u <= v for u, v in zip(a.values, b.values)) and a.values != b.values  # noqa: E731
    for t in front:  # no trial beats a front trial; every trial off the front is beaten by one on it
        assert not any(beats(o, t) for o in study.trials)
    on_front = {t.number for t in front}
    for t in (t for t in study.trials if t.number not in on_front):
        assert any(beats(f, t) for f in front)


def test_the_custom_search_space_example_searches_z_near_x(tmp_path):
    proc = run_example(tmp_path, "custom_search_space", "hydra.sweeper.n_trials=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = study_of(tmp_path, "near")
    assert len(study.trials) == 8
    for t in study.trials:
        x, z, w = t.params["x"], t.params["z"], t.params["+w"]
        assert t.state == TrialState.COMPLETE and abs(z - x) <= 0.5 and 0 <= w <= 1
        assert t.value == pytest.approx(x**2 + (z - 0.5) ** 2 + w)  # the job got z and +w as overrides
    assert "+w=" in proc.stdout + proc.stderr  # the summary's best names the suggested keys


def _app(tmp_path, configure: str, extra: str = "") -> Path:
    """A plain app whose custom_search_space function is `configure` in space.py beside it."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(
        textwrap.dedent(f"""\
            defaults:
              - override hydra/sweeper: zipnet_optuna
              - _self_
            x: 0.0
            y: 0.0
            kind: plain
            hydra:
              sweeper:
                n_trials: 6
                n_jobs: 3
                storage: sqlite:///{tmp_path}/optuna.db
                study_name: space
                sampler: {{_target_: optuna.samplers.RandomSampler, seed: 0}}
                params:
                  x: interval(-1, 1)
                custom_search_space: space.configure
        """)
        + textwrap.indent(textwrap.dedent(extra), "    ")
    )
    (tmp_path / "space.py").write_text(textwrap.dedent(configure))
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent("""
            import hydra

            @hydra.main(version_base="1.3", config_path="conf", config_name="config")
            def app(cfg):
                return cfg.x + 10 * cfg.y + (100 if cfg.kind == "wide" else 0) + cfg.get("extra", 0)

            if __name__ == "__main__":
                app()
        """)
    )
    return app


def _sweep(tmp_path, app: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(app), "-m", *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def test_what_the_function_returns_is_fixed_and_what_it_suggests_is_searched(tmp_path):
    """Define-by-run: a parameter only some trials have (+extra for x > 0), and overrides that
    follow from the draw (y = x / 2, kind), kept on the trial and given to its job."""
    app = _app(
        tmp_path,
        """
        def configure(cfg, trial):
            x = trial.params["x"]
            if x > 0:
                trial.suggest_int("+extra", 1, 3)
            return {"y": round(x / 2, 6), "kind": "wide" if x > 0 else cfg.kind}
        """,
    )
    proc = _sweep(tmp_path, app)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_of(tmp_path, "space").trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.params["x"] > 0 for t in trials} == {True, False}  # both branches ran
    for t in trials:
        x, fixed = t.params["x"], t.user_attrs["zipnet.fixed"]
        assert fixed == {"y": round(x / 2, 6), "kind": "wide" if x > 0 else "plain"}
        assert set(t.params) == ({"x", "+extra"} if x > 0 else {"x"})  # what it returns is not searched
        extra = t.params.get("+extra", 0)
        assert t.value == pytest.approx(x + 10 * round(x / 2, 6) + (100 if x > 0 else 0) + extra)


@pytest.mark.parametrize(
    "configure, text",
    [
        ("configure = None\n", "'space.configure' is a NoneType, not a function"),
        ("def other(cfg, trial):\n    return None\n", "'space.configure' does not import"),
    ],
)
def test_a_bad_custom_search_space_is_one_line_naming_the_key_and_the_sweeper(tmp_path, configure, text):
    app = _app(tmp_path, configure)
    proc = _sweep(tmp_path, app)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("hydra/sweeper=zipnet_optuna: error: hydra.sweeper: custom_search_space: "), line
    assert text in line and "give hydra.sweeper.custom_search_space the dotted path of a function" in line
    assert "zipnet-train" not in proc.stderr and not (tmp_path / "optuna.db").exists()  # before any trial


def test_a_missing_module_is_named_on_the_command_line_too(tmp_path):
    app = _app(tmp_path, "def configure(cfg, trial):\n    return None\n")
    proc = _sweep(tmp_path, app, "hydra.sweeper.custom_search_space=nowhere.configure")
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("hydra/sweeper=zipnet_optuna: error: hydra.sweeper: custom_search_space: 'nowhere.")
    assert "No module named 'nowhere'" in line


@pytest.mark.parametrize(
    "body, text",
    [
        ("raise KeyError('band')", "space.configure raised KeyError: 'band' (trial 0)"),
        ("return [1, 2]", "space.configure returned [1, 2]; give back None or a dict"),
        ("trial.suggest_float('z', 0, 1)\n    return {'z': 0.5}", "returned 'z', which it also suggested"),
        ("return {'y': 1.0}", "sets 'y', which a fixed override sets already"),
    ],
)
def test_a_function_that_fails_stops_the_sweep_in_one_line_and_its_trial_is_not_counted(tmp_path, body, text):
    app = _app(tmp_path, f"def configure(cfg, trial):\n    {body}\n")
    proc = _sweep(tmp_path, app, "y=2.0")
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("hydra/sweeper=zipnet_optuna: error: hydra.sweeper: custom_search_space: "), line
    assert text in line
    (trial,) = study_of(tmp_path, "space").trials  # the first trial asked, failed and left out of the count
    assert trial.state == TrialState.FAIL and trial.user_attrs["zipnet.surplus"] is True


def test_a_suggested_key_that_does_not_compose_fails_its_trial_before_launch(tmp_path):
    app = _app(
        tmp_path,
        """
        def configure(cfg, trial):
            if trial.params["x"] > 0:
                trial.suggest_float("nokey", 0, 1)   # not in the config, and no +
        """,
        extra="""\
        max_failure_rate: 1.0
        """,
    )
    proc = _sweep(tmp_path, app)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_of(tmp_path, "space").trials
    assert len(trials) == 6 and {t.params["x"] > 0 for t in trials} == {True, False}
    for t in trials:
        if t.params["x"] > 0:
            reason = t.user_attrs["zipnet.fail_reason"]
            assert t.state == TrialState.FAIL and reason.startswith("custom_search_space: x=") and "nokey" in reason
        else:
            assert t.state == TrialState.COMPLETE and t.value == pytest.approx(t.params["x"])
    ran = [p for p in (tmp_path / "multirun").glob("*/*/*") if (p / ".hydra").is_dir()]
    assert len(ran) == sum(t.state == TrialState.COMPLETE for t in trials)  # a failed trial never launched
