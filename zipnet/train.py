"""zipnet-train: train the 1989 net from a Hydra config and print a line per pass.

    zipnet-train
    zipnet-train model.init=linear loss.mse=half_sum optim.lr=0.01 trainer.passes=5
    zipnet-train -m model.init=sqrt,linear loss.mse=mean,sum,half_sum   (a grid: one MLflow parent, 6 children)

Every run is logged to MLflow (zipnet/tracking.py) unless tracking.enabled=false.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from zipnet import config as checks
from zipnet import tracking
from zipnet.data import load_digits
from zipnet.engine import RunResult, train
from zipnet.errors import ConfigError, DataError
from zipnet import population, resources
from zipnet.progress import PassBar

CONF_DIR = resources.conf_dir()


def run(cfg: DictConfig, log=print, out_dir: Path | None = None, on_pass=None, digits=None) -> RunResult:
    """Train the one configuration `cfg` describes: a population of one.

    `on_pass(pass_number, [result])` runs after each pass (trackers log there; a pruner
    returns {0} to stop the run). `digits`, when given, is cfg.data already loaded.
    """
    member = checks.member(cfg)
    opts = checks.trainer(cfg)
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    if opts["device"].startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", f"{opts['device']!r} asked for, but no CUDA device is available; use cpu")
    digits = load_digits(cfg.data) if digits is None else digits
    log(f"data: {cfg.data.source}, {len(digits.train_y)} train / {len(digits.test_y)} test, fingerprint {digits.fingerprint[:12]}")
    bar = PassBar(opts["passes"], enabled={"auto": None, "on": True, "off": False}[opts["progress"]])
    result = population.take(cfg)  # trained already, with others, by hydra/launcher=population
    if result is not None:
        population.replay(result, log=log, on_pass=on_pass, progress=bar)
    else:
        (result,) = train([member], digits, log=log, on_pass=on_pass, progress=bar, **checks.engine_options(opts))
    if result.status == "diverged":
        bar.close()
        log(f"diverged at pass {result.diverged_at_pass}: stopped; lower optim.lr or change the init")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        summary = {"status": result.status, "diverged_at_pass": result.diverged_at_pass, "history": result.history,
                   "data_fingerprint": digits.fingerprint}
        (out_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    return result


def tracked_run(cfg: DictConfig, tracker: "tracking.Tracker", overrides: list[str], log=print,
                out_dir: Path | None = None, tags: dict | None = None, parent_run_id: str | None = None,
                run_name: str | None = None, role: str = "run") -> tuple[RunResult, str]:
    """`run`, streamed into a new MLflow run: config first, one log_batch per pass, then the
    artifacts. The run ends FINISHED, FAILED (diverged, or an exception) or KILLED (Ctrl-C).

    The config and the data are checked before the run is created, so a typo leaves no run.
    """
    checks.member(cfg)
    checks.trainer(cfg)
    digits = load_digits(cfg.data)
    run_id = tracker.start(run_name, tags, role=role, parent_run_id=parent_run_id)
    logged = 0

    def stream(pass_number, live):
        nonlocal logged
        if live:
            tracker.log_pass(run_id, live[0].history[-1])
            logged = len(live[0].history)
        return set()

    try:
        tracker.log_config(run_id, cfg, overrides, digits.fingerprint)
        result = run(cfg, log=log, out_dir=out_dir, on_pass=stream, digits=digits)
        tracker.log_history(run_id, result.history[logged:])  # the pass a member diverged in
        sizes = getattr(result, "population_sizes", None)  # set when a population trained it
        positions = getattr(result, "population_positions", None)
        tracker.finish(run_id, result, digits,
                       extra_tags=tracking.population_tags(list(sizes or [1]), list(positions or [0])))
    except KeyboardInterrupt as err:
        tracker.end(run_id, "KILLED", err)
        raise
    except BaseException as err:
        tracker.end(run_id, "FAILED", err)
        raise
    log(f"mlflow: run {run_id} in experiment {tracker.experiment!r} at {tracker.uri}")
    return result, run_id


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    try:
        tracker = tracking.Tracker.from_config(cfg)
        if tracker is None:
            run(cfg, out_dir=out_dir)
            return
        tags, parent, name = {}, None, None
        if hc.mode == RunMode.MULTIRUN:
            parent = tracking.multirun_parent()
            tags = {"zipnet.sweep": str(hc.sweep.dir), "zipnet.job": str(hc.job.num)}
            name = f"job {hc.job.num}"
        tracked_run(cfg, tracker, list(hc.overrides.task), out_dir=out_dir, tags=tags, parent_run_id=parent,
                    run_name=name, role="job" if parent else "run")
    except (ConfigError, DataError) as err:
        print(f"zipnet-train: error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    try:
        _app()
    except KeyboardInterrupt as err:
        tracking.abort_open_runs("KILLED", err)
        raise
    except SystemExit as exit_:
        if exit_.code not in (0, None):  # Hydra reports a failed job by exiting 1
            tracking.abort_open_runs("FAILED")
        raise
    except BaseException as err:
        tracking.abort_open_runs("FAILED", err)
        raise


if __name__ == "__main__":
    main()
