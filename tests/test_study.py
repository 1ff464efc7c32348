"""Study definitions: the sweeper's form (Hydra's override grammar), the first schema read as it
was, the shipped presets, and every error naming where and which key."""

import subprocess
import sys
from pathlib import Path

import optuna.distributions as D
import pytest
import yaml
from omegaconf import OmegaConf

from zipnet.config import Composer, override_value
from zipnet.sweeps.study import SweepError, check, from_legacy, from_sweeper, load_file

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "data" / "legacy_study.yaml"
BASE = {"study_name": "s", "n_trials": 6, "batch": 3}


def test_the_grammar_becomes_optuna_distributions():
    spec = from_sweeper(
        {
            **BASE,
            "params": {
                "model.init": "choice(sqrt, linear)",
                "optim.lr": "tag(log, interval(0.001, 0.3))",
                "data.seed": "range(0, 3)",
                "trainer.passes": "tag(int, interval(1, 5))",
                "targets": "pm1.0,pm0.6",
            },
        },
        ["seed=2", "loss.mse=choice(mean,sum)"],
    )
    d = {n: p.distribution for n, p in spec.params.items()}
    assert d["model.init"] == D.CategoricalDistribution(["sqrt", "linear"])
    assert d["optim.lr"] == D.FloatDistribution(0.001, 0.3, log=True)
    assert d["data.seed"] == D.IntDistribution(0, 2)
    assert d["trainer.passes"] == D.IntDistribution(1, 5)
    assert d["targets"] == D.CategoricalDistribution(["pm1.0", "pm0.6"])
    assert d["loss.mse"] == D.CategoricalDistribution(["mean", "sum"])  # a sweep on the command line joins
    assert spec.fixed == ["seed=2"]  # a plain override is fixed for every trial
    assert spec.trial_overrides(
        {
            "model.init": "linear",
            "optim.lr": 0.01,
            "data.seed": 1,
            "trainer.passes": 2,
            "targets": "pm0.6",
            "loss.mse": "sum",
        }
    ) == ["model.init=linear", "optim.lr=0.01", "data.seed=1", "trainer.passes=2", "targets=pm0.6", "loss.mse=sum"]


def test_a_range_steps_below_its_stop_with_integer_or_float_bounds():
    """Hydra's meaning of range (start, start + step, ... below stop), for ints and floats alike."""
    params = {"k": "range(1, 10, 3)", "x": "range(-5.5, 5.5, step=0.5)", "y": "range(0, 1, 0.1)"}
    d = {n: p.distribution for n, p in from_sweeper({**BASE, "params": params}, []).params.items()}
    assert d["k"] == D.IntDistribution(1, 7, step=3)
    assert d["x"] == D.FloatDistribution(-5.5, 5.0, step=0.5)
    assert d["y"] == D.FloatDistribution(0.0, 0.9, step=0.1)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for name in ("k", "x", "y"):  # the values Hydra's basic sweeper walks are the distribution's grid
        walked = list(parser.parse_override(f"{name}={params[name]}").sweep_iterator())
        dist = d[name]
        grid = [dist.low + i * dist.step for i in range(round((dist.high - dist.low) / dist.step) + 1)]
        assert grid == pytest.approx(walked)
    with pytest.raises(SweepError, match="positive step"):
        from_sweeper({**BASE, "params": {"x": "range(1.5, 0.5)"}}, [])


def test_n_jobs_is_hydra_optuna_sweepers_name_for_batch():
    conf = {"study_name": "s", "n_trials": 6, "params": {"optim.lr": "interval(0.01, 0.1)"}}
    assert from_sweeper({**conf, "n_jobs": 3}, []).batch == 3
    assert from_sweeper({**conf, "batch": 4, "n_jobs": None}, []).batch == 4
    assert from_sweeper({**conf, "batch": None, "n_jobs": None}, []).batch == 16  # neither: the default
    with pytest.raises(SweepError) as both:
        from_sweeper({**conf, "batch": 4, "n_jobs": 3}, [])
    assert str(both.value).splitlines() == [str(both.value)] and "n_jobs" in str(both.value)
    assert "not both" in str(both.value)


