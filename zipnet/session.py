"""What one zipnet process keeps between the jobs it trains: one object, not module globals.

zipnet-train's main opens a session around Hydra's run; everything that runs under it (the
task function, the population launcher, the zipnet_optuna sweeper, the multirun callback)
reads `current()`:

    clock       where the time went: training, evaluation, hydra, optuna, tracking, output
    trackers    one MLflow Tracker per store and experiment, opened once
    refused     the jobs of this multirun that could not run, one line each
    multirun    the grid's parent run (zipnet.multirun.MultirunCallback), while one runs
    grid_keys   the keys the grid sweeps: its jobs are named by their values
    storages    Optuna storages by URL, opened once (zipnet.sweeps.storage.open_storage)
    studies     the studies as their jobs see them (zipnet.sweeps.trial)

Two sessions share nothing, so two sweeps in one process, or two tests in a row, do not see
each other's state. Outside any session `current()` is the process's default one.

Environment variables carry the parent run and the grid's keys only across a real process
boundary: jobs that a launcher such as submitit runs in other processes.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import time

from omegaconf import DictConfig

PARENT_ENV = "ZIPNET_MLFLOW_PARENT_RUN"  # a multirun's or study's parent run, for jobs in other processes
GRID_KEYS_ENV = "ZIPNET_GRID_KEYS"  # the keys a grid sweeps, for jobs in other processes


class Clock:
    """Where a session's time went: training and evaluation (the engine's own per-pass
    figures), and each kind of watcher (tracking, optuna, output) or step (hydra)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, kind: str, seconds: float) -> None:
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds

    @contextlib.contextmanager
    def timing(self, kind: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(kind, time.perf_counter() - started)

    def reset(self) -> dict[str, float]:
        """The seconds so far, and a fresh start."""
        out, self.seconds = self.seconds, {}
        return out


class Session:
    def __init__(self):
        self.clock = Clock()
        self.trackers: dict[tuple, object] = {}
        self.refused: list[str] = []
        self.multirun = None  # zipnet.multirun.MultirunCallback, while a grid runs
        self.parent_run_id: str | None = None  # the grid's or study's MLflow parent run
        self.grid_keys: list[str] = []
        self.storages: dict[str, object] = {}
        self.studies: dict[tuple[str, str], tuple[object, str]] = {}

    def tracker_for(self, cfg: DictConfig):
        """The session's Tracker for cfg's store and experiment (opened once), or None when
        tracking is off. A store that cannot be opened raises before anything trains."""
        from zipnet import tracking

        s = tracking.settings(cfg)
        if not s.enabled:
            return None
        key = (tracking.resolve_uri(s.uri), s.experiment, s.figures, s.weights, s.system_metrics, s.trial_outputs)
        if key not in self.trackers:
            self.trackers[key] = tracking.Tracker.from_config(cfg)
        self.trackers[key].flush_seconds = s.flush_seconds
        return self.trackers[key]

    def parent(self) -> str | None:
        """The parent run of the grid or study this session's jobs belong to, if any."""
        return self.parent_run_id or os.environ.get(PARENT_ENV) or None

    def keys(self) -> list[str]:
        """The keys the running grid sweeps."""
        return self.grid_keys or [k for k in os.environ.get(GRID_KEYS_ENV, "").split(",") if k]

    def set_parent(self, run_id: str | None, grid_keys: list[str] | None = None) -> None:
        """Set (or with None, clear) the parent run, here and for jobs in other processes."""
        self.parent_run_id, self.grid_keys = run_id, list(grid_keys or [])
        for name, value in ((PARENT_ENV, run_id), (GRID_KEYS_ENV, ",".join(self.grid_keys))):
            if value:
                os.environ[name] = value
            else:
                os.environ.pop(name, None)

    def close(self) -> None:
        """Wait for the trackers' writers and stop them."""
        for tracker in self.trackers.values():
            tracker.close()
        self.trackers.clear()


_default = Session()
_active: contextvars.ContextVar[Session | None] = contextvars.ContextVar("zipnet_session", default=None)


def current() -> Session:
    """The session open here, or the process's default one."""
    return _active.get() or _default


@contextlib.contextmanager
def scope():
    """A fresh session for the block (zipnet-train's main; a test); closed at its end."""
    session = Session()
    token = _active.set(session)
    try:
        yield session
    finally:
        _active.reset(token)
        try:
            session.close()
        except Exception:  # the store may be what failed; its runs were ended by the caller
            pass
