"""A study read once: an Optuna storage whose trials are one `get_all_trials`, for a run of
decisions that would each read the whole study (a population's pruning per pass, a batch of
asks). Everything but reading trials goes to the real storage; a trial written through the
snapshot, or asked through it, is read again, so later decisions see it as they would.
"""

from __future__ import annotations


class Snapshot:
    def __init__(self, study):
        self._backend, self._study_id = study._storage, study._study_id
        self._name, self._directions = study.study_name, list(study.directions)
        self.trials = list(self._backend.get_all_trials(self._study_id, deepcopy=False))
        self._by_id = {t._trial_id: t for t in self.trials}

    def study(self, sampler, pruner):
        """An optuna.Study on this snapshot, with the given sampler and pruner."""
        import optuna

        return optuna.Study(study_name=self._name, storage=self, sampler=sampler, pruner=pruner)

    def refresh(self, trial_id: int) -> None:
        """Read one trial again (a trial just asked, or taken from the queue)."""
        fresh = self._backend.get_trial(trial_id)
        if trial_id in self._by_id:
            self.trials = [fresh if t._trial_id == trial_id else t for t in self.trials]
        else:
            self.trials.append(fresh)
            self.trials.sort(key=lambda t: t.number)
        self._by_id[trial_id] = fresh

    # -- the storage calls it answers itself ----------------------------------------------

    def get_study_id_from_name(self, study_name):
        return self._study_id if study_name == self._name else self._backend.get_study_id_from_name(study_name)

    def get_study_directions(self, study_id):
        return list(self._directions) if study_id == self._study_id else self._backend.get_study_directions(study_id)

    def get_all_trials(self, study_id, deepcopy=True, states=None):
        if study_id != self._study_id:
            return self._backend.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        import copy

        trials = [t for t in self.trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trial(self, trial_id):
        found = self._by_id.get(trial_id)
        return found if found is not None else self._backend.get_trial(trial_id)

    def set_trial_system_attr(self, trial_id, key, value):
        """Written through; a pruner's rung (successive halving) shows in later reads of the
        snapshot, not in lists read before (as in Optuna's storages, which copy on write)."""
        self._backend.set_trial_system_attr(trial_id, key, value)
        found = self._by_id.get(trial_id)
        if found is not None:
            import copy

            changed = copy.copy(found)
            changed.system_attrs = {**found.system_attrs, key: value}
            self.trials = [changed if t._trial_id == trial_id else t for t in self.trials]
            self._by_id[trial_id] = changed

    def __getattr__(self, name):
        return getattr(self._backend, name)
