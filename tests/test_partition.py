"""A partitioned worker: one worker's link to both servers goes down (its veth) mid-batch, for
longer than the grace period, then comes back. Nothing is refused or reset on the way: packets are
dropped, as when a switch port fails. While it is cut off, the other worker fails its trials as
stale and asks them again. Once healed, the cut worker tells nothing for them (their reports are
refused, their runs end KILLED, not FINISHED), says so in one line, and asks fresh trials. The
study ends with exactly n_trials, one run per trial, and neither worker writes a traceback.

The test waits for events, not for time: the cut lasts until the storage shows the cut worker's
trials failed and its own calls failed (not hung), and meanwhile this process holds the study's
lock, so that trials are left for the cut worker to ask once the link is back."""

import re
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
from optuna.trial import TrialState
from sweep_helpers import SPACE, Output, env_for, study_args

from zipnet.sweeps.storage import RUN_ID, WORKER, lock, tally

N_TRIALS = 16
CUT, KEPT = "worker-cut", "worker-kept"
UNREACHABLE = ("storage unreachable (", "heartbeat: the storage did not take a beat")  # a call that failed


def _worker_args(storage: str, name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "zipnet.cli.train",
        *study_args(
            name,
            n_trials=N_TRIALS,
            batch=2,
            pruner="{name:none}",
            storage=storage,
            heartbeat_interval=1,
            grace_period=3,
        ),
        "data.n_train=2000",
        "data.n_test=200",
        "trainer.passes=4",
        "trainer.progress=off",
        "tracking.figures=false",
        "tracking.system_metrics=false",
        *SPACE,
    ]


def _running_on(storage, name: str, hostname: str) -> set[int]:
    study = optuna.load_study(study_name=name, storage=storage)
    return {
        t.number
        for t in study.get_trials(states=(TrialState.RUNNING,))
        if str(t.user_attrs.get(WORKER, "")).startswith(f"{hostname}:")
    }


def _states(storage, name: str, numbers: set[int]) -> dict[int, TrialState]:
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    return {t.number: t.state for t in trials if t.number in numbers}


@pytest.mark.slow
def test_a_worker_cut_off_past_the_grace_period_loses_its_trials_and_asks_fresh_ones(cluster, tmp_path, monkeypatch):
    if cluster.network is None:
        pytest.skip("a partition needs hosts in network namespaces on a bridge (see tests/hosts.py)")
    name = "partition"
    env = cluster.env(env_for(tmp_path))
    for key, value in cluster.postgres.env.items():  # this process takes the study's lock as a worker does
        monkeypatch.setenv(key, value)
    # read straight from the server, one connection per read (this process is never cut off)
    storage = optuna.storages.RDBStorage(
        cluster.postgres.url("optuna", password=True), engine_kwargs={"poolclass": sqlalchemy.pool.NullPool}
    )
    hosts = {h: cluster.host(h, pid=True) for h in (CUT, KEPT)}
    workers, outputs = {}, {}
    for hostname, host in hosts.items():
        cwd = tmp_path / hostname  # the workers share no folder
        cwd.mkdir()
        workers[hostname] = host.popen(
            _worker_args(cluster.storage, name),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        outputs[hostname] = Output(workers[hostname])
    try:
        # cut mid-batch: a pass of the cut worker's batch reported, more to come; a cut that finds
        # it between batches holding nothing is healed at once (shorter than any timeout) and tried again
        for count in range(1, 20):
            outputs[CUT].wait_for(lambda line: line.endswith(": pass 1"), count=count, timeout=600)
            cluster.network.cut(hosts[CUT])
            held = _running_on(storage, name, CUT)
            if held:
                break
            cluster.network.heal(hosts[CUT])
        assert held, "the cut worker never held a trial when cut"
        cut_at = time.monotonic()
        deadline = cut_at + 600
        while any(s == TrialState.RUNNING for s in _states(storage, name, held).values()):
            assert time.monotonic() < deadline, "the kept worker did not fail the cut worker's trials"
            time.sleep(0.5)
        failed_after = time.monotonic() - cut_at
        assert set(_states(storage, name, held).values()) == {TrialState.FAIL}  # told nothing while cut off
        # the gate: this process holds the study's lock, so no worker asks (the kept worker still beats
        # and finishes what it holds) and trials are left for the cut worker, however long the cut lasts
        with lock(cluster.storage):
            # cut on until its own calls have failed, not hung (TCP keepalives and user timeout, ~20 s)
            outputs[CUT].wait_for(lambda line: any(what in line for what in UNREACHABLE), timeout=600)
            unreachable_after = time.monotonic() - cut_at
            cluster.network.heal(hosts[CUT])
            healed = time.monotonic()
            lost = outputs[CUT].wait_for(lambda line: ": lost: " in line, timeout=600)
            lost_after = time.monotonic() - healed
        asked = sum(1 for line in outputs[CUT].lines[: outputs[CUT].lines.index(lost)] if "batch: trials" in line)
        outputs[CUT].wait_for(lambda line: "batch: trials" in line, count=asked + 1, timeout=600)
        asked_after = time.monotonic() - healed  # the gate's time included
        codes = {h: w.wait(timeout=900) for h, w in workers.items()}
    finally:
        cluster.network.heal(hosts[CUT])
    texts = {h: o.text() for h, o in outputs.items()}
    for hostname in (CUT, KEPT):
        assert codes[hostname] == 0, texts[hostname][-4000:]
        assert "Traceback" not in texts[hostname], texts[hostname][-4000:]
    # the cut worker: one line for the trials it lost, naming exactly them, then fresh asks
    assert [line for line in texts[CUT].splitlines() if ": lost: " in line] == [lost]
    assert set(map(int, re.search(r"trials ([\d, ]+): lost", lost).group(1).split(", "))) == held
    assert "asking fresh trials" in lost
    for number in held:
        assert f"trial {number}: its worker stopped beating for 3 s; asked again" in texts[KEPT]

    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert tally(trials).counted == N_TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert {t.number for t in trials if t.state == TrialState.FAIL} == held  # the lost ones, and no other
    assert {Retry.retried_trial_number(t) for t in trials} - {None} == held  # each asked again, once

    client = MlflowClient(tracking_uri=cluster.mlflow.url)
    with pytest.MonkeyPatch.context() as mp:  # this process authenticates as the workers do
        for key, value in cluster.mlflow.env.items():
            mp.setenv(key, value)
        exp = client.get_experiment_by_name("zipnet")
        runs = client.search_runs([exp.experiment_id], f"tags.`zipnet.study` = '{name}'", max_results=1000)
    parents = [r for r in runs if r.data.tags["zipnet.role"] == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags["zipnet.role"] == "trial"]
    per_trial = Counter(int(r.data.tags["zipnet.trial"]) for r in children)
    assert per_trial == Counter(t.number for t in trials)  # one run per trial: none twice, none missing
    by_id = {r.info.run_id: r for r in children}
    for t in trials:
        (run,) = [r for r in children if r.data.tags["zipnet.trial"] == str(t.number)]
        if t.number in held:
            assert run.info.status == "KILLED", (t.number, run.data.tags)
        else:
            assert run.info.status == "FINISHED" and by_id[t.user_attrs[RUN_ID]] is run
    print(
        f"partition test: the cut worker's trials {sorted(held)} failed as stale {failed_after:.1f} s after the "
        f"cut, its own first call failed after {unreachable_after:.1f} s; cut {healed - cut_at:.0f} s in all; "
        f"after the heal it said they were lost in {lost_after:.1f} s and asked fresh trials in {asked_after:.1f} s "
        "(heartbeat_interval 1 s, grace_period 3 s)"
    )
