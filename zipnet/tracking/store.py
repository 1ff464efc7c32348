"""Where runs are kept: the tracking URI, the `tracking` settings, a quick check that the store
opens, the MLflow client and experiment, filters, and reading runs back.

The default store is `sqlite:///mlruns/mlflow.db` in the current directory, with artifacts
under `mlruns/artifacts/`; `tracking.uri`, else $MLFLOW_TRACKING_URI, points elsewhere (a
shared `mlflow server` works unchanged). MLflow is imported only where a store is opened.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sqlite3
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from zipnet.errors import ConfigError, StoreError, first_line

# MLflow's usage telemetry calls out to the network from a background thread and waits for it at
# exit (about a second per process here, offline; zipnet runs offline): off unless the user set it
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Against a server, ending a run also reads it back to print its link (a request per run, and a
# line per trial on stdout); zipnet prints the runs table's link itself (make ui, zipnet-report)
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_EXPERIMENT = "zipnet"
# MLflow 3's UI opens an experiment of this kind on its runs table (the "Model training" view)
# rather than on the GenAI overview; the same view by URL: ...?workflowType=machine_learning
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
UI_QUERY = "?workflowType=machine_learning"


@dataclass(frozen=True)
class Settings:
    enabled: bool = True
    uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    figures: bool = True
    weights: bool = True  # weights.pt and the MLflow model
    system_metrics: bool = True  # CPU and memory of runs that train here (MLflow's monitor)
    trial_outputs: str = "best"  # a study's trials: figures for each batch's best ones, "all", or "lean"
    flush_seconds: float = 5.0  # a live run's metrics reach the store at its first pass, then this often
    spool_dir: str | None = None  # a server's pending writes, per worker (None: mlruns/spool here)
    outage_timeout: float = 600.0  # how long a worker spools through an unreachable server before it stops


FLAGS = ("enabled", "figures", "weights", "system_metrics")
TRIAL_OUTPUTS = ("best", "all", "lean")


def settings(cfg: DictConfig) -> Settings:
    """The `tracking` group, checked; a config without one tracks with the defaults."""
    node = OmegaConf.select(cfg, "tracking")
    if node is None:
        return Settings()
    out = {}
    for key, default in Settings().__dict__.items():
        value = node.get(key, default)
        if key in FLAGS and not isinstance(value, bool):
            raise ConfigError(f"tracking.{key}", f"{value!r} is not allowed; choose one of true, false")
        if key == "uri" and value is not None and not (isinstance(value, str) and value):
            raise ConfigError("tracking.uri", f"{value!r} is not allowed; give null or a tracking URI")
        if key == "trial_outputs" and value not in TRIAL_OUTPUTS:
            raise ConfigError(
                "tracking.trial_outputs", f"{value!r} is not allowed; choose one of {', '.join(TRIAL_OUTPUTS)}"
            )
        if key == "flush_seconds" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError("tracking.flush_seconds", f"{value!r} is not allowed; give seconds, 0 or more")
        if key == "outage_timeout" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError("tracking.outage_timeout", f"{value!r} is not allowed; give seconds, 0 or more")
        if key == "spool_dir" and value is not None and not (isinstance(value, str) and value):
            raise ConfigError("tracking.spool_dir", f"{value!r} is not allowed; give null (mlruns/spool) or a folder")
        if key == "experiment" and not (isinstance(value, str) and value.strip()):
            raise ConfigError("tracking.experiment", f"{value!r} is not allowed; give a non-empty name")
        out[key] = value
    unknown = set(node.keys()) - set(out)
    if unknown:
        raise ConfigError(f"tracking.{sorted(unknown)[0]}", f"is not a tracking setting; use one of {', '.join(out)}")
    return Settings(**out)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store, else None."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def resolve_uri(uri: str | None = None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else the project store; a relative sqlite path is
    made absolute from the current directory and its folder created."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    path = sqlite_path(uri)
    if path is not None:
        path = path if path.is_absolute() else Path.cwd() / path
        uri = f"sqlite:///{path}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise store_error(
                uri,
                f"cannot create the folder {path.parent} ({err.strerror})",
                "point tracking.uri at a folder you can write",
            ) from err
    return uri


def store_error(uri: str, problem: str, fix: str = "") -> StoreError:
    """One line: the store, what is wrong, and the way out (always including tracking.enabled=false)."""
    way_out = (
        f"{fix}, or run without tracking: tracking.enabled=false"
        if fix
        else "run without tracking: tracking.enabled=false"
    )
    return StoreError(f"MLflow store {uri}: {problem}; {way_out}")


# what a write that found no room, or no write access, says (OSError's errno; sqlite's own words)
DISK_FAULTS = {
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the folder is read-only (read-only file system)",
}
SQLITE_FAULTS = {
    "database or disk is full": "the disk is full (database or disk is full)",
    "attempt to write a readonly database": "the folder is read-only (readonly database)",
}


def disk_fault(err: BaseException | None, uri: str, root: Path | None = None) -> str | None:
    """One line for an error that says the store's disk is full, over quota or read-only (in `err`
    or the errors it wraps): the folder, what is wrong and the way out. None for any other error.
    The folder named is `root` (the experiment's artifact folder) for a file under it."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        what, where = None, None
        if isinstance(err, OSError) and err.errno in DISK_FAULTS:
            what = DISK_FAULTS[err.errno]
            name = err.filename2 or err.filename  # a copy's target, else the file (a write's names none)
            where = Path(os.fsdecode(name)) if name is not None else root
            if where is not None and where != root:
                where = root if root is not None and where.is_relative_to(root) else where.parent
        else:
            what = next((v for k, v in SQLITE_FAULTS.items() if k in str(err)), None)
            db = sqlite_path(uri)
            where = db.parent if db is not None else None
        if what is not None:
            fix = "make it writable" if "read-only" in what else "free space there"
            return str(store_error(uri, f"{where or 'its folder'}: {what}", f"{fix} and rerun the same command"))
        err = err.__cause__ or err.__context__
    return None


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def one_line(err: BaseException) -> str:
    """The error's type and first line, as a store error quotes it."""
    return f"{type(err).__name__}: {first_line(err)[:200]}"


def check(uri: str) -> None:
    """Fail fast, in one line, before anything trains: a sqlite file that is not an MLflow
    database, a store folder that cannot be written, a server that does not answer.
    Needs only the standard library (MLflow's import alone takes about a second)."""
    path = sqlite_path(uri)
    if path is not None:
        try:
            _lock_path(path).touch()
        except OSError as err:
            raise store_error(
                uri,
                f"cannot write in {path.parent} ({err.strerror})",
                "make the folder writable or point tracking.uri elsewhere",
            ) from err
        if not path.exists():
            return
        if not os.access(path, os.R_OK | os.W_OK):
            raise store_error(uri, f"{path} is read-only", "make it writable or point tracking.uri elsewhere")
        try:
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)) as db:
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as err:
            raise store_error(
                uri, f"{path} is not a readable SQLite database ({err})", f"move or delete {path.name}"
            ) from err
        if tables and "experiments" not in tables:
            raise store_error(
                uri, f"{path} is an SQLite database but not an MLflow store", "point tracking.uri at another file"
            )
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10):
                pass
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise store_error(
                uri, f"the tracking server does not answer ({reason})", "start it (make ui) or fix tracking.uri"
            ) from err


