"""Running zipnet-train sweeps in subprocesses against real sqlite Optuna and MLflow stores."""

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from zipnet.config import override
from zipnet.sweeps.storage import RUN_ID, tally

TINY = ["data.n_train=200", "data.n_test=100", "trainer.passes=1", "tracking.figures=false"]


def study_args(
    name: str,
    n_trials: int = 6,
    batch: int = 3,
    launcher: str = "population",
    seed: int = 0,
    pruner: str = "{name:median}",
    **settings,
) -> list[str]:
    """A study on the command line: the sweeper, its settings and a search space in Hydra's grammar."""
    args = [
        "-m",
        "hydra/sweeper=zipnet_optuna",
        f"hydra/launcher={launcher}",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.batch={batch}",
        f"hydra.sweeper.sampler={{name:random,seed:{seed}}}",
        f"hydra.sweeper.pruner={pruner}",
    ]
    args += [override(f"hydra.sweeper.{k}", v) for k, v in settings.items()]
    return args


SPACE = [
    "model.init=choice(sqrt,linear)",
    "loss.mse=choice(mean,sum,half_sum)",
    "optim.lr=tag(log,interval(0.005,0.1))",
]


def env_for(cwd: Path) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def zipnet(
    cwd: Path, *args: str, timeout: float = 300, module: str = "zipnet.cli.train"
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env_for(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def popen(cwd: Path, *args: str, module: str = "zipnet.cli.train") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env_for(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Output:
    """A process's merged output, read on a thread as it comes: a test waits for the line that
    marks the moment it needs (no polling), and reads the whole output once the process ends."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines, self._more = proc, [], threading.Condition()
        self._ended = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._more:
                self.lines.append(line.rstrip("\n"))
                self._more.notify_all()
        with self._more:
            self._ended = True
            self._more.notify_all()

    def wait_for(self, test: Callable[[str], bool], count: int = 1, timeout: float = 300) -> str:
        """The `count`-th line that passes `test`; fails if the output ends or the timeout passes first."""

        def seen():
            return [ln for ln in self.lines if test(ln)]

        with self._more:
            self._more.wait_for(lambda: len(seen()) >= count or self._ended, timeout=timeout)
            found = seen()
            assert len(found) >= count, "\n".join(self.lines[-40:])
            return found[count - 1]

    def text(self, timeout: float = 600) -> str:
        """Everything the process wrote, once it has ended."""
        self._reader.join(timeout)
        return "\n".join(self.lines)


def load(cwd: Path, name: str, storage: str | None = None) -> optuna.Study:
    """The study in `storage`, by default the sqlite file beside the MLflow store under cwd."""
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{cwd}/mlruns/optuna.db")


def runs(cwd: Path, name: str, experiment: str = "zipnet"):
    """(client, parents, children) of study `name` in the MLflow store under cwd."""
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs(
        [exp.experiment_id], f"tags.`zipnet.study` = '{name}' and tags.`zipnet.role` = 'study'"
    )
    children = client.search_runs(
        [exp.experiment_id], f"tags.`zipnet.study` = '{name}' and tags.`zipnet.role` = 'trial'"
    )
    return client, parents, children


def counted(study: optuna.Study) -> int:
    return tally(study.get_trials()).counted


def states(db: Path) -> dict[str, int]:
    """Trials per state, read straight from the sqlite file (no Optuna objects in the way)."""
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return dict(con.execute("select state, count(*) from trials group by state").fetchall())
    except sqlite3.OperationalError:  # tables not created yet
        return {}


def assert_study_and_runs_agree(cwd: Path, name: str, n_trials: int, storage: str | None = None):
    """Exactly n_trials counted; nothing left RUNNING or WAITING; one FINISHED parent; a
    FINISHED child run per COMPLETE or PRUNED trial, linked both ways."""
    study = load(cwd, name, storage)
    trials = study.get_trials()
    assert counted(study) == n_trials, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    client, parents, children = runs(cwd, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not [c for c in children if c.info.status == "RUNNING"]
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    by_run = {c.info.run_id: c for c in children}
    for t in done:
        run = by_run[t.user_attrs[RUN_ID]]
        seen = (t.number, t.state.name, run.info.status, run.data.tags.get("zipnet.trial"), t.user_attrs)
        assert run.info.status == "FINISHED" and run.data.tags["zipnet.trial"] == str(t.number), (seen, trials)
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    return study, parents[0], children


def logged_runs(db: Path, metric: str = "test/error") -> int:
    """How many MLflow runs have logged `metric` at least once (read straight from sqlite)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("select count(distinct run_uuid) from metrics where key = ?", (metric,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
