"""zipnet.composer: a job's config from its base (composed once per set of config-group
choices) plus its value overrides equals Hydra's full composition of the job, hydra node
included; what Hydra would refuse is refused in Hydra's words."""

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ReadonlyConfigError

import hydra_plugins.zipnet_optuna.zipnet_optuna_sweeper  # noqa: F401  (its config, as Hydra's plugin scan loads it)
import hydra_plugins.zipnet_population.population_launcher  # noqa: F401
from zipnet.cli.train import CONF_DIR
from zipnet.composer import Composer

JOBS = [
    ["model.init=linear", "loss.mse=sum", "targets=pm0.6", "optim.lr=0.2438", "data.seed=1", "trial.number=0"],
    ["model.init=sqrt", "loss.mse=mean", "targets=pm0.8", "optim.lr=0.0042", "data.seed=2", "trial.number=1"],
    ["optim.lr=0.0042", "targets=pm0.8", "model.init=sqrt"],  # the same choices, in another order
    ["optim=adamw", "optim.lr=0.001", "trial.storage='sqlite:////tmp/a b/optuna.db'"],
    ["data=mnist", "data.n_train=500", "+extra.key=3"],  # an added key: composed in full
    ["~tracking.experiment", "trainer.passes=2"],
    ["model.table=[[0,1],[2,3]]", "trial.study='a: study, quoted'"],
]


@pytest.fixture(scope="module")
def loader_and_master():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            "config", ["sweeps=paper_open_choices", "data.n_train=500", "hydra.job.chdir=false"], RunMode.MULTIRUN
        )
        yield loader, master


def test_every_job_equals_its_full_composition(loader_and_master):
    loader, master = loader_and_master
    composer = Composer(loader, master)
    for job in JOBS:
        fast = composer.compose(job)
        full = loader.load_sweep_config(master, job)
        assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(full), job
        assert list(fast.hydra.overrides.task) == job
        assert OmegaConf.to_container(fast, resolve=False) == OmegaConf.to_container(full, resolve=False)
    assert composer.full == 0
    # one base per set of choices (+ and ~ count as choices): the third job reuses the second's
    assert len(composer.bases) == len(JOBS) - 1


def test_the_launchers_yaml_is_omegaconfs(loader_and_master):
    """A job's .hydra/ files, config_resolved.yaml and its run's config files are written by libyaml:
    the text OmegaConf writes, for every job above (quoted strings, lists, the hydra node's enums)."""
    from zipnet.config_yaml import to_yaml

    loader, master = loader_and_master
    composer = Composer(loader, master)
    for job in JOBS:
        cfg = composer.compose(job)
        task = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        for node in (cfg, task, OmegaConf.create(job)):
            assert to_yaml(node) == OmegaConf.to_yaml(node), job
        assert to_yaml(task, resolve=True) == OmegaConf.to_yaml(task, resolve=True), job  # config_resolved.yaml


def test_a_job_is_its_own_copy(loader_and_master):
    loader, master = loader_and_master
    composer = Composer(loader, master)
    a = composer.compose(["optim.lr=0.1"])
    a.optim.lr = 9.0
    assert composer.compose(["optim.lr=0.2"]).optim.lr == 0.2
    assert composer.compose([]).optim.lr == loader.load_sweep_config(master, []).optim.lr


@pytest.mark.parametrize(
    "job",
    [["optim.learning_rate=0.1"], ["targets=pm9"], ["model.init.deep=1"]],
)
def test_what_hydra_refuses_is_refused_the_same_way(loader_and_master, job):
    loader, master = loader_and_master
    with pytest.raises(Exception) as full:
        loader.load_sweep_config(master, job)
    with pytest.raises(type(full.value)) as fast:
        Composer(loader, master).compose(job)
    assert str(fast.value) == str(full.value)
    assert isinstance(full.value, ConfigCompositionException) or "targets" in job[0]


def test_the_launchers_hydra_config_is_hydras(loader_and_master):
    """The population launcher sets HydraConfig without Hydra's copy of the hydra node: what a
    job then reads (HydraConfig.get(), the ${hydra:} resolver, the hydra.yaml text) is what
    HydraConfig.set_config gives, and the next job's config leaves it alone."""
    from hydra.core.hydra_config import HydraConfig

    from hydra_plugins.zipnet_population.population_launcher import _set_hydra_config

    loader, master = loader_and_master
    composer = Composer(loader, master)
    before = HydraConfig.instance().cfg
    try:
        for num, job in enumerate(JOBS[:3]):
            theirs, ours = composer.compose(job), composer.compose(job)
            for cfg in (theirs, ours):
                with open_dict(cfg):
                    cfg.hydra.job.num = num
            HydraConfig.instance().set_config(theirs)
            expected = OmegaConf.to_yaml(HydraConfig.instance().cfg)
            view = _set_hydra_config(ours)
            assert HydraConfig.get() is ours.hydra and HydraConfig.get().job.num == num
            assert OmegaConf.to_yaml(view) == expected
            assert OmegaConf.create({"x": "${hydra:job.override_dirname}"}).x == ours.hydra.job.override_dirname
            assert ours.hydra._get_parent() is ours  # interpolations from hydra into the task's keys
            with pytest.raises(ReadonlyConfigError):
                ours.hydra.job.num = 99  # read-only, as set_config leaves it
            composer.compose(JOBS[0]).hydra.job.num = 7  # the next job's config is another object
            assert HydraConfig.get().job.num == num
    finally:
        HydraConfig.instance().cfg = before
