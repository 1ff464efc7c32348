"""The trial of another Hydra app's job, for its task function to report to and prune by.

    from zipnet.sweeps import current_trial

    @hydra.main(...)
    def task(cfg):
        trial = current_trial()          # None outside a zipnet_optuna sweep
        for step in range(steps):
            loss = ...
            if trial is not None:
                trial.report(loss, step)
                if trial.should_prune():
                    raise optuna.TrialPruned()   # the sweeper tells the trial PRUNED
        return loss

The sweeper gives each job its trial through Hydra's own `hydra.job.env_set` (ZIPNET_TRIAL: the
storage URL without its password, the study and the trial number), so the job finds it wherever
it runs, in this process or on another machine. The handle is Optuna's own `optuna.Trial`.
"""

from __future__ import annotations

import json
import os

ENV = "ZIPNET_TRIAL"


def env_override(url: str, study_name: str, number: int) -> str:
    """The job override that hands the trial to the job's environment."""
    from zipnet import overrides as written

    value = json.dumps({"storage": url, "study": study_name, "number": number}, separators=(",", ":"))
    return written.override(f"+hydra.job.env_set.{ENV}", value)


def current_trial():
    """The optuna.Trial of the job running now, or None outside a sweep."""
    text = os.environ.get(ENV)
    if not text:
        return None
    import optuna

    from zipnet.sweeps import storage as stores
    from zipnet.sweeps.study import SPEC, StudySpec, make_pruner

    where = json.loads(text)
    storage = stores.open_storage(where["storage"])
    study_id = storage.get_study_id_from_name(where["study"])
    attrs = storage.get_study_user_attrs(study_id)
    spec = StudySpec(where=f"study {where['study']!r}", study_name=where["study"], pruner=attrs[SPEC]["pruner"])
    study = optuna.load_study(study_name=where["study"], storage=storage, pruner=make_pruner(spec))
    return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, where["number"]))