def test_a_sampler_given_by_target_as_hydra_optuna_sweeper_writes_it():
    conf = {"study_name": "s", "n_trials": 6, "params": {"optim.lr": "interval(0.01, 0.1)"}}
    target = {"_target_": "optuna.samplers.TPESampler", "seed": 123, "n_startup_trials": 5}
    spec = from_sweeper({**conf, "sampler": target}, [])
    assert spec.sampler == {"name": "tpe", "seed": 123, "n_startup_trials": 5}
    with pytest.raises(SweepError, match=r"sampler\._target_: 'optuna.samplers.GridSampler' is not allowed"):
        from_sweeper({**conf, "sampler": {"_target_": "optuna.samplers.GridSampler"}}, [])
    with pytest.raises(SweepError, match=r"sampler\.n_startup: unknown setting of the tpe sampler"):
        from_sweeper({**conf, "sampler": {"_target_": "optuna.samplers.TPESampler", "n_startup": 5}}, [])


def test_a_file_in_the_first_schema_still_loads_as_it_did():
    spec = from_legacy(LEGACY, load_file(LEGACY))
    assert spec.study_name == "paper_open_choices" and spec.n_trials == 100 and spec.batch == 50
    assert spec.fixed == ["trainer.threads=0"]
    assert spec.params["optim.lr"].distribution == D.FloatDistribution(0.001, 0.3, log=True)
    assert spec.params["targets"].overrides("pm0.6") == ["data.target_negative=-0.6", "data.target_positive=0.6"]
    with Composer() as composer:
        check(spec, composer)


def test_the_cli_runs_a_file_in_the_first_schema(tmp_path):
    """zipnet-sweep, the thin front end, through the same sweeper."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zipnet.cli.sweep",
            str(LEGACY),
            "data.n_train=200",
            "data.n_test=100",
            "trainer.passes=1",
            "tracking.figures=false",
            "--n-trials",
            "4",
            "--batch",
            "2",
            "--study",
            "old",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = [ln for ln in proc.stderr.splitlines() if ln.startswith("zipnet-sweep: warning:")]
    assert len(warned) == 1 and f"zipnet-sweep --convert {LEGACY} > sweeps/legacy_study.yaml" in warned[0]
    import optuna

    study = optuna.load_study(study_name="old", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")
    assert len(study.get_trials()) == 4 and {t.params["targets"] for t in study.get_trials()} <= {
        "pm1.0",
        "pm0.8",
        "pm0.6",
    }


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml")))
def test_every_shipped_study_composes_and_checks(name):
    text = (ROOT / "sweeps" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n# zipnet-train -m sweeps=")
    with Composer() as composer:
        cfg = composer.compose_hydra([f"sweeps={name}"])
        assert cfg.hydra.sweeper._target_.endswith("ZipnetOptunaSweeper")
        assert "population" in cfg.hydra.launcher._target_.lower()
        spec = from_sweeper(OmegaConf.to_container(cfg.hydra.sweeper, resolve=True), [f"sweeps={name}"])
        assert spec.study_name == name and spec.params
        check(spec, composer)  # composes every choice and bound; loads no data


@pytest.mark.parametrize(
    "settings,key,text",
    [
        ({"n_trails": 5}, "n_trails", "unknown key"),
        ({"params": {"optim.lr": "interval(0.3, 0.001)"}}, "params.optim.lr", "not below high"),
        ({"params": {"optim.lr": "tag(log, interval(-1, 0.1))"}}, "params.optim.lr", "log scale"),
        ({"params": {"optim.lr": "0.1"}}, "params.optim.lr", "one value"),
        ({"params": {"optim.lr": "tag(cubic, interval(0.1, 0.2))"}}, "params.optim.lr", "unknown tag"),
        ({"metric": "test/accuracy"}, "metric", "test/error"),
        ({"pruner": {"name": "median", "n_startup": 3}}, "pruner.n_startup", "n_startup_trials"),
        ({"sampler": {"name": "bayes"}}, "sampler.name", "tpe"),
        ({"batch": 0}, "batch", ">= 1"),
        ({"grace_period": 5, "heartbeat_interval": 10}, "grace_period", "> heartbeat_interval"),
        ({"scheduler": {"name": "asha"}}, "scheduler.name", "pbt"),
        ({"scheduler": {"name": "pbt", "quantile": 0.75}}, "scheduler.quantile", "(0, 0.5]"),
        ({"scheduler": {"name": "pbt", "interval": 0}}, "scheduler.interval", ">= 1"),
        ({"scheduler": {"name": "pbt", "perturb": {"optim.lr": []}}}, "scheduler.perturb.optim.lr", "factors > 0"),
        ({"scheduler": {"name": "pbt", "perturb": {"data.seed": [2]}}}, "scheduler.perturb", "data.seed cannot"),
        ({"scheduler": {"name": "pbt", "every": 2}}, "scheduler.every", "unknown setting"),
        ({"refill": "yes"}, "refill", "true or false"),
        ({"refill": True, "scheduler": {"name": "pbt"}}, "refill", "give one"),
    ],
)
def test_a_malformed_study_names_the_key(settings, key, text):
    conf = {**BASE, "params": {"model.init": "choice(sqrt, linear)"}, **settings}
    with pytest.raises(SweepError) as err:
        from_sweeper(conf, [], where="sweeps/x.yaml")
    assert str(err.value).startswith(f"sweeps/x.yaml: {key}:") and text in str(err.value)


@pytest.mark.parametrize(
    "fields,key,text",
    [
        ({"n_trails": 5}, "n_trails", "unknown key"),
        ({"space": {"model.init": {"choices": []}}}, "space.model.init.choices", "empty"),
        ({"space": {"optim.lr": {"low": 0.3, "high": 0.001}}}, "space.optim.lr.low", "above high"),
        ({"space": {"optim.lr": {"low": 0.1, "hihg": 0.2}}}, "space.optim.lr.hihg", "unknown key"),
    ],
)
def test_a_malformed_file_in_the_first_schema_names_the_file_and_key(tmp_path, fields, key, text):
    raw = {"study": "x", "space": {"model.init": {"choices": ["sqrt"]}}, **fields}
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SweepError) as err:
        from_legacy(path, load_file(path))
    assert str(err.value).startswith(f"{path}: {key}:") and text in str(err.value)


@pytest.mark.parametrize(
    "params,key,text",
    [
        ({"model.nope": "choice(1, 2)"}, "params.model.nope", "model.nope"),
        ({"model.init": "choice(sqrt, cubic)"}, "params.model.init", "'cubic'"),
        ({"targets": "choice(pm1.0, pm0.5)"}, "params.targets", "pm0.5"),
        ({"data.n_train": "choice(100, 200)"}, "params.data.n_train", "also fixed"),
    ],
)
def test_a_space_the_config_rejects_fails_before_any_trial(params, key, text):
    spec = from_sweeper({**BASE, "params": params}, ["data.n_train=300"])
    with Composer() as composer, pytest.raises(SweepError) as err:
        check(spec, composer)
    assert f": {key}:" in str(err.value) and text in str(err.value)


def test_a_metric_the_loss_cannot_produce_is_refused():
    spec = from_sweeper(
        {**BASE, "metric": "paper/gap", "params": {"optim.lr": "choice(0.01, 0.03)"}},
        ["loss=cross_entropy", "model.output=linear"],
    )
    with Composer() as composer, pytest.raises(SweepError, match="metric: paper/gap is measured on MSE runs only"):
        check(spec, composer)
    spec = from_sweeper(
        {**BASE, "metric": "paper/gap", "params": {"loss": "choice(mse, cross_entropy)"}}, ["model.output=linear"]
    )
    with Composer() as composer, pytest.raises(SweepError, match="params.loss='cross_entropy'"):
        check(spec, composer)


@pytest.mark.parametrize(
    "value",
    [0.0123, 1e-05, 3, True, None, "sqrt", "half_sum", "1.0", "a b", "null", "pm0.6", "it's", "sqlite:////tmp/x.db"],
)
def test_override_values_parse_back_to_the_same_value(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f"k={override_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)


def test_a_batch_asked_after_the_start_up_spreads_out_the_liar_sees_it():
    """TPE's constant liar counts the batch's RUNNING trials as poor, so a batch asked at once
    (zipnet's sampler, built per batch) spreads out instead of piling onto one posterior mode."""
    import math
    import statistics

    import optuna

    from zipnet.sweeps.study import make_sampler

    spreads = {}
    for liar in (False, True):
        spec = from_sweeper(
            {
                **BASE,
                "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 10, "constant_liar": liar},
                "params": {"optim.lr": "tag(log, interval(0.001, 0.3))"},
            },
            [],
        )
        study = optuna.create_study(sampler=make_sampler(spec, 0))
        dist = {"optim.lr": spec.params["optim.lr"].distribution}
        for _ in range(10):
            t = study.ask(dist)
            study.tell(t, (math.log10(t.params["optim.lr"]) - math.log10(0.03)) ** 2)
        study.sampler = make_sampler(spec, 10)  # a new sampler for the batch, as the sweep makes one
        batch = [study.ask(dist) for _ in range(16)]  # asked together, none told yet
        spreads[liar] = statistics.pstdev(math.log10(t.params["optim.lr"]) for t in batch)
    assert spreads[True] > 3 * spreads[False], spreads


def test_a_converted_first_schema_file_runs_as_a_sweeps_preset(tmp_path):
    """`zipnet-sweep --convert` writes the Hydra form; `zipnet-train -m sweeps=NAME` alone then
    runs the same study (its space, and its fixed overrides folded into the preset)."""
    import optuna

    convert = [sys.executable, "-m", "zipnet.cli.sweep", "--convert", str(LEGACY)]
    out = subprocess.run(convert, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    (tmp_path / "conf" / "sweeps").mkdir(parents=True)
    (tmp_path / "conf" / "sweeps" / "old.yaml").write_text(out.stdout)
    run = [sys.executable, "-m", "zipnet.cli.train", "--config-dir", str(tmp_path / "conf"), "-m", "sweeps=old"]
    run += ["hydra.sweeper.n_trials=2", "hydra.sweeper.batch=2", "hydra.sweeper.study_name=converted"]
    run += ["data.n_train=200", "data.n_test=100", "trainer.passes=1", "tracking.figures=false"]
    proc = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="converted", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")
    legacy = from_legacy(LEGACY, load_file(LEGACY))
    assert len(study.trials) == 2 and all(set(t.params) == set(legacy.params) for t in study.trials)
    resolved = next(tmp_path.glob("multirun/**/config_resolved.yaml"), None) or next(
        tmp_path.glob("mlruns/**/config_resolved.yaml")
    )
    assert "threads: 0" in resolved.read_text()  # the file's `overrides`, now in the preset
    again = subprocess.run(
        convert[:3] + ["--convert", str(tmp_path / "conf" / "sweeps" / "old.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and "is a sweeps preset already" in again.stderr and "Traceback" not in again.stderr


def test_checkpoint_uploads_and_the_outage_timeout_are_settings_checked_in_one_line():
    params = {"params": {"optim.lr": "interval(0.01, 0.1)"}}
    spec = from_sweeper({**BASE, **params}, [])
    assert (spec.checkpoint_upload_every, spec.outage_timeout) == (0, 600.0)  # on give-back only; ten minutes
    spec = from_sweeper({**BASE, **params, "checkpoint_upload_every": 5, "outage_timeout": 90}, [])
    assert spec.as_dict()["checkpoint_upload_every"] == 5 and spec.outage_timeout == 90.0
    with pytest.raises(SweepError, match=r"^hydra.sweeper: checkpoint_upload_every: -1 is not allowed; give an int"):
        from_sweeper({**BASE, **params, "checkpoint_upload_every": -1}, [])
    with pytest.raises(SweepError, match=r"^hydra.sweeper: outage_timeout: 'long' is not allowed; give seconds >= 0"):
        from_sweeper({**BASE, **params, "outage_timeout": "long"}, [])
