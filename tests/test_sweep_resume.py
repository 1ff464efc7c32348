"""A sweep's trial given back mid-training (its worker SIGTERMed), or fallen silent (SIGKILLed,
its checkpoint uploaded every pass), is asked again by a worker in another folder, with nothing
shared but the two servers, and goes on from its last checkpoint: its MLflow run shows every pass
once, tagged zipnet.resumed_from_pass, and its final metrics and weights are those of an
uninterrupted run of the same configuration, bit for bit."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.trial import TrialState
from sweep_helpers import Output, env_for, study_args, zipnet

from zipnet.engine.checkpoint import Checkpoint
from zipnet.net import PARAM_NAMES
from zipnet.sweeps.storage import RUN_ID, tally
from zipnet.sweeps.trial import CHECKPOINT

PASSES = 6
FIXED = [
    "data.n_train=3000",
    "data.n_test=100",
    f"trainer.passes={PASSES}",
    "trainer.backend=c",  # the kernel: a member's numbers do not depend on its neighbours
    "trainer.shift=1",
    "trainer.progress=off",
    "tracking.figures=false",
    "tracking.system_metrics=false",
]
SPACE = ["model.init=choice(sqrt,linear)", "model.dropout=choice(0.1,0.2)"]
OPTIMS = {"sgd": ["optim=sgd"], "sdlm": ["optim=sdlm"], "adamw": ["optim=adamw", "optim.lr=0.001"]}


def _worker(cwd: Path, env: dict, name: str, storage: str, optim: list[str], settings: dict) -> subprocess.Popen:
    cwd.mkdir(exist_ok=True)
    args = study_args(name, n_trials=2, batch=2, pruner="{name:none}", storage=storage, **settings)
    return subprocess.Popen(
        [sys.executable, "-m", "zipnet.cli.train", *args, "hydra.sweep.dir=sweep", *FIXED, *optim, *SPACE],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _rows(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in history]


# SIGTERM: the trials are given back, their checkpoints uploaded then; SIGKILL: they fall silent,
# and their retries go on from the checkpoint uploaded after every pass (checkpoint_upload_every=1)
STOPS = {
    signal.SIGTERM: ({}, 143),
    signal.SIGKILL: ({"checkpoint_upload_every": 1, "heartbeat_interval": 1, "grace_period": 3}, -9),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "optim,stop",
    [("sgd", signal.SIGTERM), ("sdlm", signal.SIGTERM), ("adamw", signal.SIGTERM), ("adamw", signal.SIGKILL)],
    ids=["sgd-sigterm", "sdlm-sigterm", "adamw-sigterm", "adamw-sigkill"],
)
def test_a_trial_asked_again_resumes_on_another_worker_and_ends_as_if_uninterrupted(
    postgres, mlflow_server, tmp_path, optim, stop
):
    name = f"resume-{optim}-{stop.name}"
    settings, code = STOPS[stop]
    storage = postgres.url("optuna")
    env = {**env_for(tmp_path), **postgres.env, **mlflow_server.env}
    first = _worker(tmp_path / "a", env, name, storage, OPTIMS[optim], settings)
    out = Output(first)
    # a pass's line comes before its checkpoint is written (and uploaded): pass 2's, after pass 1's
    out.wait_for(lambda line: line.endswith(": pass 2"), count=2)
    first.send_signal(stop)
    assert first.wait(timeout=300) == code, out.text()[-3000:]
    shutil.rmtree(tmp_path / "a")  # the second worker shares no folder with the first: only the servers

    second = _worker(tmp_path / "b", env, name, storage, OPTIMS[optim], settings)
    again = Output(second)
    assert second.wait(timeout=600) == 0, again.text()[-3000:]
    text = again.text()
    assert "Traceback" not in text

    db = optuna.storages.RDBStorage(
        postgres.url("optuna", password=True), engine_kwargs={"poolclass": sqlalchemy.pool.NullPool}
    )
    trials = optuna.load_study(study_name=name, storage=db).get_trials()
    assert tally(trials).counted == 2
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    given_back = [t for t in trials if t.state == TrialState.FAIL]  # or failed as silent
    assert len(done) == 2 and len(given_back) == 2
    os.environ.update(mlflow_server.env)  # this process reads the server as the workers do
    client = MlflowClient(tracking_uri=mlflow_server.url)
    final = {}
    for folder in (tmp_path / "b" / "sweep").iterdir():
        if (folder / "checkpoint.pt").is_file():
            state = Checkpoint.load(folder / "checkpoint.pt")
            final[state.members[0].meta["mlflow_run_id"]] = state
    for t in done:
        carried = json.loads(t.user_attrs[CHECKPOINT])
        run = client.get_run(t.user_attrs[RUN_ID])
        resumed_from = int(run.data.tags["zipnet.resumed_from_pass"])
        assert resumed_from >= 1 and resumed_from < PASSES
        if stop == signal.SIGTERM:  # given back: the last checkpoint; killed: the last uploaded, as far as it got
            assert resumed_from == carried["pass"]
        assert f"{name} #{t.number}: resumed from " in text
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test/error")]
        assert steps == list(range(1, PASSES + 1))  # every pass once, the carried ones too
        assert sorted(t.intermediate_values) == list(range(1, PASSES + 1))

        overrides = [f"{k}={v}" for k, v in t.params.items()]
        reference = tmp_path / f"whole-{t.number}"
        whole = zipnet(
            tmp_path, *FIXED, *OPTIMS[optim], *overrides, "tracking.enabled=false", f"hydra.run.dir={reference}"
        )
        assert whole.returncode == 0, whole.stderr[-3000:]
        want = Checkpoint.load(reference / "checkpoint.pt").members[0]
        got = final[run.info.run_id].members[0]
        assert _rows(got.history) == _rows(want.history)
        assert _rows(json.loads((reference / "metrics.json").read_text())["history"]) == _rows(got.history)
        for param in PARAM_NAMES:
            assert got.params[param].equal(want.params[param]), param
        assert t.value == want.history[-1]["test/error"]
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test/error")}
        assert [logged[p] for p in range(1, PASSES + 1)] == [row["test/error"] for row in want.history]
