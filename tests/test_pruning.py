"""A population's pass (zipnet/sweeps/pruning.py): all members' reports in one write to real
sqlite storage, every pruning decision against one read of the study. The decisions equal
Optuna's own, made trial by trial with Trial.report and Trial.should_prune on a twin study;
the store calls per pass do not grow with the population."""

import optuna
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from zipnet.sweeps import pruning

SPACE = {"x": FloatDistribution(0.0, 1.0)}
PRUNERS = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
}


def _study(path, pruner: str, members: int):
    """Finished trials and `members` running ones, in sqlite (path) or in memory (path None)."""
    rdb = optuna.storages.RDBStorage(f"sqlite:///{path}") if path is not None else None
    storage = optuna.storages.get_storage(rdb) if rdb is not None else optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage, pruner=PRUNERS[pruner](), load_if_exists=False)
    for k in range(6):  # finished trials whose curves the pruner compares against
        curve = {step: 10.0 + 3 * k - step for step in range(1, 4)}
        study.add_trial(
            create_trial(params={"x": k / 10}, distributions=SPACE, value=curve[3], intermediate_values=curve)
        )
    trials = [study.ask(SPACE) for _ in range(members)]
    return rdb, study, [optuna.trial.Trial(study, t._trial_id) for t in trials]


def _values(members: int, step: int) -> list[float]:
    return [8.0 + 2.5 * ((k * 7) % members) - step for k in range(members)]


@pytest.mark.parametrize("twin", ["memory", "sqlite"])
@pytest.mark.parametrize("pruner", sorted(PRUNERS))
def test_population_decisions_equal_trial_by_trial_decisions(tmp_path, pruner, twin):
    members = 12
    _, fast_study, fast = _study(tmp_path / "fast.db", pruner, members)
    # the reference: Optuna trial by trial, on a twin study
    _, slow_study, slow = _study(None if twin == "memory" else tmp_path / "slow.db", pruner, members)
    for step in (1, 2):
        values = _values(members, step)
        decided = pruning.report_and_prune(fast_study, [pruning.Report(t, v, step, True) for t, v in zip(fast, values)])
        expected = []
        for t, v in zip(slow, values):
            t.report(v, step)
            expected.append(t.should_prune())
        assert decided == expected, step
        assert any(expected) and not all(expected), expected  # the case is not trivial
    stored = {
        t.number: t.intermediate_values
        for t in optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/fast.db").get_trials()
    }
    for t, first, second in zip(fast, _values(members, 1), _values(members, 2)):
        assert stored[t.number] == {1: first, 2: second}
    if pruner == "halving":  # the rungs it promoted through the snapshot are in the storage
        rungs = [t.system_attrs for t in fast_study.get_trials() if t.state == TrialState.RUNNING]
        assert any(k.startswith("completed_rung_") for attrs in rungs for k in attrs)


def test_a_pass_costs_the_same_store_calls_for_4_or_40_members(tmp_path):
    counts = {}
    for members in (4, 40):
        rdb, study, trials = _study(tmp_path / f"{members}.db", "median", members)
        statements: list[str] = []

        def count(conn, cursor, statement, *rest, seen=statements):
            seen.append(statement)

        sqlalchemy.event.listen(rdb.engine, "before_cursor_execute", count)
        pruning.report_and_prune(study, [pruning.Report(t, 5.0, 1, True) for t in trials])
        counts[members] = len(statements)
    assert counts[40] == counts[4], counts


def test_a_trial_another_worker_finished_is_neither_written_nor_pruned(tmp_path):
    _, study, trials = _study(tmp_path / "s.db", "median", 3)
    study.tell(trials[1]._trial_id and trials[1].number, state=TrialState.FAIL)
    decided = pruning.report_and_prune(study, [pruning.Report(t, 99.0, 1, True) for t in trials])
    assert decided == [True, False, True]
    again = {t.number: t for t in study.get_trials()}
    assert again[trials[1].number].intermediate_values == {} and again[trials[0].number].intermediate_values == {
        1: 99.0
    }
