"""Hydra multiruns (`zipnet-train -m ...`): one parent MLflow run, each job a child of it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from zipnet.tracking.runs import PARENT_ENV, Tracker

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


class MultirunCallback(Callback):
    """Hydra callback: a multirun gets one parent MLflow run, each job a child of it.

    Configured under `hydra.callbacks` in conf/config.yaml. The parent's id travels to the
    jobs in $ZIPNET_MLFLOW_PARENT_RUN, so launchers that run jobs in other processes see it too.
    """

    def __init__(self) -> None:
        self.tracker: Tracker | None = None
        self.run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.tracker = Tracker.from_config(config)
        if self.tracker is None:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        overrides = list(config.hydra.overrides.task)
        self.run_id = self.tracker.start(f"multirun {sweep_dir.name or sweep_dir}", role="multirun",
                                         tags={"zipnet.sweep": str(sweep_dir), "zipnet.overrides": " ".join(overrides)})
        from mlflow.entities import Param

        self.tracker.client.log_batch(self.run_id, params=[Param("sweep.overrides", " ".join(overrides)[:6000]),
                                                           Param("sweep.dir", str(sweep_dir))])
        os.environ[PARENT_ENV] = self.run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.tracker is None or self.run_id is None:
            return
        self.tracker.summarise(self.run_id)
        self.tracker.end(self.run_id, "FINISHED")
        self.tracker.flush()
        os.environ.pop(PARENT_ENV, None)
