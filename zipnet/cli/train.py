"""zipnet-train: train the 1989 net from a Hydra config and print a line per pass.

    zipnet-train
    zipnet-train model.init=linear loss.mse=half_sum optim.lr=0.01 trainer.passes=5
    zipnet-train -m model.init=sqrt,linear loss.mse=mean,sum,half_sum   (a grid: one MLflow parent, 6 children)
    zipnet-train -m sweeps=paper_open_choices                          (an Optuna study: hydra/sweeper=zipnet_optuna)

Every run is logged to MLflow (zipnet/tracking/) unless tracking.enabled=false. The task
function builds the job (config checked, watchers attached) and zipnet.runner trains it;
hydra/launcher=population calls its `zipnet_job` instead, which builds the job untrained,
and trains all of a batch's jobs together. main() opens the process's zipnet.session.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from zipnet import preempt, runner, session
from zipnet.config import CONF_DIR
from zipnet.errors import ConfigError, DataError, StoreError

__all__ = ["CONF_DIR", "checkpoints", "job_for", "main", "make_job", "run", "tracked_run"]


def run(cfg: DictConfig, log=print, out_dir: Path | None = None, watchers: list | None = None, name: str = ""):
    """Train the one configuration `cfg` describes (a population of one), untracked unless
    `watchers` track it; returns its RunResult."""
    job = runner.Job(cfg, name=name, out_dir=out_dir, watchers=[runner.Output(), *(watchers or [])]).check()
    runner.run([job], log=log, bar=_bar(job))
    if job.error is not None:
        raise job.error
    return job.result


def tracked_run(cfg: DictConfig, tracker, overrides: list[str] = (), log=print, out_dir: Path | None = None):
    """`run`, streamed into a new MLflow run of `tracker`; returns (RunResult, run_id)."""
    job = runner.Job(
        cfg, overrides=list(overrides), out_dir=out_dir, watchers=[runner.Output(), runner.Tracked(tracker)]
    ).check()
    runner.run([job], log=log, bar=_bar(job))
    if job.error is not None:
        raise job.error
    return job.result, job.run_id


def _bar(job: runner.Job):
    from zipnet.progress import PassBar

    enabled = {"auto": None, "on": True, "off": False}[job.opts["progress"]]
    return PassBar(job.opts["passes"], enabled=enabled)


def job_for(
    cfg: DictConfig, overrides: list[str], out_dir: Path | None = None, grid: bool = False, num: int = 0
) -> runner.Job:
    """A job for `cfg`: its config checked, its output folder, its MLflow run (a child of the
    multirun's or study's parent, when there is one) and, in a sweep, its Optuna trial."""
    from zipnet import multirun
    from zipnet.sweeps import trial as trials

    job = runner.Job(cfg, overrides=list(overrides), out_dir=out_dir).check()
    link = trials.link(cfg)  # set when the zipnet_optuna sweeper asked this job
    if link is not None:
        job.name = f"{link.study_name} #{link.number}"
    elif grid:
        job.name = multirun.job_name(job.overrides) or f"job {num}"
    job.watchers.append(runner.Output())
    tracker = session.current().tracker_for(cfg)
    if tracker is not None:
        parent = session.current().parent() if grid or link is not None else None
        if link is not None:
            tags, role = link.tags(), "trial"
        elif grid:
            tags, role = {"zipnet.job": str(num)}, "job"
        else:
            tags, role = {}, "run"
        job.watchers.append(runner.Tracked(tracker, tags, parent, role))
    if link is not None:
        job.watchers.append(link.watcher())
        job.resume = link.carried(tracker, out_dir)  # a trial asked again goes on from its original's checkpoint
    return job


def make_job(cfg: DictConfig) -> runner.Job:
    """The job Hydra is running now."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    grid = hc.mode == RunMode.MULTIRUN
    job = job_for(cfg, list(hc.overrides.task), Path(hc.runtime.output_dir), grid=grid, num=hc.job.num if grid else 0)
    job.resume = checkpoints(job.opts["resume"], hc, grid) or job.resume
    if grid:
        for watcher in job.watchers:
            if isinstance(watcher, runner.Tracked) and watcher.role == "job":
                watcher.tags["zipnet.sweep"] = str(hc.sweep.dir)
    return job


