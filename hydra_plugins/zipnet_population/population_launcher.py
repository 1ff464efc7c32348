"""hydra/launcher=population: a multirun's jobs trained together as populations.

    zipnet-train -m hydra/launcher=population optim.lr=0.01,0.03,0.1 model.init=sqrt,linear

The launcher composes every job's config, trains the jobs in as few populations as their
configs allow (zipnet.population), then runs each job as Hydra's basic launcher would: its
own directory, its own MLflow run, its own lines per pass. The job finds its result ready.
"""


import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.zipnet_population.population_launcher.PopulationLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="population", node=PopulationLauncherConf, provider="zipnet")


class PopulationLauncher(Launcher):
    def __init__(self) -> None:
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from zipnet import population

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = idx
                cfg.hydra.job.num = idx
            configs.append(cfg)
        log.info(f"Training {len(configs)} jobs as populations")
        population.provide(configs, population.train_configs(configs, log=log.info))
        returns = []
        for cfg, overrides in zip(configs, job_overrides):
            log.info(f"\t#{cfg.hydra.job.num} : {' '.join(filter_overrides(overrides))}")
            returns.append(run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=cfg,
                                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns
