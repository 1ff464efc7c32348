"""A full disk or a read-only folder under the local store, on a real filesystem: a tiny tmpfs
mounted over mlruns/artifacts (or all of mlruns), filled or remounted read-only mid-run. The run
stops in one line naming the folder, exits 2 without a traceback, and its MLflow run ends FAILED
or KILLED; a study stops with its running trials given back, and a rerun after freeing space
counts exactly n_trials. Mounting needs root (CI runs as root); elsewhere these tests skip."""

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from optuna.trial import TrialState
from sweep_helpers import Output, assert_study_and_runs_agree, load, popen, study_args

from zipnet.sweeps.storage import INTERRUPTED

SMALL = ["data.n_train=500", "data.n_test=200", "trainer.progress=off", "tracking.system_metrics=false"]
PASS_DONE = "eval: split test"  # the seed's last line of each pass


@pytest.fixture
def tmpfs():
    """mount(folder, size): a tmpfs of `size` mounted at `folder`; every one unmounted at teardown."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str = "2m") -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (CI runs as root)")
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=False)  # detached once nothing holds it


def fill(folder: Path) -> Path:
    """Write a ballast file into `folder` until its filesystem has no space left."""
    ballast = folder / "ballast"
    with open(ballast, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    return ballast


def read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def at_first_pass(proc: subprocess.Popen, out: Output, fault) -> None:
    """The fault made while the run is held just after its first pass (SIGSTOP), then it goes on."""
    out.wait_for(lambda line: line.startswith(PASS_DONE))
    proc.send_signal(signal.SIGSTOP)
    try:
        fault()
    finally:
        proc.send_signal(signal.SIGCONT)


def statuses(db: Path, role: str | None = None) -> dict[str, str]:
    """run id -> MLflow status, straight from the sqlite file (of one zipnet.role, if given)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as con:
        sql = "select r.run_uuid, r.status from runs r"
        if role is None:
            return dict(con.execute(sql).fetchall())
        sql += " join tags t on t.run_uuid = r.run_uuid and t.key = 'zipnet.role' where t.value = ?"
        return dict(con.execute(sql, (role,)).fetchall())


def said_once(text: str, *words: str) -> str:
    """The one line that holds every word; no traceback and no line per failed write."""
    lines = [line for line in text.splitlines() if all(w in line for w in words)]
    assert len(lines) == 1, text[-4000:]
    assert "Traceback" not in text and "could not log" not in text, text[-4000:]
    return lines[0]


def _train(cwd: Path, *extra: str) -> tuple[subprocess.Popen, Output]:
    proc = popen(cwd, *SMALL, *extra)
    return proc, Output(proc)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_full_or_read_only_artifact_folder_stops_the_run_in_one_line_and_it_ends_failed(tmp_path, tmpfs, fault):
    artifacts = tmpfs(tmp_path / "mlruns" / "artifacts")  # the database stays on the roomy disk
    proc, out = _train(tmp_path, "trainer.passes=4")
    at_first_pass(proc, out, (lambda: fill(artifacts)) if fault == "full" else (lambda: read_only(artifacts)))
    code = proc.wait(timeout=300)
    text = out.text()
    assert code == 2, text[-4000:]
    what = "the disk is full" if fault == "full" else "the folder is read-only"
    line = said_once(text, what, str(artifacts))
    assert "rerun" in line, line
    runs = statuses(tmp_path / "mlruns" / "mlflow.db")
    assert len(runs) == 1 and set(runs.values()) <= {"FAILED", "KILLED"}, runs


def test_a_store_all_on_a_full_disk_stops_in_one_line_saying_whether_the_run_ended(tmp_path, tmpfs):
    # (a folder whose files are open for writing cannot be remounted read-only: the full disk only)
    mlruns = tmpfs(tmp_path / "mlruns", "32m")  # the database and the artifacts both (a new database: 1-2 MB)
    proc, out = _train(tmp_path, "trainer.passes=4", "tracking.flush_seconds=0")
    at_first_pass(proc, out, lambda: fill(mlruns))
    code = proc.wait(timeout=300)  # nothing waits on the full disk
    text = out.text()
    assert code == 2, text[-4000:]
    line = said_once(text, "the disk is full", str(mlruns))
    runs = statuses(mlruns / "mlflow.db")
    assert len(runs) == 1, runs
    # sqlite goes on writing into its log's free pages while it has some: else the line says the end is lost
    assert ("could not be written" in line) == ("RUNNING" in runs.values()), (line, runs)