def checkpoints(resume: bool | str, hc, grid: bool) -> list[Path]:
    """The checkpoints trainer.resume points at, the newest first: those of the runs' output folders
    (hydra.run.dir, or a grid's hydra.sweep.dir and subdir, each ${...} part a wildcard), or the
    one file it names (a folder: its checkpoint.pt), relative to where zipnet-train was started."""
    if resume is False:
        return []
    cwd = Path(hc.runtime.cwd)
    if resume is not True:
        path = cwd / Path(resume).expanduser()
        path = path / runner.CHECKPOINT if path.is_dir() else path
        if not path.is_file():
            raise ConfigError("trainer.resume", f"{path}: no such checkpoint; give true, false or a checkpoint's path")
        return [path]
    node = OmegaConf.to_container(hc, resolve=False)  # the folders as written, before ${now:...} resolved
    folder = f"{node['sweep']['dir']}/{node['sweep']['subdir']}" if grid else node["run"]["dir"]
    pattern = os.path.join(cwd, re.sub(r"\$\{[^}]*\}", "*", str(folder)), runner.CHECKPOINT)
    found = sorted((Path(p) for p in glob.glob(pattern)), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        print(f"trainer.resume: no checkpoint under {pattern} yet; training from pass 1", file=sys.stderr)
    return found


def _refuse(cfg: DictConfig, err: Exception) -> None:
    """One line for a job that cannot train; in a multirun the other jobs go on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from zipnet.sweeps import trial as trials

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        print(f"zipnet-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    from zipnet import multirun

    link_keys = ("trial.",)
    shown = multirun.job_name([o for o in hc.overrides.task if not o.startswith(link_keys)])
    text = f"job {hc.job.num} ({shown}): {err}"
    print(f"zipnet-train: error: {text}", file=sys.stderr)
    session.current().refused.append(text)
    trials.refuse(cfg, str(err))


def _build(cfg: DictConfig) -> runner.Job | None:
    """The job Hydra is running now, untrained; None (after one line) if it cannot run."""
    try:
        return make_job(cfg)
    except (ConfigError, DataError, StoreError) as err:
        _refuse(cfg, err)
        return None


_single: list = []  # the tracker of a single (not multirun) run: what it cost is said at the end


def _task(cfg: DictConfig):
    """zipnet-train's task function: build the job and train it; returns its objective."""
    job = _build(cfg)
    if job is None:
        return None
    try:
        runner.run([job], bar=_bar(job))
    except (ConfigError, DataError) as err:
        _refuse(cfg, err)
        return None
    if job.error is not None:
        if isinstance(job.error, (ConfigError, DataError, StoreError)):
            _refuse(cfg, job.error)
            return None
        raise job.error
    if job.run_id is not None:
        tracker = session.current().tracker_for(cfg)
        print(f"mlflow: run {job.run_id} at {tracker.uri}")
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.RUN:  # one run: what its tracking cost, once written
            _single.append(tracker)
    return runner.objective(job)


_task.zipnet_job = _build  # what hydra/launcher=population calls: the job, to train with the batch's others
_app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)


def main() -> None:
    with session.scope() as here, preempt.signals():
        try:
            _app()
            from zipnet import tracking

            tracking.flush()  # the runs' last writes while a stop can still be said (a full disk's)
            for tracker in _single:  # (on stderr: stdout's last line stays the run's)
                print(f"tracking: {tracker.split()}", file=sys.stderr)
        except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM / SIGHUP, or a stop (zipnet.preempt)
            from zipnet import tracking

            ended = tracking.abort_open_runs("KILLED", err)
            print(f"zipnet-train: {preempt.describe(err)}; {ended}", file=sys.stderr)
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
        if here.refused:  # some jobs of the grid could not run: the exit status says so
            sys.exit(2)


def cli() -> None:
    """The `zipnet-train` command: main(), then, where it succeeded, the process's quick end (main
    itself returns, for a caller in the same process: a test, a notebook)."""
    main()
    _exit_now()


def _exit_now() -> None:
    """End a process that succeeded as Python would, less the interpreter's teardown of every module
    and object (about a second with torch, MLflow and pandas loaded): the exit handlers run, the
    sqlite logs are checkpointed, the output flushed. A thread still at work gets the ordinary exit."""
    import atexit
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.current_thread()):
        return
    atexit._run_exitfuncs()  # the trackers' flush, logging's shutdown (Hydra's log file), MLflow's own
    from zipnet import sqlite

    sqlite.checkpoint()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    cli()
