"""Optuna studies over the population engine.

- `study`: a study's definition (what to search, how, to what target), checked before any trial runs;
- `storage`: the study's storage, and the workers' coordination through it (count then ask,
  heartbeats, stale trials failed and asked again, trials given back on preemption);
- `parent`: the study's MLflow parent run, one per study whoever starts first;
- `trial`: the job side: a job that carries its trial in its config reports every pass,
  prunes itself and tells its result, wherever it runs;
- `sweep`: the loop that asks batches and hands them to a launcher;
- `app_trial`: another Hydra app's job reaches its trial (`current_trial()`) to report and prune;
- `search_space`: `custom_search_space`, a function that suggests more of a trial's parameters.

The Hydra sweeper (hydra/sweeper=zipnet_optuna) and zipnet-sweep both drive `sweep.Sweep`.
All of it but `trial` is generic: it serves any Hydra app and imports nothing of zipnet's
trainer (tests/test_layout.py). `trial` (the trainer's jobs, through zipnet.runner) and zipnet's
config checks are imported only where zipnet-train uses them.
"""

import warnings

from zipnet.sweeps.app_trial import current_trial

__all__ = ["current_trial"]

# Optuna marks heartbeats and the retry callback experimental, and warns that heartbeats are meant
# for Study.optimize; zipnet drives them with ask/tell as Optuna's ask-and-tell docs describe
warnings.filterwarnings("ignore", message=".*is experimental.*")
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