def test_a_store_on_a_full_disk_from_the_start_fails_in_one_line_and_runs_once_there_is_room(tmp_path, tmpfs):
    ballast = fill(tmpfs(tmp_path / "mlruns", "32m"))
    proc, out = _train(tmp_path, "trainer.passes=1")
    code = proc.wait(timeout=300)  # at once: MLflow does not retry opening the store for 100 s
    text = out.text()
    assert code == 2, text[-4000:]
    said_once(text, "the disk is full", str(tmp_path / "mlruns"))
    ballast.unlink()
    proc, out = _train(tmp_path, "trainer.passes=1")
    assert proc.wait(timeout=300) == 0, out.text()[-4000:]
    assert list(statuses(tmp_path / "mlruns" / "mlflow.db").values()) == ["FINISHED"]


def test_a_study_whose_artifact_folder_fills_stops_gives_its_trials_back_and_a_rerun_completes(tmp_path, tmpfs):
    name, n, passes = "full-disk", 6, 6
    artifacts = tmpfs(tmp_path / "mlruns" / "artifacts")
    args = [*study_args(name, n_trials=n, batch=2, pruner="{name:none}"), *SMALL, f"trainer.passes={passes}"]
    args += ["data.n_train=3000", "tracking.figures=false", "model.init=choice(sqrt,linear)"]  # passes of 0.1 s
    # a checkpoint uploaded into each trial's run after every pass: the batch's writes reach the folder mid-trial
    args += ["trainer.checkpoint_every=1", "hydra.sweeper.checkpoint_upload_every=1"]
    proc = popen(tmp_path, *args)
    out = Output(proc)
    out.wait_for(lambda line: "batch: trials 2, 3" in line)
    db = tmp_path / "mlruns" / "mlflow.db"
    # the disk fills while the second batch trains (held by SIGSTOP at the end of a pass, three or more
    # passes before its end and its tells) once the first batch's runs are whole: no tell meets the fault
    # (a trial told while its run's files are still being written would keep its value, its run FAILED)
    first_done = 2 * passes  # the first batch's "eval: split test" lines
    for done in range(first_done + 2, first_done + 2 * (passes - 3) + 1, 2):
        out.wait_for(lambda line: PASS_DONE in line, count=done)
        proc.send_signal(signal.SIGSTOP)
        if list(statuses(db, "trial").values()).count("FINISHED") == 2:
            break
        proc.send_signal(signal.SIGCONT)
    else:
        pytest.fail("the first batch's runs were not FINISHED before the second batch's last passes")
    try:
        ballast = fill(artifacts)
    finally:
        proc.send_signal(signal.SIGCONT)
    code = proc.wait(timeout=300)
    text = out.text()
    assert code == 2, text[-4000:]
    said_once(text, "the disk is full", str(artifacts))
    assert "trials were given back" in text, text[-4000:]
    trials = load(tmp_path, name).get_trials()
    assert not [t.number for t in trials if t.state == TrialState.RUNNING], [(t.number, t.state) for t in trials]
    given_back = [t.number for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED)]
    assert given_back, [(t.number, t.state, t.user_attrs) for t in trials]
    assert "RUNNING" not in statuses(db).values(), statuses(db)

    ballast.unlink()  # space freed: the same command goes on to exactly n_trials
    again = popen(tmp_path, *args)
    out = Output(again)
    code = again.wait(timeout=600)
    text = out.text()
    assert code == 0, text[-4000:]
    assert "resumed from" in text, text[-4000:]  # a given-back trial, from the checkpoint it left on local disk
    assert_study_and_runs_agree(tmp_path, name, n)
