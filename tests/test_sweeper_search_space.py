"""custom_search_space through `zipnet-train -m`: zipnet's trainer takes the function's
suggestions and fixed overrides as any app does, checks them as it checks every value (a trial
whose overrides zipnet refuses fails before it trains), and names zipnet-train in its errors."""

from optuna.trial import TrialState
from sweep_helpers import TINY, load, runs, study_args, zipnet

SPACE = """
def configure(cfg, trial):
    init = trial.params["model.init"]
    if init == "sqrt":  # only sqrt trials search the loss's reduction
        trial.suggest_categorical("loss.mse", ["mean", "sum"])
    return {"optim.lr": 0.05 if init == "sqrt" else -1.0}  # linear: a value zipnet refuses
"""


def test_the_trainer_takes_a_custom_search_space_and_checks_its_values(tmp_path):
    (tmp_path / "space.py").write_text(SPACE)  # zipnet-train runs in tmp_path: `space` imports from there
    args = [
        *study_args("custom", n_trials=4, batch=2, max_failure_rate=1.0),
        "hydra.sweeper.custom_search_space=space.configure",
        *TINY,
        "model.init=choice(sqrt,linear)",
    ]
    proc = zipnet(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = load(tmp_path, "custom").get_trials()
    assert len(trials) == 4 and {t.params["model.init"] for t in trials} == {"sqrt", "linear"}
    _, _, children = runs(tmp_path, "custom")
    by_trial = {int(c.data.tags["zipnet.trial"]): c for c in children}
    for t in trials:
        if t.params["model.init"] == "sqrt":
            run = by_trial[t.number]
            assert t.state == TrialState.COMPLETE and t.user_attrs["zipnet.fixed"] == {"optim.lr": 0.05}
            assert run.data.params["loss.mse"] == t.params["loss.mse"] and float(run.data.params["optim.lr"]) == 0.05
        else:  # refused by zipnet's checks before it trained: no run
            assert t.state == TrialState.FAIL and set(t.params) == {"model.init"} and t.number not in by_trial
            reason = t.user_attrs["zipnet.fail_reason"]
            assert reason.startswith("custom_search_space: ") and "optim.lr=-1.0" in reason and "optim.lr" in reason


def test_a_bad_custom_search_space_names_zipnet_train_when_zipnet_train_ran(tmp_path):
    args = [
        *study_args("bad"),
        "hydra.sweeper.custom_search_space=nowhere.configure",
        *TINY,
        "model.init=choice(sqrt,linear)",
    ]
    proc = zipnet(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert line.startswith("zipnet-train: error: hydra.sweeper: custom_search_space: 'nowhere.configure' does not"), (
        line
    )
    assert "hydra.sweeper.custom_search_space" in line and "Traceback" not in proc.stderr