def cache_dir() -> Path:
    """zipnet's cache folder (the prepared digits' too): $ZIPNET_CACHE, else ~/.cache/zipnet."""
    return Path(os.environ.get("ZIPNET_CACHE") or Path.home() / ".cache" / "zipnet").expanduser()


def template(folder: Path | None = None) -> Path:
    """An empty MLflow sqlite store at the installed MLflow's head revision, made once (MLflow's own
    table creation and migrations, a second or more) and kept in the cache folder under a name that
    holds MLflow's version and that revision, so another MLflow never finds it. No experiment in it:
    MLflow adds its Default experiment, with its artifacts under the new store's folder, on opening."""
    import mlflow
    import sqlalchemy
    from filelock import FileLock
    from mlflow.store.db import utils

    folder = folder or cache_dir()
    path = folder / f"mlflow-{mlflow.__version__}-{utils._get_latest_schema_revision()}.db"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(_lock_path(path)):
        if not path.exists():
            made = path.with_name(f"{path.name}.{os.getpid()}.new")
            engine = sqlalchemy.create_engine(f"sqlite:///{made}")
            try:
                utils._initialize_tables(engine)
            finally:
                engine.dispose()  # its last connection closed: the write-ahead log is in the file
            os.replace(made, path)
    return path


def _new_store(path: Path) -> None:
    """The new store `path` as a copy of the template; where that fails, MLflow makes its tables."""
    try:
        made = path.with_name(f"{path.name}.{os.getpid()}.new")
        shutil.copyfile(template(), made)
        os.replace(made, path)
    except Exception as err:
        print(
            f"zipnet: no MLflow store template ({one_line(err)}); MLflow creates {path.name}'s tables", file=sys.stderr
        )


