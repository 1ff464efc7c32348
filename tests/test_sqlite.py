"""The local stores' sqlite files in WAL mode with synchronous=NORMAL (zipnet/sqlite.py): read
back from the files by a plain sqlite3 connection, and from the stores' own connections."""

import sqlite3

import optuna

from zipnet import session
from zipnet.sweeps import storage as stores
from zipnet.tracking import store


def _journal_mode(path) -> str:
    with sqlite3.connect(path) as con:
        return con.execute("PRAGMA journal_mode").fetchone()[0]


def test_an_optuna_study_file_is_in_wal_mode_and_its_commits_do_not_sync(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    with session.scope():
        found = stores.open_storage(url)
        optuna.create_study(study_name="s", storage=found).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        with found._backend.engine.connect() as con:
            assert con.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL (FULL is 2)
    assert _journal_mode(tmp_path / "optuna.db") == "wal"
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 2  # any reader opens it as before


def test_an_mlflow_store_file_is_in_wal_mode(tmp_path):
    client = store.open_client(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("e"))
    client.log_metric(run.info.run_id, "m", 1.0)
    assert _journal_mode(tmp_path / "mlflow.db") == "wal"
    with sqlite3.connect(tmp_path / "mlflow.db") as con:  # what the client wrote is in the file
        assert con.execute("SELECT value FROM metrics").fetchall() == [(1.0,)]
