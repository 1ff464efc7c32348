"""MLflow tracking: every zipnet run, single or swept, becomes one MLflow run.

A run holds
- params: the whole resolved config, flattened to dotted keys (`model.init`, `optim.lr`);
- tags: git commit and dirty flag, zipnet version, data fingerprint, status, and the
  sweep or study with the job or trial number when it is part of one;
- datasets: the train and test splits (name: source, split, size, sampling seed; digest:
  the data fingerprint);
- metrics per pass (step = pass number): train/test loss, error %, misses, lr, seconds;
  `test/reject_at_1pct` at the last pass (zipnet/rejection.py); `system/...` CPU and memory
  for runs that train in the process that logs them;
- artifacts: config_resolved.yaml, overrides.yaml, weights.pt (the engine's state_dict), the
  learning curve, the misclassified test digits, the confusion matrix (PNG and CSV) and the
  rejection curve (PNG and CSV);
- the model: the trained net as an MLflow model (`mlflow.pyfunc.load_model`), for finished runs.

Every run the harness trains streams, a population's members each as their own run: `start`
before training, `log_pass` after every pass, `finish` at the end, optionally under a parent
run (a study, or a Hydra multirun). `log_result` is the way in for a result trained outside
the harness (`zipnet.engine.train` called from Python): one call logs it whole. Only opening
the store is waited for; the rest is written by a background thread (zipnet/tracking/runs.py).

Modules: store (URI, settings, the client, filters, search), runs (the Tracker), writes (its
writes as plain requests), spool (those requests on local disk until a server has them),
outputs (the run's files), datasets, models (the MLflow model and the registry), study (an
Optuna study's views). MLflow is imported only where it is used (a grid's parent: zipnet/multirun.py).
"""

from zipnet.tracking.models import model_uri, register
from zipnet.tracking.runs import (
    METRICS,
    NOT_TRAINING,
    REJECT_METRIC,
    STATUS,
    Tracker,
    abort_open_runs,
    base_tags,
    flatten,
    flush,
    git_state,
    param_text,
    population_tags,
)
from zipnet.tracking.store import (
    DEFAULT_EXPERIMENT,
    DEFAULT_URI,
    Settings,
    quote,
    resolve_uri,
    search_runs,
    settings,
    sqlite_path,
    ui_link,
    where,
)
from zipnet.tracking.study import log_study

__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_URI",
    "METRICS",
    "NOT_TRAINING",
    "REJECT_METRIC",
    "STATUS",
    "Settings",
    "Tracker",
    "abort_open_runs",
    "base_tags",
    "flatten",
    "flush",
    "git_state",
    "log_study",
    "model_uri",
    "param_text",
    "population_tags",
    "quote",
    "register",
    "resolve_uri",
    "search_runs",
    "settings",
    "sqlite_path",
    "ui_link",
    "where",
]