def open_client(uri: str):
    """An MlflowClient on `uri` whose store has opened (a new sqlite store: a copy of `template()`)."""
    from filelock import FileLock
    from mlflow import MlflowClient

    # MLflow logs a database error's traceback before raising it on; zipnet says it in one line (store_error)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    path = sqlite_path(uri)
    if path is not None:
        from zipnet import sqlite

        sqlite.fast_commits()
    # the first client of a new sqlite store creates the tables: two processes must not race
    lock = FileLock(_lock_path(path)) if path is not None else contextlib.nullcontext()
    try:
        with lock:
            if path is not None and not path.exists():
                _new_store(path)
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
    except Exception as err:
        full = disk_fault(err, uri)
        if full is not None:
            raise StoreError(full) from err
        fix = f"move or delete {path.name}" if path is not None else "check the store"
        raise store_error(uri, f"cannot be opened ({one_line(err)})", fix) from err
    return client


def experiment_id(client, name: str, uri: str) -> str:
    """The experiment `name`, created (artifacts beside a sqlite database) or restored, with the
    tags that open MLflow's UI on its runs."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        location = None
        path = sqlite_path(uri)
        if path is not None:  # artifacts beside the database, not in the current directory
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            location = (path.parent / "artifacts" / safe).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except MlflowException:  # another process created it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    for key, value in EXPERIMENT_TAGS.items():
        if found.tags.get(key) != value:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def ui_link(base: str, experiment_id: str) -> str:
    """The address of an experiment's runs table in MLflow's UI at `base`."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs{UI_QUERY}"


# -- filters ------------------------------------------------------------------------------


def quote(value) -> str:
    """`value` as a string literal in an MLflow filter.

    MLflow's parser takes the text between the quotes as it stands (there is no escape), so
    the quote chosen is one the value does not contain.
    """
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise ValueError(f"{text!r}: an MLflow filter cannot match a value holding both ' and \"")


def _key(kind: str, name: str) -> str:
    if "`" in name:
        raise ValueError(f"{name!r}: an MLflow filter cannot name a key holding `")
    return f"{kind}.`{name}`"


def where(tags: dict | None = None, params: dict | None = None, not_tags: dict | None = None) -> str:
    """An MLflow filter string: every tag and param equal to its value, every `not_tags` tag
    different from each of its values; every key and value quoted here, and only here."""
    parts = [f"{_key('tags', k)} = {quote(v)}" for k, v in (tags or {}).items()]
    parts += [f"{_key('params', k)} = {quote(v)}" for k, v in (params or {}).items()]
    for k, values in (not_tags or {}).items():
        parts += [f"{_key('tags', k)} != {quote(v)}" for v in ([values] if isinstance(values, str) else values)]
    return " and ".join(parts)


# -- reading runs back --------------------------------------------------------------------

_GLOBAL_URI = threading.RLock()  # MLflow's process-wide tracking URI, for the calls that read it


@contextlib.contextmanager
def use_uri(uri: str):
    """MLflow's process-wide tracking URI set to `uri` for the block (for the MLflow functions
    that read it: search_runs, log_model), then put back as it was, $MLFLOW_TRACKING_URI
    (which set_tracking_uri exports to subprocesses) included."""
    import mlflow
    from mlflow.tracking import is_tracking_uri_set

    with _GLOBAL_URI:
        env = os.environ.get("MLFLOW_TRACKING_URI")
        before = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(before)
            if env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = env


def search_runs(uri: str, **kwargs):
    """`mlflow.search_runs` (a pandas DataFrame) against `uri`."""
    import mlflow

    with use_uri(uri):
        return mlflow.search_runs(**kwargs)


def artifact_repository(uri: str, artifact_uri: str):
    """The artifact repository at `artifact_uri` (a run's or a logged model's), for the store at
    `uri`: built from a location already known, where MlflowClient would first read the run or
    the model from the server to learn it."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(artifact_uri, tracking_uri=uri)
