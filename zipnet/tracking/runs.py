"""Run logging: the Tracker, which turns a zipnet run into an MLflow run.

Only what needs an answer waits: opening the store (`start` needs it to create the run and
return its id). Everything else (params, datasets, per-pass metrics, figures, the model,
artifacts, the end of the run) goes to one background thread per tracker, in order, so the
store opens while the data loads and a run's figures render while the next population trains.
A run still ends only after its artifacts are in: its end is queued behind them, and
`flush()` (called by `client`, by `abort_open_runs` and at exit) waits for the queue.

Store calls per run are few and do not grow with its passes: params, tags and the first
pass's metrics in one `log_batch` (the run is live from its first pass), then the passes
that came since in one `log_batch` at most every `flush_seconds`, each metric with the time
its pass ended; at the end, the rest with the status tags in one more. A study's trial with
`trial_outputs=best` draws no figures; the trial that is the study's best when its batch ends
gets them then (`log_best`). With `trial_outputs=lean` a trial's run is its params, tags,
metrics and weights.pt (five requests to a server, create and end included), and the batch's
best gets the rest then: config files, tables, datasets, figures and its MLflow model.
Files go straight to the run's artifact location, known from its creation, so no upload
first reads the run (or the model) back from the server.

Every write is a request (zipnet/tracking/writes.py): to a local store sent at once, to a server
spooled on local disk and sent in order by the spool's thread (zipnet/tracking/spool.py), so an
outage of the server stops no training.

A write that finds the store's disk full, over quota or read-only (ENOSPC, EDQUOT, EROFS, or
sqlite's own words for them) stops the process as SIGTERM does, in one line naming the folder
(`stopped_by`): its runs end KILLED or FAILED where the store can still take that, a study's
running trials are given back, and no later file is tried.
"""

from __future__ import annotations

import atexit
import json
import math
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import zipnet
from zipnet import metrics, preempt
from zipnet.config_yaml import to_yaml
from zipnet.errors import StoreError
from zipnet.session import Clock
from zipnet.tracking import store, writes

ROOT = Path(__file__).resolve().parents[2]

