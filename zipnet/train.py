"""zipnet-train: train the 1989 net from a Hydra config and print a line per pass.

    zipnet-train
    zipnet-train model.init=linear loss.mse=half_sum optim.lr=0.01 trainer.passes=5
    zipnet-train -m model.init=sqrt,linear loss.mse=mean,sum,half_sum   (a grid: one MLflow parent, 6 children)
    zipnet-train -m sweeps=paper_open_choices                          (an Optuna study: hydra/sweeper=zipnet_optuna)

Every run is logged to MLflow (zipnet/tracking.py) unless tracking.enabled=false. The task
function builds the job (config checked, watchers attached) and zipnet.runner trains it;
under hydra/launcher=population it hands the job to the launcher, which trains all of a
batch's jobs together.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from zipnet import preempt, runner
from zipnet.config import CONF_DIR
from zipnet.errors import ConfigError, DataError, StoreError

__all__ = ["CONF_DIR", "main", "make_job", "run"]

_refused: list[str] = []  # jobs of this multirun that were refused (bad value, bad data): the exit status says so


def run(cfg: DictConfig, log=print, out_dir: Path | None = None, watchers: list | None = None,
        name: str = "") -> runner.Job:
    """Train the one configuration `cfg` describes (a population of one), untracked unless
    `watchers` track it; returns the job with its result."""
    job = runner.Job(cfg, name=name, out_dir=out_dir, watchers=[runner.Output(), *(watchers or [])]).check()
    runner.run([job], log=log, bar=_bar(job))
    if job.error is not None:
        raise job.error
    return job


def _bar(job: runner.Job):
    from zipnet.progress import PassBar

    enabled = {"auto": None, "on": True, "off": False}[job.opts["progress"]]
    return PassBar(job.opts["passes"], enabled=enabled)


def make_job(cfg: DictConfig) -> runner.Job:
    """The job Hydra is running now: its config checked, its output folder, its MLflow run
    (a child of the multirun's or study's parent) and, in a sweep, its Optuna trial."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from zipnet import multirun as multirun_names
    from zipnet.sweeps import trial as trials

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    multirun = hc.mode == RunMode.MULTIRUN
    job = runner.Job(cfg, overrides=overrides, out_dir=Path(hc.runtime.output_dir)).check()
    link = trials.link(cfg)  # set when the zipnet_optuna sweeper asked this job
    if link is not None:
        job.name = f"{link.study_name} #{link.number}"
    elif multirun:
        job.name = multirun_names.job_name(overrides) or f"job {hc.job.num}"
    job.watchers.append(runner.Output())
    tracker = runner.tracker_for(cfg)
    if tracker is not None:
        tags, role = {}, "run"
        parent = runner.multirun_parent() if multirun else None
        if link is not None:
            tags, role = link.tags(), "trial"
        elif multirun:
            tags, role = {"zipnet.sweep": str(hc.sweep.dir), "zipnet.job": str(hc.job.num)}, "job"
        job.watchers.append(runner.Tracked(tracker, tags, parent, role))
    if link is not None:
        job.watchers.append(link.watcher())
    return job


def _refuse(cfg: DictConfig, err: Exception) -> None:
    """One line for a job that cannot train; in a multirun the other jobs go on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from zipnet.sweeps import trial as trials

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        print(f"zipnet-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    shown = " ".join(o for o in hc.overrides.task if not o.startswith("trial."))
    text = f"job {hc.job.num} ({shown}): {err}"
    print(f"zipnet-train: error: {text}", file=sys.stderr)
    _refused.append(text)
    trials.refuse(cfg, str(err))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig):
    try:
        job = make_job(cfg)
    except (ConfigError, DataError, StoreError) as err:
        _refuse(cfg, err)
        return None
    if runner.collecting():  # hydra/launcher=population trains this job with the batch's others
        return job
    try:
        runner.run([job], bar=_bar(job))
    except (ConfigError, DataError) as err:
        _refuse(cfg, err)
        return None
    if job.error is not None:
        if isinstance(job.error, (ConfigError, DataError)):
            _refuse(cfg, job.error)
            return None
        raise job.error
    if job.run_id is not None:
        print(f"mlflow: run {job.run_id} at {runner.tracker_for(cfg).uri}")
    return runner.objective(job)


def refused_jobs() -> list[str]:
    return list(_refused)


def main() -> None:
    with preempt.signals():
        try:
            _app()
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM / SIGHUP (zipnet.preempt)
            from zipnet import tracking

            tracking.abort_open_runs("KILLED", err)
            print(f"zipnet-train: {preempt.describe(err)}; runs ended KILLED", file=sys.stderr)
            sys.exit(preempt.exit_code(err))
        except SystemExit as exit_:
            if exit_.code not in (0, None):  # Hydra reports a failed job by exiting 1
                from zipnet import tracking

                tracking.abort_open_runs("FAILED")
            raise
        except BaseException as err:
            from zipnet import tracking

            tracking.abort_open_runs("FAILED", err)
            raise
    if _refused:
        sys.exit(2)


if __name__ == "__main__":
    main()
