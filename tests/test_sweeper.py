"""hydra/sweeper=zipnet_optuna through `zipnet-train -m`, against real sqlite Optuna and MLflow
stores in a temp dir: populations pruned per pass, jobs that prune themselves under the basic
launcher, resume to exactly n_trials, failures, preemption, and bad input."""

import signal
import threading
import time

import pytest
from optuna.trial import TrialState
from sweep_helpers import (
    SPACE,
    TINY,
    Output,
    assert_study_and_runs_agree,
    load,
    popen,
    runs,
    states,
    study_args,
    zipnet,
)

from zipnet.sweeps.storage import INTERRUPTED, RUN_ID

# what every complete trial logs, figures or not
UNDRAWN = {"config_resolved.yaml", "overrides.yaml", "weights.pt", "confusion.csv", "rejection.csv", "test_misses.json"}


def test_a_tiny_study_trains_as_populations_and_a_rerun_adds_nothing(tmp_path):
    args = [*study_args("tiny"), *TINY, "tracking.figures=true", *SPACE]
    proc = zipnet(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "study 'tiny': 6/6 trials (6 complete" in proc.stdout
    study, parent, children = assert_study_and_runs_agree(tmp_path, "tiny", 6)
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert parent.data.params["sweep.n_trials"] == "6" and parent.data.metrics["study/complete"] == 6
    client = runs(tmp_path, "tiny")[0]
    by_trial = {int(c.data.tags["zipnet.trial"]): c for c in children}
    for t in trials:
        run = by_trial[t.number]
        assert run.info.run_name == f"tiny #{t.number}"
        assert run.data.params["model.init"] == t.params["model.init"]
        assert float(run.data.params["optim.lr"]) == t.params["optim.lr"]
        assert run.data.params["trial.number"] == str(t.number) and run.data.params["data.n_train"] == "200"
        history = client.get_metric_history(run.info.run_id, "test/error")
        assert [(m.step, m.value) for m in history] == [(1, t.value)] and t.intermediate_values == {1: t.value}
        assert run.data.tags["zipnet.population_size"] == "3"  # a batch of 3 is one population
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        models = run.outputs.model_outputs if run.outputs is not None else []
        assert len(models) == 1  # every complete trial has its model
        if run.data.tags.get("zipnet.outputs") == "best":  # the study's best when its batch ended: drawn
            assert UNDRAWN | {"learning_curve.png", "confusion.png", "misclassified.png"} <= arts
        else:  # every other trial draws nothing
            assert arts == UNDRAWN
    best = min(trials, key=lambda t: t.value)
    assert parent.data.tags["zipnet.best_run_id"] == best.user_attrs[RUN_ID]
    assert by_trial[best.number].data.tags["zipnet.outputs"] == "best"
    assert "trials.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    again = zipnet(tmp_path, *args)  # the study is at its target: nothing asked, nothing logged
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(load(tmp_path, "tiny").get_trials()) == 6 and len(runs(tmp_path, "tiny")[2]) == 6


def test_trial_outputs_all_logs_every_trial_in_full(tmp_path):
    outputs = ["tracking.figures=true", "tracking.trial_outputs=all"]
    args = [*study_args("full", n_trials=2, batch=2), *TINY, *outputs, *SPACE]
    proc = zipnet(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, _, children = runs(tmp_path, "full")
    assert len(children) == 2
    for run in children:
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config_resolved.yaml", "weights.pt", "confusion.csv", "learning_curve.png"} <= arts
        assert len(run.outputs.model_outputs) == 1


def test_trial_outputs_lean_leaves_all_but_metrics_and_weights_to_the_batchs_best(tmp_path):
    """A lean trial's run holds its params, metrics and weights.pt and nothing more; the trial that
    is the study's best when its batch ends gets its config files, tables, figures, datasets and
    model then, and its weights still load into the net that makes its test misses."""
    import torch
    from omegaconf import OmegaConf

    from zipnet.data import load_digits
    from zipnet.model import ZipNet

    outputs = ["tracking.figures=true", "tracking.trial_outputs=lean"]
    args = [*study_args("lean", n_trials=4, batch=2), *TINY, *outputs, *SPACE]
    proc = zipnet(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path, "lean")
    client, parents, children = runs(tmp_path, "lean")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    best_by_batch = [min(study.trials[:2], key=lambda t: t.value)]
    if min(t.value for t in study.trials[2:]) <= best_by_batch[0].value:
        best_by_batch.append(min(study.trials[2:], key=lambda t: t.value))
    drawn = {t.user_attrs[RUN_ID] for t in best_by_batch}
    for run in children:
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        models = run.outputs.model_outputs if run.outputs is not None else []
        inputs = run.inputs.dataset_inputs if run.inputs is not None else []
        assert len(client.get_metric_history(run.info.run_id, "test/error")) == 1
        assert run.data.params["model.init"] in ("sqrt", "linear")
        if run.info.run_id in drawn:
            assert run.data.tags["zipnet.outputs"] == "best"
            assert UNDRAWN | {"learning_curve.png", "confusion.png"} <= arts
            assert len(models) == 1 and len(inputs) == 2
        else:
            assert arts == {"weights.pt"} and models == [] and inputs == []
            assert "zipnet.outputs" not in run.data.tags
    # a lean trial's weights are its net: with its params they make the test misses its run logged
    (best_id,) = sorted(drawn)[:1]
    conf = client.download_artifacts(best_id, "config_resolved.yaml", str(tmp_path / "conf"))
    digits = load_digits(OmegaConf.load(conf).data)  # every trial of this study reads the same data
    for run in children:
        local = client.download_artifacts(run.info.run_id, "weights.pt", str(tmp_path / run.info.run_id))
        p = run.data.params
        settings = {"table": p["model.table"], "activation": p["model.activation"], "output": p["model.output"]}
        net = ZipNet.from_params(torch.load(local, weights_only=True), **settings).eval()
        with torch.no_grad():
            misses = int((net(digits.test_x).argmax(1) != digits.test_y).sum())
        assert misses == run.data.metrics["test/misses"]


PRUNING = "{name:median,n_startup_trials:2,n_warmup_steps:0}"


@pytest.mark.parametrize("launcher", ["population", "basic"])
def test_a_bad_learning_rate_region_is_pruned_per_pass(tmp_path, launcher):
    """With the population launcher the batch trains together and the pruner drops members;
    with Hydra's basic launcher each job reports to the storage and prunes itself."""
    args = [
        *study_args(
            "prune",
            n_trials=8,
            batch=4 if launcher == "population" else 1,
            launcher=launcher,
            seed=3,
            pruner=PRUNING,
            max_failure_rate=0.0,
        ),
        "data.n_train=200",
        "data.n_test=100",
        "trainer.passes=3",
        "tracking.figures=false",
        "optim.lr=tag(log,interval(1e-7,0.1))",
    ]
    proc = zipnet(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study, parent, children = assert_study_and_runs_agree(tmp_path, "prune", 8)
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(trials) == 8 and pruned, [(t.state, t.params) for t in trials]
    by_trial = {int(c.data.tags["zipnet.trial"]): c for c in children}
    for t in pruned:  # a pruned trial keeps its run, its metrics up to the pass it stopped at
        run = by_trial[t.number]
        last = max(t.intermediate_values)
        assert run.data.tags["zipnet.status"] == "pruned" and run.data.tags["pruned_at_pass"] == str(last) and last < 3
        assert run.data.metrics["test/error"] == t.intermediate_values[last]
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == [1, 2, 3]


def test_a_diverging_trial_fails_and_the_study_completes(tmp_path):
    args = [
        *study_args("nan", n_trials=4, batch=4, seed=2, max_failure_rate=0.5),
        *TINY,
        "loss.mse=sum",
        "optim.lr=choice(0.03,1e38)",
    ]
    proc = zipnet(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study, parent, children = assert_study_and_runs_agree(tmp_path, "nan", 4)
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert failed and all(t.params["optim.lr"] == 1e38 for t in failed)
    by_trial = {int(c.data.tags["zipnet.trial"]): c for c in children}
    for t in failed:
        assert by_trial[t.number].info.status == "FAILED" and by_trial[t.number].data.tags["diverged_at_pass"] == "1"
        assert t.user_attrs["zipnet.fail_reason"] == "diverged at pass 1"


def test_more_failures_than_allowed_never_exit_0_even_in_one_batch(tmp_path):
    args = [
        *study_args("allnan", n_trials=2, batch=2, max_failure_rate=0.2),
        *TINY,
        "loss.mse=sum",
        "optim.lr=choice(1e38,3e38)",
    ]
    proc = zipnet(tmp_path, *args)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "2 trials failed; max_failure_rate 0.2 of 2 allows 0" in proc.stderr and "Traceback" not in proc.stderr
    trials = load(tmp_path, "allnan").get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials)
    assert runs(tmp_path, "allnan")[1][0].info.status == "FAILED"


def test_a_killed_worker_is_detected_by_heartbeat_and_its_trials_are_asked_again(tmp_path):
    args = [
        *study_args("resume", n_trials=8, batch=2, heartbeat_interval=1, grace_period=2),
        "data.n_train=300",
        "data.n_test=100",
        "trainer.passes=2",
        "tracking.figures=false",
        *SPACE,
    ]
    db = tmp_path / "mlruns" / "optuna.db"
    proc = popen(tmp_path, *args)
    Output(proc).wait_for(lambda line: "batch: trials" in line, count=2)  # the first batch told, the second asked
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = states(db)
    running = at_kill["RUNNING"]
    assert running >= 1 and at_kill["COMPLETE"] >= 2, at_kill  # killed mid-batch
    again = zipnet(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "its worker stopped beating for 2 s; asked again" in again.stdout
    study, parent, children = assert_study_and_runs_agree(tmp_path, "resume", 8)
    stale = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(stale) == running
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    good = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    for t in stale:  # each asked again exactly once, with the parameters it had drawn
        (retry,) = [g for g in good if Retry.retried_trial_number(g) == t.number]
        assert t.params.items() <= retry.params.items()  # killed inside `ask`, it may have drawn none
    # the killed worker's MLflow runs never finished: they end KILLED when their trial is asked again
    killed = [c for c in children if int(c.data.tags["zipnet.trial"]) in {t.number for t in stale}]
    assert all(c.info.status == "KILLED" for c in killed)  # a run exists once its trial's job set up
    assert not [c for c in children if c.info.status == "RUNNING"]


def test_sigterm_gives_the_trials_back_ends_runs_killed_and_exits_143(tmp_path):
    args = [
        *study_args("term", n_trials=6, batch=3),
        "data.n_train=2000",
        "data.n_test=100",
        "trainer.passes=6",
        "tracking.figures=false",
        *SPACE,
    ]
    proc = popen(tmp_path, *args)
    output = Output(proc)
    output.wait_for(lambda line: ": eval: split test" in line, count=3)  # every member of the batch is past pass 1
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    out = output.text()
    assert proc.returncode == 143, out[-3000:]
    assert "given back" in out
    study = load(tmp_path, "term")
    trials = study.get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED)]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(interrupted) == 3 and sorted(w.params["optim.lr"] for w in waiting) == sorted(
        t.params["optim.lr"] for t in interrupted
    )
    client, parents, children = runs(tmp_path, "term")
    assert parents[0].info.status == "KILLED"
    assert children and all(c.info.status == "KILLED" for c in children)
    again = zipnet(tmp_path, *args)  # resumed at once, without waiting for a heartbeat to go stale
    assert again.returncode == 0, again.stderr[-3000:]
    assert_study_and_runs_agree(tmp_path, "term", 6)


def test_two_workers_share_one_study_and_stop_at_exactly_n_trials(tmp_path):
    args = [*study_args("pair", n_trials=10, batch=2), *TINY, *SPACE]
    procs = [popen(tmp_path, *args) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    study, parent, children = assert_study_and_runs_agree(tmp_path, "pair", 10)
    assert len(study.get_trials()) == 10  # nothing asked past the target, nothing given back


# -- checked before any trial runs ----------------------------------------------------------


@pytest.mark.parametrize(
    "extra,key,text",
    [
        (
            ["hydra.sweeper.metric=paper/gap", "loss=cross_entropy", "model.output=linear"],
            "metric",
            "measured on MSE runs only",
        ),
        (["model.init=choice(sqrt,cubic)"], "params.model.init", "'cubic'"),
        (["optim.lr=interval(0.3,0.001)"], "params.optim.lr", "not below high"),
        (["model.nope=choice(1,2)"], "params.model.nope", "model.nope"),
        (["hydra.sweeper.sampler={name:bayes}"], "sampler.name", "tpe"),
        (["+hydra.sweeper.n_trails=5"], "n_trails", "unknown key"),
    ],
)
def test_a_study_that_cannot_run_is_refused_before_any_trial(tmp_path, extra, key, text):
    proc = zipnet(tmp_path, *study_args("bad"), *TINY, "optim.lr=choice(0.01,0.03)", *extra)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("zipnet-train: error:")]
    assert line and f": {key}:" in line[0] and text in line[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlruns" / "optuna.db").exists()


def test_a_missing_storage_folder_is_named(tmp_path):
    proc = zipnet(
        tmp_path,
        *study_args("x", storage=f"sqlite:///{tmp_path}/no/such/dir/optuna.db"),
        *TINY,
        "optim.lr=choice(0.01,0.03)",
    )
    assert proc.returncode == 2 and "the folder" in proc.stderr and "no/such/dir does not exist" in proc.stderr


def test_two_studies_that_share_a_name_are_never_merged_silently(tmp_path):
    """Two storages holding a study of one name (machines that each ran their own copy): the
    report says so."""
    for store in ("a", "b"):
        args = [
            *study_args("twin", n_trials=2, batch=2, storage=f"sqlite:///{tmp_path}/{store}.db"),
            *TINY,
            "optim.lr=choice(0.01,0.03)",
        ]
        proc = zipnet(tmp_path, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    report = zipnet(tmp_path, "--study", "twin", module="zipnet.cli.report")
    assert report.returncode == 0, report.stderr[-3000:]
    assert "warning: 2 studies are named 'twin'" in report.stderr and "a.db" in report.stderr
    assert "b.db" in report.stderr and "--parent RUN_ID" in report.stderr


def _study_in(url: str, name: str, n_trials: int, grace_period: float):
    """A one-parameter study in `url`, asked one trial at a time, beating every second."""
    import optuna

    from zipnet.sweeps.storage import open_storage
    from zipnet.sweeps.study import Param, StudySpec

    spec = StudySpec(
        where="test",
        study_name=name,
        n_trials=n_trials,
        batch=1,
        sampler={"name": "random", "seed": 0},
        params={"optim.lr": Param("optim.lr", optuna.distributions.FloatDistribution(0.01, 0.1))},
        heartbeat_interval=1,
        grace_period=grace_period,
    )
    storage = open_storage(url, spec)
    return spec, storage, optuna.create_study(study_name=name, storage=storage)


def test_a_trial_keeps_beating_from_its_ask_until_it_is_told(tmp_path):
    """Between ask and training (Hydra's job setup, the tracker catching up) a live worker's
    trial must not fall silent: another worker's recovery, past the grace period, leaves it be."""
    from zipnet.sweeps.storage import Coordinator

    url = f"sqlite:///{tmp_path}/optuna.db"
    spec, storage, study = _study_in(url, "beating", n_trials=2, grace_period=2)
    worker, other = (Coordinator(study, storage, url, spec, log=lambda line: None) for _ in range(2))
    try:
        (trial,) = worker.ask()
        started = study.trials[trial.number].datetime_start.timestamp()
        silent_too_long = threading.Event()  # a trial without beats would be stale by now

        def beat():
            worker.recover()
            if time.time() - started > spec.grace + spec.heartbeat_interval:
                silent_too_long.set()

        worker.heartbeat.on_beat = beat  # not yet training: no launch, no job
        assert silent_too_long.wait(timeout=120)
        other.recover()
        assert study.trials[trial.number].state == TrialState.RUNNING
        worker.finish(trial.number, "COMPLETE", 1.0)
        assert study.trials[trial.number].state == TrialState.COMPLETE
        assert worker.heartbeat.covered == {} and worker.heartbeat._thread is None  # scoped to held trials
    finally:
        worker.close()
        other.close()


def test_a_trial_told_while_another_worker_recovers_is_not_taken_for_stale(tmp_path, monkeypatch):
    """The race that ended finished trials' runs KILLED under load: worker A tells its trial just
    as worker B looks for stale ones. B must neither ask it again nor end its run."""
    import optuna

    from zipnet.sweeps.storage import Coordinator

    url = f"sqlite:///{tmp_path}/optuna.db"
    spec, storage, study = _study_in(url, "told", n_trials=2, grace_period=30)
    ended = []
    worker = Coordinator(study, storage, url, spec, log=lambda line: None)
    other = Coordinator(study, storage, url, spec, log=lambda line: None, on_stale=ended.append)
    try:
        (trial,) = worker.ask()
        real = optuna.storages.fail_stale_trials

        def told_meanwhile(s):  # A's tell lands between B's reads of the running trials
            worker.finish(trial.number, "COMPLETE", 1.0)
            real(s)

        monkeypatch.setattr(optuna.storages, "fail_stale_trials", told_meanwhile)
        other.recover()
        assert ended == []
        assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]  # nothing asked again
    finally:
        worker.close()
        other.close()


def test_a_heartbeat_that_fails_is_logged_and_recovers(tmp_path):
    """The storage stops taking beats (its heartbeat table is gone for a while): the worker says
    so once, keeps beating, and says when the storage answers again."""
    import sqlite3

    from zipnet.sweeps.storage import Coordinator

    db = tmp_path / "optuna.db"
    url = f"sqlite:///{db}"
    spec, storage, study = _study_in(url, "outage", n_trials=1, grace_period=30)
    lines, failed, answered = [], threading.Event(), threading.Event()

    def log(line):
        lines.append(line)
        (failed if "did not take a beat" in line else answered if "answers again" in line else threading.Event()).set()

    worker = Coordinator(study, storage, url, spec, log=log)
    try:
        (trial,) = worker.ask()
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE trial_heartbeats RENAME TO trial_heartbeats_away")
        assert failed.wait(timeout=60), lines
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE trial_heartbeats_away RENAME TO trial_heartbeats")
        assert answered.wait(timeout=60), lines
        assert sum("did not take a beat" in ln for ln in lines) == 1 and "trial_heartbeats" in lines[0], lines
        worker.finish(trial.number, "COMPLETE", 1.0)
    finally:
        worker.close()