METRICS = metrics.PER_PASS  # as the engine writes them every pass; the wall times are never compared
REJECT_METRIC = metrics.REJECT
# keys that describe where and how a run was watched, saved or resumed, or which trial it was, not what was trained
NOT_TRAINING = (
    "tracking.",
    "trainer.progress",
    "trainer.checkpoint_every",
    "trainer.resume",
    "data.cache_dir",
    "trial.",
)
# engine status -> MLflow run status
# what the writer thread's seconds go to (Tracker.split): mlflow's import and the store's opening
# (a new sqlite store: its tables), the figures and other files, the model, and every other write
SPENT = ("import and store", "figures and files", "model", "writes")
STATUS = {"finished": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED", "error": "FAILED", "killed": "KILLED"}
WATCHED = ("run", "multirun", "study")  # roles whose runs last as long as their training: CPU and memory logged


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


_GIT: dict[str, str] | None = None  # the checkout's state, read once: one per process, the same for every session


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


def _error_text(error: BaseException | str) -> str:
    return error if isinstance(error, str) else "".join(traceback.format_exception(error))


def _now() -> int:
    return int(time.time() * 1000)


@dataclass
class _Batch:
    """What one background job writes to a run."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[int, dict[str, float], int]] = field(default_factory=list)  # (step, {key: value}, ms)
    files: dict[str, str | bytes] = field(default_factory=dict)  # artifact name -> text (or bytes)
    data: dict | None = None  # the data config, to describe `digits` as datasets
    digits: Any = None

    def take(self) -> _Batch:
        """Everything gathered so far, leaving this batch empty."""
        out = _Batch(self.params, self.tags, self.metrics, self.files, self.data, self.digits)
        self.params, self.tags, self.metrics, self.files, self.data, self.digits = {}, {}, [], {}, None, None
        return out


@dataclass
class _Live:
    """A run between its start and its end: what waits for the next flush."""

    # all: everything at its end; best (a study's trial): its figures wait for log_best;
    # lean (a study's trial): all but metrics and weights.pt wait for log_best
    outputs: str
    parent: str | None = None
    pending: _Batch = field(default_factory=_Batch)
    later: _Batch = field(default_factory=_Batch)  # lean: config files and datasets, for log_best
    title: str = ""  # its figures' title: the run's name and the overrides that make it this run
    flushed: float | None = None  # time.monotonic() of the last flush; None before the first
    params: dict[str, str] = field(default_factory=dict)  # the run's params, for its model


@dataclass
class _Held:
    """A study's finished trial waiting for `log_best`: what it has not logged yet."""

    run_id: str
    result: Any
    digits: Any
    outputs: str  # best or lean
    later: _Batch  # lean: its config files and datasets
    params: dict | None
    title: str


def figure_title(name: str, overrides: list[str], width: int = 64) -> str:
    """A run's name and the overrides that make it this run (the trial's own ones, not where it
    is stored or how it is watched), on two lines at most above a figure."""
    import textwrap

    shown = [o for o in overrides if not o.lstrip("+~").startswith(NOT_TRAINING + ("hydra.",))]
    lines = textwrap.wrap("  ".join([name, " ".join(shown)]).strip(), width, max_lines=2, placeholder=" ...")
    return "\n".join(lines)


def _config_files(cfg: DictConfig, overrides: list[str]) -> dict[str, str]:
    return {
        "config_resolved.yaml": to_yaml(cfg, resolve=True),
        "overrides.yaml": to_yaml(OmegaConf.create(list(overrides))),
    }


def _config_batch(cfg: DictConfig, overrides: list[str], digits=None) -> _Batch:
    batch = _Batch(
        params={k: param_text(v)[:6000] for k, v in flatten(cfg).items()},
        tags={"zipnet.overrides": " ".join(overrides)[:8000]},
        files=_config_files(cfg, overrides),
    )
    fingerprint = digits if isinstance(digits, str) else getattr(digits, "fingerprint", None)
    if fingerprint:
        batch.tags["zipnet.data_fingerprint"] = fingerprint
    if fingerprint and not isinstance(digits, str) and "data" in cfg:
        batch.data, batch.digits = OmegaConf.to_container(cfg.data, resolve=True), digits
    return batch


def _merge(first: _Batch, then: _Batch | None) -> _Batch:
    """`first` with `then`'s contents added (its params, tags and files win; metrics in order)."""
    if then is None:
        return first
    first.params.update(then.params)
    first.tags.update(then.tags)
    first.files.update(then.files)
    first.metrics += then.metrics
    if then.data is not None:
        first.data, first.digits = then.data, then.digits
    return first


def _metric_rows(history: list[dict], stamp: int | None = None) -> list[tuple[int, dict[str, float], int]]:
    stamp = stamp or _now()
    return [(int(row["pass"]), {k: float(row[k]) for k in METRICS if k in row}, stamp) for row in history]


# Process-wide by nature, not session state: a signal or the exit ends the process, so every run it
# left open ends KILLED or FAILED (abort_open_runs) and every tracker flushes (atexit), whichever
# session opened them. Keyed by run id and by tracker: two sessions never touch each other's entries.
_OPEN: dict[str, Tracker] = {}  # runs started in this process and not yet ended
_TRACKERS: weakref.WeakSet[Tracker] = weakref.WeakSet()


class Tracker:
    """An MLflow store and experiment, and a background thread that writes to them in order."""

    def __init__(
        self,
        uri: str | None = None,
        experiment: str = store.DEFAULT_EXPERIMENT,
        figures: bool = True,
        weights: bool = True,
        system_metrics: bool = True,
        trial_outputs: str = "best",
        flush_seconds: float = 5.0,
        spool_dir: str | None = None,
        outage_timeout: float = 600.0,
    ):
        self.uri = store.resolve_uri(uri)
        store.check(self.uri)  # a corrupt, read-only or unreachable store fails here, in one line
        self.experiment, self.figures, self.weights, self.system_metrics = experiment, figures, weights, system_metrics
        self.trial_outputs, self.flush_seconds = trial_outputs, flush_seconds
        self._live: dict[str, _Live] = {}  # run id -> what it has not written yet
        self._held: dict[str | None, list[_Held]] = {}  # parent run -> trials of the batch waiting for log_best
        self._artifact_uris: dict[str, str] = {}  # run id -> its artifact location, from its creation
        self.busy = 0.0  # seconds the writer thread spent writing
        self.spent = Clock()  # ... by what it did (`split`)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zipnet-mlflow")
        self._queued: list[Future] = []
        self._problems: dict[str, str] = {}  # run id -> what a background job could not log
        self._monitors: dict[str, Any] = {}  # run id -> MLflow's SystemMetricsMonitor
        # the one line once a write found the store's disk full or read-only: this process stops
        self.fault: str | None = None
        self._faulting = threading.Lock()
        self._artifact_root: Path | None = None  # the experiment's artifact folder, on local disk
        self.unended: list[str] = []  # runs whose end could not be written (the store's disk)
        # IMPORTS: the worker's _open imports mlflow while the data loads; the main thread imports
        # from mlflow only after self._store() or ready() (two threads importing mlflow's circular
        # package at once can get a half-initialised module: ImportError)
        self._opened = self._worker.submit(self._open)
        self._spool = None  # a server's writes wait on local disk for it (zipnet/tracking/spool.py)
        if self.uri.startswith(("http://", "https://")):  # its sender may start on a stopped worker's spool
            from zipnet.tracking import spool

            root = Path(spool_dir or spool.DEFAULT_DIR)
            self._spool = spool.Spool(root, self.uri, self._deliver, self._refused, outage_timeout)
        if figures or weights:  # on the worker while the data loads and the net trains
            self._worker.submit(self._warm, figures, weights)
        _TRACKERS.add(self)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Tracker | None:
        """The tracker the config's `tracking` group asks for; None with tracking.enabled=false.
        Raises StoreError (one line: the store and the way out) for a store that cannot open."""
        s = store.settings(cfg)
        if not s.enabled:
            return None
        return cls(
            s.uri,
            s.experiment,
            s.figures,
            s.weights,
            s.system_metrics,
            s.trial_outputs,
            s.flush_seconds,
            s.spool_dir,
            s.outage_timeout,
        )

    # -- the store, and the queue in front of it ----------------------------------------

    def split(self) -> str:
        """Where the writer thread's seconds went, in one line."""
        spent = self.spent.seconds
        parts = ", ".join(f"{kind} {spent.get(kind, 0.0):.2f} s" for kind in SPENT)
        return f"MLflow's thread {sum(spent.values()):.2f} s: {parts}"

    def _open(self):
        with self.spent.timing("import and store"):
            client = store.open_client(self.uri)
            found = store.experiment_id(client, self.experiment, self.uri)
            location = client.get_experiment(found).artifact_location
        if location.startswith("file:"):
            from mlflow.utils.file_utils import local_file_uri_to_path

            self._artifact_root = Path(local_file_uri_to_path(location))
        return client, found

    def _warm(self, figures: bool, weights: bool) -> None:
        """What the first run's end would pay once per process, paid early: the first figure
        loads matplotlib and its fonts, the first model scans the installed packages."""
        from zipnet.tracking import models, outputs

        try:
            if figures:
                with self.spent.timing("figures and files"):
                    outputs.warm()
            if weights:
                with self.spent.timing("model"):
                    models.warm()
        except Exception:  # only a head start: the real calls report their own errors
            pass

    def ready(self) -> Tracker:
        """Once the store is open, and mlflow imported (IMPORTS): before a caller imports from mlflow."""
        self._store()
        return self

    def _store(self):
        try:
            return self._opened.result()
        except Exception as err:
            self.stopped_by(None, err)  # a full or read-only disk: the process stops, in one line
            if isinstance(err, StoreError):
                raise
            raise store.store_error(self.uri, f"cannot be opened ({store.one_line(err)})") from err

    def stopped_by(self, run_id: str | None, err: BaseException) -> bool:
        """Whether `err` says the store's disk is full or read-only (store.disk_fault), or came after
        one that did (the run then ends FAILED, quietly). The first stops the process as SIGTERM does,
        with its one line: raised here on the main thread, signalled from the writer (its runs end
        KILLED, a study's running trials are given back); outside zipnet-train it is only said."""
        line = store.disk_fault(err, self.uri, self._artifact_root)
        if line is None and self.fault is None:
            return False
        if run_id is not None:
            self._problems.setdefault(run_id, line or f"after {self.fault}: {store.one_line(err)}")
        with self._faulting:
            if self.fault is not None:
                return True
            self.fault = line
        if not preempt.active():
            print(f"zipnet: {line}", file=sys.stderr, flush=True)
        elif threading.current_thread() is threading.main_thread():
            raise preempt.Preempted(signal.SIGTERM, line)
        else:
            preempt.stop(line)
        return True

    @property
    def client(self):
        """The MlflowClient, once everything queued so far is in the store."""
        self.flush()
        return self._store()[0]

    @property
    def experiment_id(self) -> str:
        return self._store()[1]

    def _queue(self, run_id: str | None, job: Callable, *args) -> None:
        """Run job(client, *args) on the worker, after everything queued before. What it cannot
        log is kept against the run, which then ends FAILED with the reason."""

        def work():
            started, before = time.perf_counter(), sum(self.spent.seconds.values())
            try:
                job(self._store()[0], *args)
            except Exception as err:
                if self.stopped_by(run_id, err):
                    return
                self._problems.setdefault(run_id, "".join(traceback.format_exception(err)))
                print(f"zipnet: MLflow run {run_id}: could not log ({type(err).__name__}: {err})", file=sys.stderr)
            finally:
                took = time.perf_counter() - started
                self.busy += took
                self.spent.add("writes", took - (sum(self.spent.seconds.values()) - before))  # what no kind above took

        self._queued = [f for f in self._queued if not f.done()]
        self._queued.append(self._worker.submit(work))

    def _send(self, request: dict, files: Path | None = None) -> None:
        """One write: into the spool for a server, else to the store now. Once the store's disk
        was found full or read-only, files and models are not tried again."""
        if self.fault is not None and request["op"] in ("log_artifacts", "log_model"):
            raise StoreError(self.fault)
        if self._spool is not None:
            self._spool.put(request, files)
        else:
            self._deliver(request, files)

    def _deliver(self, request: dict, files: Path | None) -> None:
        writes.send(self._store()[0], self.uri, request, files, self._problems)

    def _refused(self, request: dict, err: BaseException) -> None:
        """A spooled request the server would not take: its run ends FAILED with the reason."""
        run_id = request["run_id"]
        self._problems.setdefault(run_id, "".join(traceback.format_exception(err)))
        print(f"zipnet: MLflow run {run_id}: could not log ({type(err).__name__}: {err})", file=sys.stderr)

    def _answer(self, what: str, fn: Callable):
        """`fn()`, a call that needs the server's answer: through a server's outage, patiently."""
        return self._spool.call(what, fn) if self._spool is not None else fn()

    def flush(self) -> None:
        """Wait until everything queued is in the store (for a server away past the bound: on disk)."""
        for future in list(self._queued):
            future.result()
        if self._spool is not None:
            self._spool.drain()

    def close(self) -> None:
        """Flush and stop the worker thread (and the spool's)."""
        self.flush()
        self._worker.shutdown(wait=True)
        if self._spool is not None:
            self._spool.close()

    # -- one run, step by step ---------------------------------------------------------

    def start(
        self,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        role: str = "run",
        parent_run_id: str | None = None,
        watch: bool = True,
    ) -> str:
        """Create a run (waiting for the store to open); returns its id. With `watch`, runs with a
        role in WATCHED log CPU and memory every $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL s
        (default 10) until they end (MLflow's system-metrics monitor)."""
        client, experiment_id = self._store()
        all_tags = {**base_tags(role), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if self._spool is None:  # a local store: nothing to wait out
            info = client.create_run(experiment_id, tags=all_tags, run_name=run_name).info
        else:
            info = self._spool.call("create_run", self._creator(client, experiment_id, all_tags, run_name)).info
        run_id = info.run_id
        self._artifact_uris[run_id] = info.artifact_uri
        _OPEN[run_id] = self
        self._live[run_id] = _Live(self._outputs(role), parent=parent_run_id, title=run_name or run_id[:8])
        if watch and self.system_metrics and role in WATCHED:
            self._queue(run_id, self._watch, run_id)
        return run_id

    @staticmethod
    def _creator(client, experiment_id: str, tags: dict[str, str], run_name: str | None) -> Callable:
        """create_run, safe to try again: a try whose answer was lost (a timeout, a cut connection)
        may have made the run, so the next try first looks for it by a tag only it has."""
        import secrets

        tags = {**tags, "zipnet.create_id": secrets.token_hex(8)}
        tried = []

        def create():
            if tried:
                found = client.search_runs(
                    [experiment_id], store.where(tags={"zipnet.create_id": tags["zipnet.create_id"]}), max_results=1
                )
                if found:
                    return found[0]
            tried.append(True)
            return client.create_run(experiment_id, tags=tags, run_name=run_name)

        return create

    def reopen(
        self, run_id: str, tags: dict[str, str] | None = None, role: str = "run", parent_run_id: str | None = None
    ) -> int | None:
        """Take up a run again (a job resumed from its checkpoint): RUNNING, its old end's error tags
        gone, `tags` set. Returns the last pass it has metrics for (0: none); None where this store's
        experiment has no such live run (the caller starts a new one)."""
        self.flush()  # an earlier run of this process may still be ending it
        client, experiment_id = self._store()  # first: mlflow is imported on the worker (IMPORTS)
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.experiment_id != experiment_id or run.info.lifecycle_stage != "active":
            return None
        client.update_run(run_id, status="RUNNING")
        for tag in ("zipnet.error", "zipnet.status"):
            if tag in run.data.tags:
                client.delete_tag(run_id, tag)
        if tags:
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        _OPEN[run_id] = self
        self._artifact_uris[run_id] = run.info.artifact_uri
        live = _Live(self._outputs(role), parent=parent_run_id, title=run.info.run_name or run_id[:8])
        live.params = dict(run.data.params)  # logged by its first process: its model's
        self._live[run_id] = live
        if self.system_metrics and role in WATCHED:
            self._queue(run_id, self._watch, run_id)
        return max((m.step for m in client.get_metric_history(run_id, "test/error")), default=0)

    def upload(self, run_id: str, path: Path) -> str:
        """The file into the run's artifacts now, replacing one of its name (one request where the
        run's location is known); returns that location, for `download` on any machine. Not while
        the server is known to be away: the caller keeps the last upload."""
        if self._spool is not None and self._spool.away:
            raise store.store_error(self.uri, "the tracking server is away")
        if self.fault is not None:
            raise StoreError(self.fault)
        known = self._artifact_uris.get(run_id) or self._store()[0].get_run(run_id).info.artifact_uri
        try:
            store.artifact_repository(self.uri, known).log_artifact(str(path))
        except OSError as err:
            if self.stopped_by(run_id, err):
                raise StoreError(self.fault) from err
            raise
        return known

    def download(self, artifact_uri: str, name: str, folder: Path) -> Path:
        """A file of a run's artifacts (at `artifact_uri`, as `upload` returned it) into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        self._store()  # IMPORTS
        repository = store.artifact_repository(self.uri, artifact_uri)
        return Path(self._answer("download", lambda: repository.download_artifacts(name, str(folder))))

    def _outputs(self, role: str) -> str:
        return self.trial_outputs if role == "trial" else "all"

    def _watch(self, client, run_id: str) -> None:
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop lines per run
        monitor = SystemMetricsMonitor(run_id, tracking_uri=self.uri)
        monitor.start()
        self._monitors[run_id] = monitor

    def log_config(self, run_id: str, cfg: DictConfig, overrides: list[str], digits=None) -> None:
        """Params (the flattened config), the overrides as a tag, both as artifacts, and the
        train and test splits of `digits` (zipnet.data.Digits) as the run's datasets. A plain
        fingerprint string in place of `digits` sets the fingerprint tag only. Written with
        the first pass's metrics (or at the end)."""
        live = self._live.get(run_id)
        batch = _config_batch(cfg, overrides, digits)
        if live is None:  # not started here: written at once
            self._queue(run_id, self._write, run_id, batch)
            return
        live.params = dict(batch.params)
        live.title = figure_title(live.title, overrides)
        pending = live.pending
        pending.params.update(batch.params)
        pending.tags.update(batch.tags)
        aside = live.later if live.outputs == "lean" else pending
        aside.files.update(batch.files)
        aside.data, aside.digits = batch.data, batch.digits

    def log_pass(self, run_id: str, row: dict) -> None:
        """One pass's metrics, step = pass number, stamped now; written at once for the run's
        first pass, then with the passes since at most every `flush_seconds` (queued)."""
        self.log_history(run_id, [row])

    def log_history(self, run_id: str, history: list[dict]) -> None:
        if not history:
            return
        live = self._live.get(run_id)
        if live is None:
            self._queue(run_id, self._write, run_id, _Batch(metrics=_metric_rows(history)))
            return
        live.pending.metrics += _metric_rows(history)
        now = time.monotonic()
        if live.flushed is None or now - live.flushed >= self.flush_seconds:
            live.flushed = now
            self._queue(run_id, self._write, run_id, live.pending.take())

    def _write(self, client, run_id: str, batch: _Batch, folder: Path | None = None) -> None:
        """A batch in three requests at most: params, tags and metrics; datasets; files."""
        from zipnet.tracking import datasets

        metrics = [[k, v, stamp, step] for step, values, stamp in batch.metrics for k, v in values.items()]
        params = [[k, v] for k, v in batch.params.items()]
        tags = [[k, v] for k, v in batch.tags.items()]
        for start in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1,000 metrics a call
            if params or tags or metrics:
                self._send(writes.log_batch(run_id, metrics[start : start + 1000], params, tags))
            params, tags = [], []
        if batch.data is not None:
            self._send(writes.log_inputs(run_id, datasets.inputs(batch.data, batch.digits)))
        with tempfile.TemporaryDirectory() as tmp:
            folder = folder or Path(tmp)
            for name, text in batch.files.items():
                path = folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
            if any(folder.iterdir()):
                self._send(writes.log_artifacts(run_id, self._artifact_uris.get(run_id)), folder)

    def finish(
        self,
        run_id: str,
        result,
        digits=None,
        status: str | None = None,
        extra_tags: dict | None = None,
        _with: _Batch | None = None,
    ) -> None:
        """Status tags, the run's files (weights, figures, rejection curve, confusion), the
        model of a finished run, then the end of the run by its status; all queued, and written
        with whatever the run had not flushed yet.

        A pruned trial keeps its metrics, config and curve data, and draws no figures. A study's
        trial with trial_outputs=best draws none either, and with trial_outputs=lean logs only its
        metrics and weights.pt: a finished one is held for `log_best`, which gives the batch's
        best what it lacks."""
        status = status or result.status
        live = self._live.pop(run_id, None)
        batch = _merge(live.pending.take(), _with) if live is not None else _with or _Batch()
        batch.tags.update({"zipnet.status": status, "zipnet.passes_done": str(len(result.history))})
        if result.diverged_at_pass is not None:
            batch.tags["diverged_at_pass"] = str(result.diverged_at_pass)
        if status == "pruned" and result.history:
            batch.tags["pruned_at_pass"] = str(result.history[-1]["pass"])
        batch.tags.update({k: str(v) for k, v in (extra_tags or {}).items()})
        kind = live.outputs if live is not None else "all"
        params = (live.params or dict(batch.params)) if live is not None else None  # None: read from the store
        later = live.later if live is not None else _Batch()  # what a lean trial leaves for log_best
        if kind == "lean":
            _merge(later, _Batch(files=batch.files, data=batch.data, digits=batch.digits))
            batch.files, batch.data, batch.digits = {}, None, None
        title = live.title if live is not None else run_id[:8]
        self._queue(run_id, self._log_outputs, run_id, result, digits, status, batch, kind, params, title)
        if kind != "all" and status == "finished":
            self._held.setdefault(live.parent, []).append(_Held(run_id, result, digits, kind, later, params, title))
        self.end(run_id, STATUS.get(status, "FINISHED"))

    def _log_outputs(
        self,
        client,
        run_id: str,
        result,
        digits,
        status: str,
        batch: _Batch,
        kind: str,
        params: dict | None,
        title: str,
    ) -> None:
        from zipnet.tracking import outputs

        with tempfile.TemporaryDirectory() as tmp:
            with self.spent.timing("figures and files"):
                at_1pct = outputs.write(
                    Path(tmp),
                    result,
                    digits,
                    figures=self.figures and status != "pruned" and kind == "all",
                    weights=self.weights,
                    tables=kind != "lean",
                    title=title,
                )
            if at_1pct is not None and result.history:  # outputs are those of the last pass evaluated
                batch.metrics.append((int(result.history[-1]["pass"]), {REJECT_METRIC: at_1pct}, _now()))
            self._write(client, run_id, batch, Path(tmp))
        if kind != "lean" and status == "finished":
            self._log_model(client, run_id, result, digits, params)

    def _log_model(self, client, run_id: str, result, digits, params: dict | None) -> None:
        from zipnet.tracking import models

        if not (self.weights and result.params is not None and result.member is not None):
            return
        with self.spent.timing("model"):
            known = (self._store()[1], params) if params else (None, None)  # started here: its experiment is ours
            net, example = models.net_and_example(result, digits)
            with tempfile.TemporaryDirectory() as tmp:
                self._send(writes.log_model(run_id, Path(tmp), net, example, *known), Path(tmp))

    def log_best(self, parent_run_id: str | None, metric: str, direction: str, best_before: float | None) -> str | None:
        """Of the trials that finished under `parent_run_id` since the last call and wait for it
        (trial_outputs best or lean), the best by `metric`, if it beats `best_before` (the study's
        best before them): what it lacks (its figures; for a lean trial also its config files,
        tables, datasets and model), on its own (ended) run, tagged zipnet.outputs=best. Returns
        its run id, or None."""
        held = [h for h in self._held.pop(parent_run_id, []) if h.result.history and metric in h.result.history[-1]]
        if not held:
            return None
        sign = 1.0 if direction == "minimize" else -1.0
        best = min(held, key=lambda h: sign * float(h.result.history[-1][metric]))
        value = float(best.result.history[-1][metric])
        if best_before is not None and sign * value > sign * best_before:
            return None
        self._queue(best.run_id, self._log_best, best)
        return best.run_id

    def _log_best(self, client, held: _Held) -> None:
        from zipnet.tracking import outputs

        lean = held.outputs == "lean"
        with tempfile.TemporaryDirectory() as tmp:
            drawn = {"figures": self.figures, "weights": False, "tables": lean}
            with self.spent.timing("figures and files"):
                outputs.write(Path(tmp), held.result, held.digits, **drawn, title=held.title)
            batch = _merge(_Batch(tags={"zipnet.outputs": "best"}), held.later)
            self._write(client, held.run_id, batch, Path(tmp))
        if lean:
            self._log_model(client, held.run_id, held.result, held.digits, held.params)

    def log_batch(
        self,
        run_id: str,
        metrics: dict[str, float] | None = None,
        step: int = 0,
        tags=None,
        params=None,
        files: dict[str, str | bytes] | None = None,
    ):
        """Metrics (at `step`), tags, params and files (artifact name -> text or bytes) onto a run,
        queued behind everything before."""
        batch = _Batch(
            params={k: str(v)[:6000] for k, v in (params or {}).items()},
            tags={k: str(v) for k, v in (tags or {}).items()},
            metrics=[(step, {k: float(v) for k, v in (metrics or {}).items()}, _now())] if metrics else [],
            files=dict(files or {}),
        )
        self._queue(run_id, self._write, run_id, batch)

    def end(self, run_id: str, status: str = "FINISHED", error: BaseException | str | None = None) -> None:
        """End the run FINISHED, FAILED or KILLED (queued behind its artifacts); an error's text
        becomes the `zipnet.error` tag. A run whose logging failed ends FAILED with the reason."""
        _OPEN.pop(run_id, None)
        live = self._live.pop(run_id, None)  # ended without finishing (aborted): what it had gathered
        if live is not None:
            pending = live.pending.take()
            if pending.params or pending.tags or pending.metrics or pending.data is not None:
                self._queue(run_id, self._write, run_id, pending)
        text = _error_text(error) if error is not None else None
        stopped = "killed" if status == "KILLED" else "error"
        self._queue(run_id, self._end, run_id, status, text, stopped if isinstance(error, BaseException) else None)

    def _end(self, client, run_id: str, status: str, text: str | None, zipnet_status: str | None) -> None:
        monitor = self._monitors.pop(run_id, None)
        if monitor is not None:
            monitor.finish()
        try:
            self._send(writes.end(run_id, status, text, zipnet_status))
        except Exception:
            self.unended.append(run_id)
            raise

    def set_status(self, run_id: str, status: str) -> None:
        """The run's status (RUNNING again: a resumed study's parent), queued behind everything before."""
        self._queue(run_id, lambda client: self._send(writes.update_run(run_id, status)))

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
        run_id = self.start(run_name, tags, role=role, parent_run_id=parent_run_id, watch=False)
        try:  # config, metrics, files and status together: fewer store calls per trial
            batch = _config_batch(cfg, overrides, digits)
            batch.metrics = _metric_rows(result.history)
            self.finish(run_id, result, digits, _with=batch)
        except BaseException as err:
            self.end(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", err)
            raise
        return run_id

    # -- parents ------------------------------------------------------------------------

    def children(self, parent_run_id: str):
        """The parent's child runs as a DataFrame (mlflow.search_runs)."""
        self.flush()
        return store.search_runs(
            self.uri,
            experiment_ids=[self.experiment_id],
            filter_string=store.where(tags={"mlflow.parentRunId": parent_run_id}),
        )

    def summarise(self, parent_run_id: str, metric: str = "test/error", direction: str = "minimize") -> dict:
        """Counts by status and the best child by `metric`, logged onto the parent."""
        df = self.children(parent_run_id)  # first: mlflow is imported on the worker (IMPORTS)
        from mlflow.entities import Metric, RunTag

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
        metrics = [
            Metric(f"sweep/{k}", float(v), _now(), 0)
            for k, v in summary.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        tags = [RunTag("zipnet.best_run_id", summary["best_run_id"])] if "best_run_id" in summary else []
        self.client.log_batch(parent_run_id, metrics=metrics, tags=tags)
        return summary


def flush() -> None:
    """Wait until every tracker of this process has written what it queued."""
    for tracker in list(_TRACKERS):
        tracker.flush()


atexit.register(flush)  # a process never exits with a run's figures or its end still queued


def abort_open_runs(status: str, error: BaseException | None = None) -> str:
    """End every run this process left open (Ctrl-C: KILLED; an exception: FAILED), and wait.
    Returns how they ended, for a line's end: `runs ended KILLED`, or which could not be ended."""
    for run_id, tracker in list(_OPEN.items()):
        tracker.end(run_id, status, error)
    try:
        flush()
    except Exception:  # the store itself may be what failed; nothing more to do
        pass
    unended = [run_id for tracker in list(_TRACKERS) for run_id in tracker.unended]
    if not unended:
        return f"runs ended {status}"
    return (
        f"the end of {len(unended)} run(s) could not be written to the store, so MLflow shows them "
        f"RUNNING ({', '.join(run_id[:8] for run_id in unended)})"
    )
