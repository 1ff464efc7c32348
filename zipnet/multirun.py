"""A Hydra multirun (a grid) as one MLflow parent run with a child per job.

Configured under `hydra.callbacks` in conf/config.yaml. The parent's id is the session's
(zipnet.session), and travels in $ZIPNET_MLFLOW_PARENT_RUN to jobs that launchers such as
submitit run in other processes. The zipnet_optuna sweeper keeps its own parent (the
study's), so a sweep skips this one.

The parent ends FINISHED when every job trained, FAILED (its `zipnet.error` names the jobs)
when some were refused, and is deleted when nothing trained at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from zipnet import session


def swept_keys(overrides: list[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]


def job_name(overrides: list[str]) -> str:
    """A grid job's run name: the values of the keys the grid sweeps (all its overrides if unknown)."""
    keys = session.current().keys()
    shown = [o for o in overrides if not keys or o.split("=", 1)[0] in keys]
    return " ".join(shown)


def _sweeping(config: DictConfig) -> bool:
    return "zipnet_optuna" in str(config.hydra.sweeper.get("_target_", ""))


class MultirunCallback(Callback):
    def __init__(self) -> None:
        self.config: DictConfig | None = None  # not the tracker: launchers such as submitit pickle callbacks
        self.run_id: str | None = None

    @property
    def tracker(self):
        return session.current().tracker_for(self.config) if self.config is not None else None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _sweeping(config) or session.current().tracker_for(config) is None:
            return
        self.config = config
        self.tracker.ready()  # mlflow imported on the tracker's worker first (tracking.runs: IMPORTS)
        from mlflow.entities import Param

        sweep_dir = Path(str(config.hydra.sweep.dir))
        overrides = list(config.hydra.overrides.task)
        self.run_id = self.tracker.start(
            f"grid {' '.join(overrides)}"[:250],
            role="multirun",
            tags={"zipnet.sweep": str(sweep_dir), "zipnet.overrides": " ".join(overrides)},
        )
        self.tracker.client.log_batch(
            self.run_id,
            params=[Param("sweep.overrides", " ".join(overrides)[:6000]), Param("sweep.dir", str(sweep_dir))],
        )
        now = session.current()
        now.set_parent(self.run_id, swept_keys(overrides))
        now.multirun = self

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.tracker is None or self.run_id is None:
            return
        summary = self.tracker.summarise(self.run_id)
        if not summary.get("children"):
            self.discard()
        elif session.current().refused:
            self.tracker.end(self.run_id, "FAILED", "refused: " + "; ".join(session.current().refused))
        else:
            self.tracker.end(self.run_id, "FINISHED")
        self._forget()

    def discard(self) -> None:
        """Nothing trained: no parent run is left behind."""
        if self.run_id is not None:
            self.tracker.end(self.run_id, "KILLED")
            self.tracker.client.delete_run(self.run_id)
        self._forget()

    def _forget(self) -> None:
        now = session.current()
        if now.multirun is self:
            now.set_parent(None)
            now.multirun = None
        self.run_id = None
