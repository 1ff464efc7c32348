"""hydra/launcher=population: a multirun's jobs trained together as populations.

    zipnet-train -m hydra/launcher=population optim.lr=0.01,0.03,0.1 model.init=sqrt,linear

Each job runs as Hydra's basic launcher would run it (its own directory and .hydra/, its own
MLflow run), except that the launcher calls the task function's `zipnet_job` (zipnet-train's
builds the job untrained); it then trains the batch's jobs in as few populations as their
configs allow, every pass streamed to each job's run, and returns each job's objective.
A job that cannot train (a bad value) refuses the whole batch before anything trains.
A task function without `zipnet_job` (another Hydra app) runs job by job, as under the basic
launcher.
"""

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    env_override,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, flag_override, open_dict, read_write

from zipnet.config_yaml import to_yaml

log = logging.getLogger(__name__)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.zipnet_population.population_launcher.PopulationLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="population", node=PopulationLauncherConf, provider="zipnet")


class PopulationLauncher(Launcher):
    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.composer = None  # zipnet.composer.Composer, from the first launch on
        # set by the zipnet_optuna sweeper for a batch with `refill: true`: free lanes -> more jobs' overrides
        self.refill = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from zipnet import session  # zipnet.runner (torch) only for zipnet's jobs: see below

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        if self.composer is None:  # kept across a sweep's batches: one base per set of group choices
            from zipnet.composer import Composer

            self.composer = Composer(self.hydra_context.config_loader, self.config)
        clock = session.current().clock
        build = getattr(self.task_function, "zipnet_job", None)
        if build is None:
            log.info(f"Running {len(job_overrides)} jobs one by one: the task function is not zipnet's trainer")
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            cfg = self._compose(overrides, idx, clock)
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            if build is None:  # not zipnet's task: each job runs whole, in turn
                returns.append(self._run_one(cfg))
                continue
            returns.append(self._collect(cfg, build, clock))
        if build is None:
            return returns
        from zipnet import runner

        jobs = [ret.return_value if ret.status == JobStatus.COMPLETED else None for ret in returns]
        if any(job is None for job in jobs):
            self._refuse(returns)
        ready = [job for job in jobs if isinstance(job, runner.Job)]
        log.info(f"Training {len(ready)} jobs as populations")
        more = None
        if self.refill is not None:

            def more(free: int) -> list:
                """Jobs for lanes pruned or finished trials left: composed and collected as the batch's,
                their returns after the batch's."""
                found = []
                for overrides in self.refill(free):
                    idx = initial_job_idx + len(returns)
                    cfg = self._compose(overrides, idx, clock)
                    log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))} (refilled lane)")
                    ret = self._collect(cfg, build, clock)
                    job = ret.return_value if ret.status == JobStatus.COMPLETED else None
                    returns.append(ret)
                    jobs.append(job)
                    if isinstance(job, runner.Job):
                        found.append(job)
                return found

        runner.run(ready, clock=clock, more=more)
        for ret, job in zip(returns, jobs):
            if isinstance(job, runner.Job):
                if job.error is not None:
                    ret.status, ret.return_value = JobStatus.FAILED, job.error
                else:
                    ret.return_value = runner.objective(job)
        return returns

    def _compose(self, overrides: Sequence[str], idx: int, clock) -> DictConfig:
        """Job number `idx`'s config, as Hydra's launchers number their jobs."""
        with clock.timing("hydra"):
            cfg = self.composer.compose(list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = idx
                cfg.hydra.job.num = idx
        return cfg

    def _run_one(self, cfg: DictConfig) -> JobReturn:
        """A job of another Hydra app, as the basic launcher runs it."""
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=cfg,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def _collect(self, cfg: DictConfig, build, clock) -> JobReturn:
        """Hydra's per-job steps, for a task that only builds its job: the job's HydraConfig, output
        folder and .hydra/ files, env_set and callbacks; its log file is not configured per job,
        since the job logs nothing until the batch trains. Returns `build`'s job, untrained."""
        callbacks = self.hydra_context.callbacks
        before_cfg, before_cwd = HydraConfig.instance().cfg, os.getcwd()
        with clock.timing("hydra"):
            subdir = str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
            out = os.path.abspath(os.path.join(str(cfg.hydra.sweep.dir), subdir))
            with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
                cfg.hydra.runtime.output_dir = out
            hydra_cfg = _set_hydra_config(cfg)
            chdir = bool(hydra_cfg.hydra.job.chdir)
            task_cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
            overrides = list(cfg.hydra.overrides.task)
            env = dict(hydra_cfg.hydra.job.env_set)
            dot_hydra = None if cfg.hydra.output_subdir is None else Path(out) / str(cfg.hydra.output_subdir)
            if dot_hydra is not None:
                dot_hydra.mkdir(parents=True, exist_ok=True)
                (dot_hydra / "config.yaml").write_text(to_yaml(task_cfg))
                (dot_hydra / "hydra.yaml").write_text(to_yaml(hydra_cfg))
                (dot_hydra / "overrides.yaml").write_text(to_yaml(OmegaConf.create(overrides)))
            else:
                Path(out).mkdir(parents=True, exist_ok=True)
        ret = JobReturn(
            overrides=overrides, cfg=task_cfg, hydra_cfg=hydra_cfg, working_dir=out if chdir else before_cwd
        )
        try:
            if chdir:
                os.chdir(out)
            with env_override(env):
                callbacks.on_job_start(config=cfg, task_function=self.task_function)
                try:
                    ret.return_value = build(task_cfg)
                    ret.status = JobStatus.COMPLETED
                except Exception as err:
                    ret.return_value, ret.status = err, JobStatus.FAILED
            ret.task_name = JobRuntime.instance().get("name")
            callbacks.on_job_end(config=cfg, job_return=ret)
            return ret
        finally:
            HydraConfig.instance().cfg = before_cfg
            os.chdir(before_cwd)

    def _refuse(self, returns: Sequence[JobReturn]) -> None:
        """A job that cannot train refuses the whole batch, before anything trains."""
        from zipnet import session

        if self._in_sweep():
            return  # the sweeper's trials: the refused one is told FAIL, the rest train
        for num, ret in enumerate(returns):
            if ret.status == JobStatus.FAILED:  # not a zipnet error: say what it was
                try:
                    _ = ret.return_value  # raises what the job raised
                except Exception as err:
                    print(f"zipnet-train: error: job {num}: {type(err).__name__}: {err}", file=sys.stderr)
        now = session.current()
        refused = len(now.refused) or "some"
        print(
            f"zipnet-train: nothing trained: {refused} job(s) of this batch cannot run; fix them or leave them out",
            file=sys.stderr,
        )
        if now.multirun is not None:  # nothing trained: no parent run is left behind
            now.multirun.discard()
        sys.exit(2)

    def _in_sweep(self) -> bool:
        sweeper = str(self.config.hydra.sweeper.get("_target_", ""))
        return "zipnet_optuna" in sweeper


def _set_hydra_config(cfg: DictConfig) -> DictConfig:
    """HydraConfig.set_config(cfg) without its copy of the hydra node (a third of a job's setup):
    the job's cfg is its own, composed for it alone, and its hydra node is read-only from here on,
    so HydraConfig can hold the node itself. Hydra's own loader shares nodes the same way."""
    OmegaConf.set_readonly(cfg.hydra, True)
    view = OmegaConf.create()
    with flag_override(view, "no_deepcopy_set_nodes", True):
        view.hydra = cfg.hydra
    cfg.hydra._set_parent(cfg)  # as set_config leaves it: interpolations from hydra into the task's keys
    HydraConfig.instance().cfg = view
    return view
