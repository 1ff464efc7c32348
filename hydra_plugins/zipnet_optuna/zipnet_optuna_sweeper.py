"""hydra/sweeper=zipnet_optuna: an Optuna study that Hydra runs as a multirun.

    zipnet-train -m sweeps=paper_open_choices
    zipnet-train -m sweeps=paper_open_choices hydra.sweeper.n_trials=200 'optim.lr=tag(log, interval(0.01, 0.1))'

The search space is written in Hydra's override grammar under `hydra.sweeper.params`
(`choice(...)`, `range(...)`, `interval(...)`, `tag(log, ...)`), or as sweep overrides on the
command line. The settings keep hydra-optuna-sweeper's names and meanings where they exist
(`study_name`, `storage`, `direction`, `n_trials`, `n_jobs`, `sampler` by `_target_`,
`max_failure_rate`, `params`, `custom_search_space`), plus zipnet's (`metric`, `batch`, `pruner`, heartbeat and retry
settings).

It asks `batch` trials at once and hands their jobs to Hydra's launcher. Each job carries its
trial in its config, so it reports its metric after every pass and prunes itself wherever it
runs; with hydra/launcher=population (what the study presets in sweeps/ choose) the batch
trains as one population. A rerun resumes to exactly `n_trials`; several workers, on several
machines with a server storage, share one study (zipnet/sweeps/).

Another Hydra app's task function is optimised by what it returns (a float, or one per
direction); it reports and prunes through `zipnet.sweeps.current_trial()`.
"""

import functools
import logging
import sys
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from zipnet.errors import first_line

log = logging.getLogger(__name__)


@dataclass
class ZipnetOptunaSweeperConf:
    _target_: str = "hydra_plugins.zipnet_optuna.zipnet_optuna_sweeper.ZipnetOptunaSweeper"
    _recursive_: bool = False  # a sampler given by _target_ reaches the sweeper as settings, not built by Hydra
    study_name: str | None = None  # null: the sweeps preset's name, else "zipnet" (another app: its job name)
    storage: str | None = None  # null: optuna.db beside the MLflow store; an Optuna URL; journal:PATH; grpc://HOST:PORT
    direction: Any = "minimize"  # or a list, one per objective (another app's task returning several)
    metric: str = "test/error"  # reported after every pass (pruning) and after the last (the objective)
    n_trials: int = 20  # the target in total: a rerun continues up to it, never past it
    batch: int | None = None  # trials asked at once (one population with hydra/launcher=population); null: 16
    n_jobs: int | None = None  # hydra-optuna-sweeper's name for batch (give one of the two)
    max_failure_rate: float = 0.2  # diverged or crashed trials allowed, as a share of n_trials
    sampler: Any = None  # {name: tpe, seed: 0, ...settings}; null: TPE, seed 0
    pruner: Any = None  # {name: median, ...settings}; null: the median pruner
    params: dict[str, Any] | None = None
    custom_search_space: str | None = None  # a function (cfg, trial) -> dict or None, by dotted path
    storage_timeout: float = 30.0
    heartbeat_interval: int = 10  # seconds between heartbeats for this worker's running trials
    grace_period: int | None = None  # a silent trial is stale after this (null: 3 x heartbeat_interval)
    max_retry: int = 2  # how often a stale or given-back trial is asked again
    outage_timeout: float = 600.0  # seconds a worker waits out an unreachable storage server, then stops
    checkpoint_upload_every: int = 0  # a trial's checkpoint to its MLflow run every N passes (0: on give-back only)
    scheduler: Any = None  # null: none; {name: pbt, interval, quantile, perturb, ...} (zipnet/sweeps/pbt.py)
    refill: bool = False  # true: a pruned or finished trial's lane takes a new trial at the next pass boundary


ConfigStore.instance().store(
    group="hydra/sweeper", name="zipnet_optuna", node=ZipnetOptunaSweeperConf, provider="zipnet"
)


class ZipnetOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None
        self.composer = None  # zipnet.composer.Composer: once per set of config-group choices
        self.who = "hydra/sweeper=zipnet_optuna"  # what the user ran, as messages name it

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        if getattr(task_function, "zipnet_job", None) is not None:
            self.who = "zipnet-train"
        _mask_storage(config)  # every job's .hydra/ files are written from this config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        """Run the study to its target. Exit status: 2 for a study that cannot run (named key),
        3 when more trials failed than allowed, 4 when other workers still hold trials."""
        from zipnet.errors import ConfigError, StoreError
        from zipnet.sweeps.study import FailureBudgetExceeded, SweepError, from_sweeper
        from zipnet.sweeps.sweep import StillRunning, Sweep

        settings = OmegaConf.to_container(OmegaConf.create(self.settings), resolve=True)
        if settings.get("study_name") is None:  # zipnet's: the sweeps preset; another app's: its job name
            choice = OmegaConf.select(self.config, "hydra.runtime.choices.sweeps", default=None)
            own = "zipnet" if self.who == "zipnet-train" else OmegaConf.select(self.config, "hydra.job.name")
            settings["study_name"] = choice or own
        try:
            spec = from_sweeper(settings, list(arguments))
            app = self.who == "zipnet-train"
            population = app and "zipnet_population" in str(self.config.hydra.launcher._target_)
            if spec.scheduler and not population:
                spec.fail(
                    "scheduler",
                    "pbt copies members within a population of zipnet's trainer; use zipnet-train with "
                    "hydra/launcher=population",
                )
            if spec.refill and not population:
                spec.fail(
                    "refill",
                    "refills lanes of a population of zipnet's trainer; use zipnet-train with "
                    "hydra/launcher=population",
                )
            launch = self._launch if app else functools.partial(self._launch_values, objectives=len(spec.directions))
            return Sweep(spec, launch, composer=self, log=log.info, app=app).run()
        except (SweepError, ConfigError, StoreError) as err:
            print(f"{self.who}: error: {err}", file=sys.stderr)
            sys.exit(2)
        except FailureBudgetExceeded as err:
            print(f"{self.who}: stopped: {err}", file=sys.stderr)
            sys.exit(3)
        except StillRunning as err:
            print(f"{self.who}: stopped: {err}", file=sys.stderr)
            sys.exit(4)

    def compose(self, overrides: list[str]) -> DictConfig:
        """A job's config as the launcher will compose it (the study's checks use it)."""
        if self.composer is None:
            from zipnet.composer import Composer

            self.composer = Composer(self.hydra_context.config_loader, self.config)
        return self.composer.compose(list(overrides))

    def _launch(self, jobs: list[list[str]], first: int, refill=None) -> list[str | None]:
        """The batch's jobs; with `refill` (a callable: free lanes -> more jobs' overrides), the launcher
        (hydra/launcher=population) asks it for jobs at pass boundaries, and their returns follow."""
        self.launcher.refill = refill
        try:
            returns: list[JobReturn] = list(self.launcher.launch(jobs, initial_job_idx=first))
        finally:
            self.launcher.refill = None
        reasons: list[str | None] = []
        for ret in returns:
            try:
                _ = ret.return_value  # raises what the job raised
                reasons.append(None)
            except Exception as err:  # the job raised: its trial fails with this reason
                reasons.append(f"{type(err).__name__}: {first_line(err)}")
        return reasons

    def _launch_values(self, jobs: list[list[str]], first: int, objectives: int = 1) -> list:
        """Another app's jobs: what each task function returned, as a float, the optuna.TrialPruned
        it raised, or why it has no value."""
        import optuna

        outcomes: list = []
        for ret in self.launcher.launch(jobs, initial_job_idx=first):
            try:
                value = ret.return_value  # raises what the job raised
            except optuna.TrialPruned as pruned:
                outcomes.append(pruned)
                continue
            except Exception as err:
                outcomes.append(f"{type(err).__name__}: {first_line(err)}")
                continue
            try:
                if objectives == 1:
                    outcomes.append(float(value))
                elif len(value) == objectives:
                    outcomes.append([float(v) for v in value])
                else:
                    raise ValueError
            except (TypeError, ValueError):
                wanted = "a float" if objectives == 1 else f"a list of {objectives} floats, one per direction"
                outcomes.append(f"the task function returned {value!r}; the sweeper needs {wanted}")
        return outcomes


def _mask_storage(config: DictConfig) -> None:
    """A storage URL's password stays out of the config Hydra writes to disk (the sweeper keeps
    its own copy of the settings)."""
    from omegaconf import open_dict, read_write

    from zipnet.sweeps.storage import masked

    with read_write(config.hydra), open_dict(config.hydra):
        if config.hydra.sweeper.get("storage"):
            config.hydra.sweeper.storage = masked(config.hydra.sweeper.storage)
        hydra_overrides = config.hydra.overrides.hydra
        for i, text in enumerate(hydra_overrides):
            key, _, value = text.partition("=")
            if key.lstrip("+~") == "hydra.sweeper.storage":
                hydra_overrides[i] = f"{key}={masked(value.strip(chr(39) + chr(34)))}"
