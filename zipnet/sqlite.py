"""The sqlite files of zipnet's local stores (an Optuna study's, MLflow's runs): write-ahead
logging with synchronous=NORMAL.

sqlite's defaults (a rollback journal, synchronous=FULL) fsync at every commit: 5 ms each on a
busy disk, and a small study's worker commits about 20 times per trial. In WAL mode with
synchronous=NORMAL a commit appends to the log and syncs only at checkpoints. Readers and one
writer no longer block each other, so workers on one machine share a study as before. A crash of
the process loses nothing; a power cut may lose the last commits but leaves the file whole
(https://www.sqlite.org/wal.html). WAL needs a local filesystem: sqlite files on NFS were never
safe to share, and the README says to use PostgreSQL across machines.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

_FILES: set[str] = set()  # the database files this process's SQLAlchemy connections opened


def fast_commits() -> None:
    """From now on, every sqlite connection that SQLAlchemy opens in this process (Optuna's and
    MLflow's stores both use it) starts in WAL mode with synchronous=NORMAL. Idempotent."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _pragmas):
        event.listen(Engine, "connect", _pragmas)


def _pragmas(connection, record) -> None:
    if isinstance(connection, sqlite3.Connection):
        cursor = connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # kept in the file: every later opener reads it
        except sqlite3.OperationalError:  # a full or read-only disk: the first write says so, at once
            pass  # (raised here, MLflow would retry opening its store for 100 s)
        cursor.execute("PRAGMA synchronous=NORMAL")  # per connection
        _FILES.update(path for _, name, path in cursor.execute("PRAGMA database_list") if name == "main" and path)
        cursor.close()


def checkpoint() -> None:
    """Each file's write-ahead log copied into it, as closing its last connection would do: for a
    process that ends without closing them (zipnet-train's exit). Passive: a reader elsewhere is not
    waited for, and whatever stays in a log is read from it by the next opener (sqlite's recovery)."""
    for path in sorted(p for p in _FILES if os.path.exists(p)):  # (connecting would create a file gone since)
        with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(path, timeout=1)) as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
