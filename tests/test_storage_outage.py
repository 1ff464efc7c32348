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
