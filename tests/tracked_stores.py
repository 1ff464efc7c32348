"""Small real stores for tracking tests: a grid and a sweep-like study, each a parent run with
children, made through the Tracker API from real tiny trainings (one population each)."""

from hydra import compose, initialize_config_dir

from zipnet import config as checks
from zipnet import tracking
from zipnet.cli.train import CONF_DIR
from zipnet.data import load_digits
from zipnet.engine import train

TINY = ["data.n_train=200", "data.n_test=100", "trainer.passes=2", "trainer.progress=off"]


def compose_config(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _train_and_log(tracker, jobs, parent, role, tags_of, name_of):
    """Train the jobs' configs as one population and log each member under `parent`."""
    cfgs = [compose_config(TINY + overrides) for overrides in jobs]
    digits = load_digits(cfgs[0].data)
    results = train([checks.member(c) for c in cfgs], digits, passes=cfgs[0].trainer.passes, log=None)
    ids = []
    for k, (overrides, cfg, result) in enumerate(zip(jobs, cfgs, results)):
        n = len(result.history)
        tags = {**tags_of(k), **tracking.population_tags([len(jobs)] * n, [k] * n)}
        ids.append(
            tracker.log_result(
                result,
                cfg,
                TINY + overrides,
                digits,
                parent_run_id=parent,
                tags=tags,
                run_name=name_of(k, overrides),
                role=role,
            )
        )
    return ids, results


def grid(tracker, jobs: list[list[str]]) -> tuple[str, list[str]]:
    """A Hydra-multirun-like parent (role multirun) with one child (role job) per override list."""
    parent = tracker.start("multirun tiny", role="multirun", watch=False)
    ids, _ = _train_and_log(
        tracker, jobs, parent, "job", lambda k: {"zipnet.job": str(k)}, lambda k, overrides: " ".join(overrides)
    )
    tracker.end(parent, "FINISHED")
    tracker.flush()
    return parent, ids


def _overrides(space: dict, params: dict) -> list[str]:
    out = []
    for key, value in params.items():
        out += space[key][value] if isinstance(space[key], dict) else [f"{key}={value}"]
    return out


def study(tracker, name: str, storage: str, space: dict, n_trials: int, seed: int = 0):
    """A sweep-like parent (role study) over a real Optuna study in `storage`: `n_trials` asked
    from `space` (per key a list of values, or a mapping of labels to override lists, as a
    study file links the target pair), trained as one population, told their final test error."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna_study = optuna.create_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed))
    distributions = {key: optuna.distributions.CategoricalDistribution(list(values)) for key, values in space.items()}
    trials = [optuna_study.ask(distributions) for _ in range(n_trials)]
    parent = tracker.start(name, role="study", tags={"zipnet.study": name, "zipnet.storage": storage}, watch=False)
    jobs = [_overrides(space, trial.params) for trial in trials]
    ids, results = _train_and_log(
        tracker,
        jobs,
        parent,
        "trial",
        lambda k: {"zipnet.study": name, "zipnet.trial": str(trials[k].number)},
        lambda k, overrides: f"{name} #{trials[k].number}",
    )
    for trial, result in zip(trials, results):
        optuna_study.tell(trial, result.history[-1]["test/error"])
    tracker.end(parent, "FINISHED")
    tracker.flush()
    return parent, ids, optuna_study
