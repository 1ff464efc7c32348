"""MLflow tracking: every zipnet run, single or swept, becomes one MLflow run.

A run holds
- params: the whole resolved config, flattened to dotted keys (`model.init`, `optim.lr`);
- tags: git commit and dirty flag, zipnet version, data fingerprint, status, and the
  sweep or study with the job or trial number when it is part of one;
- metrics per pass (step = pass number): train/test loss, error %, misses, lr, seconds;
- metric `test/reject_at_1pct` at the last pass: the % of test digits to reject, smallest
  top-two margin first, for 1% error on the rest (the paper's 12.1%; zipnet/rejection.py);
- artifacts: config_resolved.yaml, overrides.yaml, weights.pt (a state_dict), the
  learning curve, the misclassified test digits, the confusion matrix (PNG and CSV) and
  the rejection curve (rejection_curve.png, rejection.csv).

Two ways in. A single `zipnet-train` run streams: `start` before training, `log_pass`
after every pass (one `log_batch` call), `finish` at the end. A population trains K
members first and then calls `log_result` once per member, optionally nested under a
parent run (a study, or a Hydra multirun). MLflow is imported only when a run is logged.

The default store is `sqlite:///mlruns/mlflow.db` in the current directory, artifacts
under `mlruns/`; `tracking.uri`, else `MLFLOW_TRACKING_URI`, points elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import zipnet
from zipnet import paper
from zipnet.errors import ConfigError

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_EXPERIMENT = "zipnet"
PARENT_ENV = "ZIPNET_MLFLOW_PARENT_RUN"  # a Hydra multirun's parent run, for its jobs
ROOT = Path(__file__).resolve().parents[1]

# per-pass metrics as the engine writes them; `seconds` is wall time, never compared
METRICS = (
    "train/loss",
    "train/error",
    "train/misses",
    "test/loss",
    "test/error",
    "test/misses",
    "lr",
    "seconds",
    paper.GAP,
)  # MSE runs only (zipnet/paper.py)
# once per run, at its last pass: rejection rate (%) for 1% error on the accepted test digits
REJECT_METRIC = "test/reject_at_1pct"
# keys that describe where and how a run was watched, not what was trained
NOT_TRAINING = ("tracking.", "trainer.progress", "data.cache_dir", "trial.")

# engine status -> (MLflow run status, zipnet.status tag)
STATUS = {"finished": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED", "error": "FAILED", "killed": "KILLED"}


@dataclass(frozen=True)
class Settings:
    enabled: bool = True
    uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    figures: bool = True
    weights: bool = True


def settings(cfg: DictConfig) -> Settings:
    """The `tracking` group, checked; a config without one tracks with the defaults."""
    node = OmegaConf.select(cfg, "tracking")
    if node is None:
        return Settings()
    out = {}
    for key, default in Settings().__dict__.items():
        value = node.get(key, default)
        if key in ("enabled", "figures", "weights") and not isinstance(value, bool):
            raise ConfigError(f"tracking.{key}", f"{value!r} is not allowed; choose one of true, false")
        if key == "uri" and value is not None and not (isinstance(value, str) and value):
            raise ConfigError("tracking.uri", f"{value!r} is not allowed; give null or a tracking URI")
        if key == "experiment" and not (isinstance(value, str) and value.strip()):
            raise ConfigError("tracking.experiment", f"{value!r} is not allowed; give a non-empty name")
        out[key] = value
    unknown = set(node.keys()) - set(out)
    if unknown:
        raise ConfigError(f"tracking.{sorted(unknown)[0]}", f"is not a tracking setting; use one of {', '.join(out)}")
    return Settings(**out)


def resolve_uri(uri: str | None = None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else the project store; a relative sqlite path is
    made absolute from the current directory and its folder created."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_absolute():
            path = Path.cwd() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{path}"
    return uri


def flatten(cfg: DictConfig | dict) -> dict[str, Any]:
    """{'model': {'init': 'sqrt'}} -> {'model.init': 'sqrt'}; lists stay values."""
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, Any] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(tree, "")
    return out


def param_text(value: Any) -> str:
    """A config value as an MLflow param: JSON for null, bools and lists, str otherwise."""
    if value is None or isinstance(value, (bool, list, tuple)):
        return json.dumps(value)
    return str(value)


_GIT: dict[str, str] | None = None


def git_state() -> dict[str, str]:
    """Commit and dirty flag of the checkout zipnet runs from (once per process)."""
    global _GIT
    if _GIT is None:

        def git(*args):
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20)

        try:
            head = git("rev-parse", "HEAD")
            status = git("status", "--porcelain", "--untracked-files=no")
            ok = head.returncode == 0 and status.returncode == 0
            _GIT = {"commit": head.stdout.strip(), "dirty": str(bool(status.stdout.strip())).lower()} if ok else {}
        except (OSError, subprocess.SubprocessError):
            _GIT = {}
    return _GIT


def base_tags(role: str) -> dict[str, str]:
    git = git_state()
    tags = {
        "zipnet.role": role,  # run | trial | job | study | multirun
        "zipnet.version": zipnet.__version__,
        "zipnet.git_commit": git.get("commit", "unknown"),
        "zipnet.git_dirty": git.get("dirty", "unknown"),
        "zipnet.host": socket.gethostname(),
    }
    if git.get("commit"):
        tags["mlflow.source.git.commit"] = git["commit"]
    return tags


@contextlib.contextmanager
def _store_lock(uri: str):
    """An exclusive file lock beside a sqlite store (no-op for a server)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    with open(uri[len("sqlite:///") :] + ".zipnet-lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_OPEN: dict[str, Tracker] = {}  # runs started in this process and not yet ended


class Tracker:
    """An MLflow client bound to one store and one experiment."""

    def __init__(
        self, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT, figures: bool = True, weights: bool = True
    ):
        from mlflow import MlflowClient

        self.uri = resolve_uri(uri)
        self.figures, self.weights = figures, weights
        self.experiment = experiment
        with _store_lock(self.uri):  # the client creates the tables; two processes must not race
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment_id(experiment)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Tracker | None:
        s = settings(cfg)
        return cls(s.uri, s.experiment, s.figures, s.weights) if s.enabled else None

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # artifacts beside the database, not in the current directory
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            location = (Path(self.uri[len("sqlite:///") :]).parent / "artifacts" / safe).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another process created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # -- one run, step by step ---------------------------------------------------------

    def start(
        self,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        role: str = "run",
        parent_run_id: str | None = None,
    ) -> str:
        all_tags = {**base_tags(role), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=run_name)
        _OPEN[run.info.run_id] = self
        return run.info.run_id

    def log_config(self, run_id: str, cfg: DictConfig, overrides: list[str], digits=None) -> None:
        """Params (the flattened config), the override list as a tag, and both as artifacts."""
        from mlflow.entities import Param, RunTag

        fingerprint = getattr(digits, "fingerprint", digits)

        params = [Param(k, param_text(v)[:6000]) for k, v in flatten(cfg).items()]
        tags = [RunTag("zipnet.overrides", " ".join(overrides)[:8000])]
        if fingerprint:
            tags.append(RunTag("zipnet.data_fingerprint", fingerprint))
        self.client.log_batch(run_id, params=params, tags=tags)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            Path(tmp, "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
            self.client.log_artifacts(run_id, tmp)

    def log_pass(self, run_id: str, row: dict) -> None:
        """One pass's metrics in one call, step = pass number."""
        self.log_history(run_id, [row])

    def log_history(self, run_id: str, history: list[dict]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(row[key]), now, int(row["pass"])) for row in history for key in METRICS if key in row
        ]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def finish(
        self, run_id: str, result, digits=None, status: str | None = None, extra_tags: dict | None = None
    ) -> None:
        """Artifacts and status tags from a RunResult, then end the run."""
        from mlflow.entities import RunTag

        status = status or result.status
        tags = {"zipnet.status": status, "zipnet.passes_done": str(len(result.history))}
        if result.diverged_at_pass is not None:
            tags["diverged_at_pass"] = str(result.diverged_at_pass)
        if status == "pruned" and result.history:
            tags["pruned_at_pass"] = str(result.history[-1]["pass"])
        tags.update(extra_tags or {})
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self._log_outputs(run_id, result, digits)
        self.end(run_id, STATUS.get(status, "FINISHED"))

    def _log_outputs(self, run_id: str, result, digits) -> None:
        import numpy as np
        import torch
        from mlflow.entities import Metric

        from zipnet import figures, rejection

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            if self.weights and result.params is not None:
                torch.save({k: v.detach().cpu().contiguous() for k, v in result.params.items()}, out / "weights.pt")
            if self.figures and result.history:
                figures.learning_curve(result.history, out / "learning_curve.png", title=run_id[:8])
            outputs = result.test_outputs
            if digits is not None and outputs is not None and bool(torch.isfinite(outputs).all()):
                labels = digits.test_y.cpu().numpy().astype(np.int64)
                predicted = outputs.argmax(dim=1).cpu().numpy().astype(np.int64)
                matrix = figures.confusion(labels, predicted)
                figures.confusion_csv(matrix, out / "confusion.csv")
                if self.figures:
                    figures.confusion_png(matrix, out / "confusion.png")
                    figures.misclassified_grid(
                        digits.test_x.cpu().numpy(), labels, predicted, out / "misclassified.png"
                    )
                reject_rate, error = rejection.curve(outputs.cpu().numpy(), labels)
                figures.rejection_csv(reject_rate, error, out / "rejection.csv")
                if self.figures:
                    figures.rejection_curve(reject_rate, error, out / "rejection_curve.png", title=run_id[:8])
                if result.history:  # outputs are those of the last pass evaluated
                    at_1pct = rejection.rate_on_curve(reject_rate, error, 1.0)
                    step = int(result.history[-1]["pass"])
                    self.client.log_batch(
                        run_id, metrics=[Metric(REJECT_METRIC, at_1pct, int(time.time() * 1000), step)]
                    )
            if any(out.iterdir()):
                self.client.log_artifacts(run_id, tmp)

    def end(self, run_id: str, status: str = "FINISHED", error: BaseException | str | None = None) -> None:
        if error is not None:
            text = error if isinstance(error, str) else "".join(traceback.format_exception(error))
            self.client.set_tag(run_id, "zipnet.error", text[-7900:])
            if isinstance(error, BaseException):
                self.client.set_tag(run_id, "zipnet.status", "killed" if status == "KILLED" else "error")
        self.client.set_terminated(run_id, status)
        _OPEN.pop(run_id, None)

    # -- one finished member, after the fact ---------------------------------------------

    def log_result(
        self,
        result,
        cfg: DictConfig,
        overrides: list[str],
        digits=None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
        role: str = "run",
    ) -> str:
        """Log a finished RunResult (from `engine.train`) as its own run; returns the run id."""
        run_id = self.start(run_name, tags, role=role, parent_run_id=parent_run_id)
        try:
            self.log_config(run_id, cfg, overrides, getattr(digits, "fingerprint", None))
            self.log_history(run_id, result.history)
            self.finish(run_id, result, digits)
        except BaseException as err:
            self.end(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", err)
            raise
        return run_id

    def log_failure(
        self,
        cfg: DictConfig | None,
        overrides: list[str],
        error: BaseException | str,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
        role: str = "run",
    ) -> str:
        """A run that could not train at all (bad config, data error): FAILED with the error text."""
        run_id = self.start(
            run_name, {**(tags or {}), "zipnet.status": "error"}, role=role, parent_run_id=parent_run_id
        )
        if cfg is not None:
            self.log_config(run_id, cfg, overrides)
        else:
            self.client.set_tag(run_id, "zipnet.overrides", " ".join(overrides)[:8000])
        self.end(run_id, "FAILED", error if isinstance(error, str) else "".join(traceback.format_exception(error)))
        self.client.set_tag(run_id, "zipnet.status", "error")
        return run_id

    # -- parents ------------------------------------------------------------------------

    def children(self, parent_run_id: str):
        """The parent's child runs as a DataFrame (mlflow.search_runs)."""
        return search_runs(
            self.uri, experiment_ids=[self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
        )

    def summarise(self, parent_run_id: str, metric: str = "test/error", direction: str = "minimize") -> dict:
        """Counts by status and the best child by `metric`, logged onto the parent."""
        from mlflow.entities import Metric, RunTag

        df = self.children(parent_run_id)
        summary: dict[str, Any] = {"children": len(df)}
        if len(df):
            status = df.get("tags.zipnet.status")
            if status is not None:
                for name, count in status.value_counts().items():
                    summary[f"children_{name}"] = int(count)
            column = f"metrics.{metric}"
            done = df[df.get("tags.zipnet.status", "finished") == "finished"] if status is not None else df
            if column in done and done[column].notna().any():
                best = done.loc[done[column].idxmin() if direction == "minimize" else done[column].idxmax()]
                summary[f"best_{metric}"] = float(best[column])
                summary["best_run_id"] = best["run_id"]
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"sweep/{k}", float(v), now, 0)
            for k, v in summary.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        tags = [RunTag("zipnet.best_run_id", summary["best_run_id"])] if "best_run_id" in summary else []
        self.client.log_batch(parent_run_id, metrics=metrics, tags=tags)
        return summary


def search_runs(uri: str, **kwargs):
    """`mlflow.search_runs` (a DataFrame) against `uri`, leaving MLflow's global URI and
    $MLFLOW_TRACKING_URI (which set_tracking_uri exports to subprocesses) as they were."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as service

    env = os.environ.get("MLFLOW_TRACKING_URI")
    before = getattr(service, "_tracking_uri", None)
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(**kwargs)
    finally:
        mlflow.set_tracking_uri(before)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def population_tags(sizes: list[int], positions: list[int] | None = None) -> dict[str, str]:
    """How many members trained together in each pass, and the member's place among them.

    The engine's arithmetic path, and so the last bits of a member's metrics, depends on
    both; zipnet-reproduce replays them with copies of the member."""
    if not sizes:
        return {}
    tags = {"zipnet.population_size": str(sizes[0]), "zipnet.population_sizes": ",".join(map(str, sizes))}
    if positions:
        tags["zipnet.population_positions"] = ",".join(map(str, positions))
    return tags


def abort_open_runs(status: str, error: BaseException | None = None) -> None:
    """End every run this process left open (Ctrl-C: KILLED; an exception: FAILED)."""
    for run_id, tracker in list(_OPEN.items()):
        try:
            tracker.end(run_id, status, error)
        except Exception:  # the store itself may be what failed; nothing more to do
            _OPEN.pop(run_id, None)


def multirun_parent() -> str | None:
    """The run id of the Hydra multirun this job belongs to, if any."""
    return os.environ.get(PARENT_ENV) or None


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
        self.run_id = self.tracker.start(
            f"multirun {sweep_dir.name or sweep_dir}",
            role="multirun",
            tags={"zipnet.sweep": str(sweep_dir), "zipnet.overrides": " ".join(overrides)},
        )
        from mlflow.entities import Param

        self.tracker.client.log_batch(
            self.run_id,
            params=[Param("sweep.overrides", " ".join(overrides)[:6000]), Param("sweep.dir", str(sweep_dir))],
        )
        os.environ[PARENT_ENV] = self.run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.tracker is None or self.run_id is None:
            return
        self.tracker.summarise(self.run_id)
        self.tracker.end(self.run_id, "FINISHED")
        os.environ.pop(PARENT_ENV, None)


def quote(value) -> str:
    """`value` as a string literal in an MLflow filter (the quote is one the value lacks)."""
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise ValueError(f"{text!r}: an MLflow filter cannot match a value holding both quotes")
