"""The study's PostgreSQL restarted mid-batch (`pg_ctl restart -m fast`), or down for a minute:
two workers wait it out and go on. Neither exits with a traceback, the study ends with exactly
n_trials counted and none RUNNING, and no trial of a live worker is failed as stale because
its beats could not be written while the database was away."""

import os
import re
import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from servers import postgres_missing, restart_postgres, start_postgres, start_postgres_again, stop_postgres
from sweep_helpers import Output, assert_study_and_runs_agree, env_for, study_args

from zipnet.sweeps.storage import tally

N_TRIALS = 6


def _worker(cwd, env, name: str, storage: str) -> subprocess.Popen:
    args = study_args(name, n_trials=N_TRIALS, batch=2, pruner="{name:none}", storage=storage)
    args += ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3"]
    return subprocess.Popen(
        [sys.executable, "-m", "zipnet.cli.train", *args]
        + ["data.n_train=1000", "data.n_test=100", "trainer.passes=4", "trainer.progress=off"]
        + ["tracking.figures=false", "tracking.system_metrics=false", "model.init=choice(sqrt,linear)"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _passes(out: Output) -> int:
    return sum(1 for line in list(out.lines) if re.search(r": pass \d+$", line))


@pytest.mark.slow
@pytest.mark.skipif(postgres_missing() is not None, reason=str(postgres_missing()))
@pytest.mark.parametrize("down", [0, 60], ids=["restart", "down-60s"])
def test_workers_wait_out_a_postgresql_outage_and_the_study_counts_exactly_n_trials(tmp_path, down):
    name = f"outage-{down}"
    with start_postgres() as pg:
        storage = pg.url("optuna")
        env = {**env_for(tmp_path), **pg.env}
        os.environ.update(pg.env)  # this process reads the study as the workers do
        workers = [_worker(tmp_path, env, name, storage) for _ in range(2)]
        outs = [Output(w) for w in workers]
        outs[0].wait_for(lambda line: line.endswith(": pass 1"))  # mid-batch: a pass reported, more to come
        if down:
            stop_postgres(pg)
            time.sleep(down)  # the outage itself
            start_postgres_again(pg)
        else:
            restart_postgres(pg)
        back = time.monotonic()
        seen = sum(_passes(o) for o in outs)
        while sum(_passes(o) for o in outs) <= seen and any(w.poll() is None for w in workers):
            time.sleep(0.1)
        print(f"the study trained on {time.monotonic() - back:.1f} s after the database answered again")
        codes = [w.wait(timeout=600) for w in workers]
        texts = [o.text() for o in outs]
        for code, text in zip(codes, texts):
            assert code == 0, text[-4000:]
            assert "Traceback" not in text, text[-4000:]
        assert any("the storage did not take a beat" in t or "storage unreachable" in t for t in texts)
        assert not any("its worker stopped beating" in t for t in texts)
        db = optuna.storages.RDBStorage(
            pg.url("optuna", password=True), engine_kwargs={"poolclass": sqlalchemy.pool.NullPool}
        )
        trials = optuna.load_study(study_name=name, storage=db).get_trials()
        assert tally(trials).counted == N_TRIALS
        assert [t.state for t in trials] == [TrialState.COMPLETE] * N_TRIALS  # none failed: none stale, none lost
        assert_study_and_runs_agree(tmp_path, name, N_TRIALS, storage=storage)


@pytest.mark.skipif(postgres_missing() is not None, reason=str(postgres_missing()))
def test_a_recovery_whose_read_waits_out_an_outage_judges_no_trial_stale_until_steady_again(monkeypatch):
    """A worker looks for stale trials just as PostgreSQL goes away; its read waits out an outage
    longer than the grace period. Every beat in the study is then older than the grace period,
    through no fault of the workers: the judge fails nothing until it has reached the database for a
    whole grace period. Meanwhile its beating thread's own recovery returns at once, not behind it."""
    import threading

    from zipnet import session
    from zipnet.sweeps.storage import Coordinator, open_storage
    from zipnet.sweeps.study import Param, StudySpec

    spec = StudySpec(
        where="test",
        study_name="judged",
        n_trials=2,
        batch=1,
        sampler={"name": "random", "seed": 0},
        params={"optim.lr": Param("optim.lr", optuna.distributions.FloatDistribution(0.01, 0.1))},
        heartbeat_interval=1,
        grace_period=2,
    )
    with start_postgres() as pg:
        for key, value in pg.env.items():
            monkeypatch.setenv(key, value)
        url = pg.url("optuna")
        coordinators = []
        for _ in ("worker", "judge"):  # two processes' storages: each its own Patient
            with session.scope():
                storage = open_storage(url, spec)
                study = optuna.create_study(study_name=spec.study_name, storage=storage, load_if_exists=True)
                lines: list[str] = []
                coordinators.append((Coordinator(study, storage, url, spec, log=lines.append), lines, study))
        (worker, _, _), (judge, said, study) = coordinators
        try:
            (trial,) = worker.ask()
            worker.heartbeat.close()  # its beats stop here: once the judge is steady, it is stale indeed
            stop_postgres(pg)
            judged = []
            reading = threading.Thread(target=lambda: judged.append(judge.recover()))
            reading.start()
            deadline = time.monotonic() + 120
            while not any("storage unreachable" in line for line in said) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert any("storage unreachable" in line for line in said), said  # the judge's read waits
            assert judge.recover(wait=False) is False and reading.is_alive()  # the beating thread's returns
            time.sleep(spec.grace + 1)  # every beat is now older than the grace period
            start_postgres_again(pg)
            reading.join(timeout=300)
            assert judged == [False], said
            assert study.get_trials()[trial.number].state == TrialState.RUNNING
            assert not any("stopped beating" in line for line in said), said
            deadline = time.monotonic() + 120  # steady for a grace period: the silent trial is judged
            while not judge.recover() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert any(f"trial {trial.number}: its worker stopped beating" in line for line in said), said
            assert study.get_trials()[trial.number].state == TrialState.FAIL
        finally:
            worker.close()
            judge.close()
