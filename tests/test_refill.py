"""Asynchronous successive halving (`hydra.sweeper.refill=true`) against real sqlite Optuna and
MLflow stores: a pruned or finished trial's lane takes a new trial at the next pass boundary, the
study still stops at exactly n_trials (one worker or two), every trial has its own child run with
every pass once, and a refilled trial ends bit for bit where its single run ends."""

import json
import signal

from optuna.trial import TrialState
from sweep_helpers import SPACE, Output, assert_study_and_runs_agree, load, popen, runs, study_args, zipnet

from zipnet.config import override
from zipnet.sweeps.storage import INTERRUPTED

HALVING = "{name:successive_halving,min_resource:1,reduction_factor:2}"
DATA = ["data.n_train=200", "data.n_test=100", "trainer.passes=3", "tracking.figures=false"]


def _args(name, n_trials=10, batch=4):
    return [*study_args(name, n_trials=n_trials, batch=batch, pruner=HALVING, refill=True), *DATA, *SPACE]


def test_a_refilled_study_keeps_its_lanes_filled_and_stops_at_exactly_n_trials(tmp_path):
    proc = zipnet(tmp_path, *_args("refill"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    study, parent, children = assert_study_and_runs_agree(tmp_path, "refill", 10)
    trials = study.get_trials()
    assert len(trials) == 10 and [t for t in trials if t.state == TrialState.PRUNED]
    assert out.count("batch: trials") == 1 and "refill: trials" in out  # one population, not ceil(10 / 4)
    # a trial is told when it leaves, not when the population ends: later asks learn from it
    assert min(t.datetime_complete for t in trials) < max(t.datetime_start for t in trials)
    client = runs(tmp_path, "refill")[0]
    by_trial = {int(c.data.tags["zipnet.trial"]): c for c in children}
    for t in trials:
        run = by_trial[t.number]
        sizes = [int(n) for n in run.data.tags["zipnet.population_sizes"].split(",")]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test/error")]
        assert steps == sorted(t.intermediate_values) == list(range(1, len(sizes) + 1))  # every pass once
        if t.number < 10 - 4:  # the last ask may find fewer trials than free lanes
            assert sizes[0] == 4, (t.number, sizes)  # it started in a full population


def test_a_refilled_trial_equals_its_single_run(tmp_path):
    proc = zipnet(tmp_path, *_args("same", n_trials=6, batch=3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    study, _, children = assert_study_and_runs_agree(tmp_path, "same", 6)
    refilled = [t for t in study.get_trials() if t.number >= 3 and t.state == TrialState.COMPLETE]
    assert refilled, [(t.number, t.state) for t in study.get_trials()]
    trial = refilled[0]
    params = [override(k, v) for k, v in trial.params.items()]
    alone = zipnet(tmp_path, *DATA, *params, "tracking.enabled=false", "trainer.progress=off", "hydra.run.dir=alone")
    assert alone.returncode == 0, alone.stderr[-3000:]
    history = json.loads((tmp_path / "alone" / "metrics.json").read_text())["history"]
    client = runs(tmp_path, "same")[0]
    run = next(c for c in children if c.data.tags["zipnet.trial"] == str(trial.number))
    for metric in ("train/loss", "test/loss", "test/error"):
        logged = [m.value for m in client.get_metric_history(run.info.run_id, metric)]
        assert logged == [row[metric] for row in history], metric
    assert trial.value == history[-1]["test/error"]


def test_two_refilling_workers_stop_at_exactly_n_trials(tmp_path):
    args = _args("pair", n_trials=10, batch=2)
    procs = [popen(tmp_path, *args) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    study, _, _ = assert_study_and_runs_agree(tmp_path, "pair", 10)
    assert len(study.get_trials()) == 10  # nothing asked past the target


def test_sigterm_gives_back_the_refilled_trials_too(tmp_path):
    args = [
        *study_args("term", n_trials=6, batch=3, pruner=HALVING, refill=True),
        "data.n_train=2000",
        "data.n_test=100",
        "trainer.passes=6",
        "tracking.figures=false",
        *SPACE,
    ]
    proc = popen(tmp_path, *args)
    output = Output(proc)
    output.wait_for(lambda line: "refill: trials" in line)
    output.wait_for(lambda line: ": eval: split test" in line, count=6)  # the refilled trial is past its pass 1
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    out = output.text()
    assert proc.returncode == 143, out[-3000:]
    trials = load(tmp_path, "term").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = {t.number for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED)}
    assert [n for n in interrupted if n >= 3], out[-3000:]  # a refilled trial was given back
    again = zipnet(tmp_path, *args)  # resumed at once: the given-back trials are asked again
    assert again.returncode == 0, again.stderr[-3000:]
    assert_study_and_runs_agree(tmp_path, "term", 6)
