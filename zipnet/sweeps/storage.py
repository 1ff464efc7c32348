"""A study's storage, and the workers' coordination through it.

Workers on any hosts share one Optuna storage and coordinate only through it (no
coordinator of zipnet's own):
- count, then ask: under the storage's lock (a file lock beside a local sqlite or journal
  file; a PostgreSQL advisory lock on a server), so that together they ask exactly
  `n_trials`. Storages without a lock (grpc://, mysql) give back what went past the target,
  by trial number, and the worker that created the study makes its MLflow parent run.
- heartbeats (Optuna's RDB heartbeat, zipnet.sweeps.heartbeat): a worker records one for each
  of its running trials, from the ask on, every `heartbeat_interval` seconds. A trial silent
  for `grace_period` is failed by `optuna.storages.fail_stale_trials`, and
  `RetryHeartbeatStaleTrialCallback` asks its parameters again, at most `max_retry` times.
  Liveness is never judged by host name or pid, so a live worker's trials are never taken from it.
  Through a gRPC proxy (`grpc://HOST:PORT`, `zipnet-storage-proxy`), whose API has no heartbeat,
  the beat is a trial attribute and a trial is stale once it stopped changing
  (zipnet.sweeps.heartbeat.Silence); the retry is the same.
- give back: on Ctrl-C or a preemption signal a worker fails its running trials and asks
  them again at once, without waiting for the heartbeat to go stale.
- outages: a server storage's calls wait out a database that cannot be reached (Patient:
  retried with backoff for up to `outage_timeout`), and a worker judges no other worker's trial
  stale until it has reached the database for a whole grace period since its last failure.

Counted toward `n_trials`: COMPLETE, PRUNED, and FAIL trials that were not asked again
(diverged, crashed, or retried too often). Journal storages have no heartbeat: a dead
worker's trials there stay RUNNING until a worker on the same storage gives them up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from zipnet import preempt, session
from zipnet.errors import first_line
from zipnet.sweeps.heartbeat import Heartbeat, Silence, attribute_beat
from zipnet.sweeps.snapshot import Snapshot
from zipnet.sweeps.study import FailureBudgetExceeded, StudySpec, SweepError, make_sampler
from zipnet.tracking.store import sqlite_path

WORKER = "zipnet.worker"
INTERRUPTED = "zipnet.interrupted"  # given back by its worker (preempted, Ctrl-C): asked again
SURPLUS = "zipnet.surplus"  # asked past n_trials by a worker without a lock: not counted
REASON = "zipnet.fail_reason"
RUN_ID = "zipnet.mlflow_run_id"


def masked(url: str) -> str:
    """The URL with its password hidden: what may be printed, stored or logged."""
    if "://" not in url or "@" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***"


def without_password(url: str) -> str:
    """The URL a job's config carries: no password (the driver reads $PGPASSWORD or .pgpass)."""
    if "://" not in url or "@" not in url:
        return url
    from sqlalchemy.engine import URL, make_url

    u = make_url(url)
    return URL.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query).render_as_string(
        hide_password=False
    )


def grpc_address(url: str) -> tuple[str, int] | None:
    """(host, port) of a `grpc://HOST:PORT` storage (a zipnet-storage-proxy), else None."""
    if not url.startswith("grpc://"):
        return None
    host, colon, port = url[len("grpc://") :].rstrip("/").rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SweepError(f"storage {url}: give grpc://HOST:PORT, where a zipnet-storage-proxy listens")
    return host.strip("[]"), int(port)


def local_file(url: str) -> Path | None:
    """The local file behind a sqlite or journal storage URL, else None (a server)."""
    if url.startswith("journal:"):
        return Path(url[len("journal:") :].removeprefix("//"))
    return sqlite_path(url)


def open_storage(url: str, spec: StudySpec | None = None):
    """An Optuna storage for `url`: an RDB URL (sqlite, postgresql, mysql), with heartbeats
    and retries as `spec` sets them, behind Optuna's trial cache (a finished trial is read once,
    then only unfinished and new trials; this worker's own running ones not at all:
    zipnet.sweeps.held), or `journal:PATH`.
    Opened once per session (zipnet.session): the sweeper, its coordinator and its jobs share
    the one cache; the first to open it (the sweeper, with its spec) sets its heartbeat."""
    storages = session.current().storages
    if url in storages:
        return storages[url]
    import optuna

    path = local_file(url)
    address = grpc_address(url)
    if address is not None:
        storage = _open_proxy(url, address, spec)
        storages[url] = storage
        return storage
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        else:
            spec = spec or StudySpec(where="storage", study_name="")
            if path is not None:
                from zipnet import sqlite

                sqlite.fast_commits()
            # no pool pre-ping (a statement per call): a call on a connection the server dropped (restarted)
            # fails, SQLAlchemy invalidates the pool's connections, and Patient tries the call again on a new one
            kwargs = (
                {"connect_args": {"timeout": spec.storage_timeout}}
                if url.startswith("sqlite")
                else {"connect_args": connect_args(url)}
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeats are marked experimental
                rdb = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=spec.heartbeat_interval,
                    grace_period=spec.grace,
                    heartbeat_stale_trial_callback=StaleTrials(spec.max_retry),
                )
            from zipnet.sweeps.held import HeldTrials

            # a server: behind the same trial cache, calls that wait out its outages
            storage = HeldTrials(rdb if local_file(url) else Patient(rdb, spec.outage_timeout))
    except Exception as err:
        raise storage_error(url, err) from err
    storages[url] = storages[without_password(url)] = storage  # the session's jobs reach it by either
    return storage


# A network cut (a link down, a partition) sends no reset: without these a call on a connection open
# across it waits for the kernel's retransmissions (some 15 minutes), and the server keeps the cut
# worker's locks (the study's advisory lock, the rows of an open transaction) for two hours of its
# default keepalive. Both ends probe instead: a connection silent or unanswered for about 20 s fails
# (Patient then tries again on a new one), and the server ends the cut worker's sessions as soon.
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 5, "keepalives_count": 3}
USER_TIMEOUT_MS = 20_000  # data sent and unacknowledged this long: the connection has failed
CONNECT_TIMEOUT = 10  # seconds for a new connection (a host that does not answer at all)


def connect_args(url: str) -> dict:
    """The PostgreSQL driver's options for a storage server (see KEEPALIVE): this end's probes and
    timeouts, and the same asked of the server for this session (`options`, unless the URL sets its own)."""
    if not url.startswith("postgresql"):
        return {}
    from sqlalchemy.engine import make_url

    args = {**KEEPALIVE, "tcp_user_timeout": USER_TIMEOUT_MS, "connect_timeout": CONNECT_TIMEOUT}
    if "options" not in make_url(url).query:
        server = {
            "tcp_keepalives_idle": KEEPALIVE["keepalives_idle"],
            "tcp_keepalives_interval": KEEPALIVE["keepalives_interval"],
            "tcp_keepalives_count": KEEPALIVE["keepalives_count"],
            "tcp_user_timeout": USER_TIMEOUT_MS,
        }
        args["options"] = " ".join(f"-c {name}={value}" for name, value in server.items())
    return args


def unreachable(err: BaseException) -> bool:
    """Whether the error says the database could not be reached (refused, cut, restarting), not
    that it refused what was asked: Optuna wraps the driver's error in its own."""
    import sqlalchemy

    while err is not None:
        if isinstance(err, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if _grpc_unavailable(err):  # a gRPC proxy that is down, restarting, or cut off
            return True
        if type(err).__name__ in ("OperationalError", "InterfaceError"):  # the driver's own (psycopg)
            return True
        err = err.__cause__ or err.__context__
    return False


def _grpc_unavailable(err: BaseException) -> bool:
    code = getattr(err, "code", None)
    if not callable(code) or type(err).__module__.split(".")[0] != "grpc":
        return False
    import grpc

    return code() == grpc.StatusCode.UNAVAILABLE


class StorageUnreachable(SweepError):
    """The storage stayed unreachable past outage_timeout."""


class Patient:
    """An RDB storage that waits out its server being away: a call that cannot reach the database
    is tried again with backoff (0.5 s doubling to 10 s) for up to `timeout` seconds, then raises
    StorageUnreachable. Each outage is logged once, when it starts and when it ends. A heartbeat is
    not retried here (its thread beats again at the next interval), only noted; nor is the read that
    judges trials stale (Optuna's): a judgement after an outage would find every beat old.

    `steady(grace)`: whether this process has reached the database without a failure for the
    last `grace` seconds; the coordinator judges no other worker's trial stale until then, since
    the others' beats failed too while the database was away."""

    def __init__(self, backend, timeout: float, log=print):
        self._backend, self.timeout, self.log = backend, timeout, log
        self.failed_at: float | None = None  # monotonic: the last call that could not reach the database
        self.outage: float | None = None  # when the current outage began
        self._guard = threading.Lock()

    def __getattr__(self, name: str):
        if name in ("_backend", "_guard"):  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        found = getattr(self._backend, name)
        if not callable(found) or name.startswith("__"):
            return found
        if name in ("record_heartbeat", "_get_stale_trial_ids"):  # a beat; the read that judges trials stale
            return self._noted(found)
        return self._patient(found, name)

    def noted(self, name: str):
        """The backend's call `name`, not retried, its failures noted as a heartbeat's are: the beat of
        a storage without Optuna's heartbeat (heartbeat.attribute_beat)."""
        return self._noted(getattr(self._backend, name))

    def steady(self, grace: float) -> bool:
        with self._guard:
            return self.failed_at is None or time.monotonic() - self.failed_at >= grace

    def _failed(self, what: str, err: BaseException) -> None:
        with self._guard:
            self.failed_at = time.monotonic()
            first = self.outage is None
            if first:
                self.outage = self.failed_at
        if first:
            self.log(
                f"storage unreachable ({what}: {_cause(err)}); retrying with backoff for up to "
                f"{self.timeout:g} s (outage_timeout), and no trial is judged stale meanwhile"
            )

    def _answered(self) -> None:
        with self._guard:
            began, self.outage = self.outage, None
            if began is not None:  # steady from now: the last failure may be a backoff's sleep ago
                self.failed_at = time.monotonic()
        if began is not None:
            self.log(f"storage answers again after {time.monotonic() - began:.0f} s")

    def _noted(self, call):
        def beat(*args, **kwargs):
            try:
                out = call(*args, **kwargs)
            except Exception as err:
                if unreachable(err):
                    with self._guard:
                        self.failed_at = time.monotonic()
                raise
            return out

        return beat

    def _patient(self, call, name: str):
        def patient(*args, **kwargs):
            return self.attempt(name, call, *args, **kwargs)

        return patient

    def attempt(self, what: str, call, *args, **kwargs):
        """`call(*args, **kwargs)`, tried again while the database cannot be reached, up to the timeout
        (zipnet's own statements on the backend's sessions come through here too: pruning's reports)."""
        delay, deadline = 0.5, None
        while True:
            try:
                out = call(*args, **kwargs)
            except Exception as err:
                if not unreachable(err):
                    raise
                self._failed(what, err)
                now = time.monotonic()
                deadline = deadline or now + self.timeout
                if now >= deadline:
                    raise StorageUnreachable(
                        f"storage unreachable for {self.timeout:g} s (outage_timeout; {what}: {_cause(err)}); "
                        "this worker stops; its trials fall silent and are asked again by a worker that "
                        "reaches the storage"
                    ) from None
                time.sleep(min(delay, deadline - now))
                delay = min(2 * delay, 10.0)
                continue
            self._answered()
            return out


def _cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return first_line(err)


def patient(storage) -> Patient | None:
    """The Patient in `storage` (from open_storage): a proxy's client itself, the RDB storage inside
    Optuna's trial cache for a server; None for a storage that is no server's (sqlite, journal)."""
    if isinstance(storage, Patient):
        return storage
    backend = getattr(storage, "_backend", None)
    return backend if isinstance(backend, Patient) else None


RECONNECT_MS = 1000  # the most a proxy's client waits between tries to reconnect (gRPC's default grows to 120 s)


def _proxy_client():
    """Optuna's GrpcStorageProxy on a channel that tries to reconnect at least every RECONNECT_MS.
    gRPC's own backoff grows with the outage, so after a long one a worker could go on failing for
    a minute after the proxy is back, while another worker, reconnected, judged its trials silent."""
    import grpc
    import optuna
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.client import GrpcClientCache

    class ProxyClient(optuna.storages.GrpcStorageProxy):
        def _setup(self) -> None:  # as Optuna's, with the reconnect bounded
            options = [
                ("grpc.max_receive_message_length", -1),
                ("grpc.initial_reconnect_backoff_ms", RECONNECT_MS // 4),
                ("grpc.min_reconnect_backoff_ms", RECONNECT_MS // 4),
                ("grpc.max_reconnect_backoff_ms", RECONNECT_MS),
            ]
            self._channel = grpc.insecure_channel(f"{self._host}:{self._port}", options=options)
            self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
            self._cache = GrpcClientCache(self._stub)

    return ProxyClient


def _open_proxy(url: str, address: tuple[str, int], spec: StudySpec | None):
    """A GrpcStorageProxy to a proxy that answers within storage_timeout; its calls then wait out the
    proxy being away (down, restarting, cut off) for up to outage_timeout, as a database's do."""
    spec = spec or StudySpec(where="storage", study_name="")
    timeout = spec.storage_timeout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the gRPC proxy is marked experimental
        storage = _proxy_client()(host=address[0], port=address[1])
    try:
        storage.wait_server_ready(timeout=timeout)
    except ConnectionError:
        storage.close()
        raise SweepError(
            f"storage {url}: no proxy answered there within storage_timeout ({timeout:g} s); start one with "
            f"zipnet-storage-proxy --storage URL --host {address[0]} --port {address[1]}"
        ) from None
    return Patient(storage, spec.outage_timeout)


class StaleTrials:
    """The storage's stale-trial callback: asks a stale trial again (Optuna's
    RetryHeartbeatStaleTrialCallback) and records its number, so that the coordinator knows
    exactly which trials `fail_stale_trials` failed. A trial that merely finished between two
    reads of the running ones is not among them: its worker told it, and its run is its own."""

    def __init__(self, max_retry: int):
        import optuna

        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.failed: list[int] = []
        self._guard = threading.Lock()

    def __call__(self, study, trial) -> None:
        self.retry(study, trial)
        with self._guard:
            self.failed.append(trial.number)

    def take(self) -> set[int]:
        """The trials failed as stale since the last call."""
        with self._guard:
            failed, self.failed = set(self.failed), []
        return failed


def storage_error(url: str, err: BaseException) -> SweepError:
    text = str(err)
    if "locked" in text or "busy" in text:
        return SweepError(
            f"storage {masked(url)}: the database is locked by another process and stayed locked past "
            "storage_timeout; wait for it, or give each machine a server storage (postgresql://...)"
        )
    return SweepError(f"storage {masked(url)}: cannot open it: {first_line(err)}")


def locked(url: str) -> bool:
    """Whether `lock(url)` excludes other workers. Not through a gRPC proxy: its API has no
    lock, and the PostgreSQL behind it is what the proxy spares the workers from reaching."""
    return local_file(url) is not None or url.startswith("postgresql")


@dataclass
class Held:
    """What `lock` yields: `lost` once the lock's connection was cut while it was held (the
    database restarted), so that others may have asked meanwhile."""

    lost: bool = False


@contextlib.contextmanager
def lock(url: str, timeout: float = 600.0):
    """Exclusive across workers: a file lock beside a local file; a PostgreSQL advisory lock
    (held by one connection, released if its worker dies, or the database restarts; taking it
    waits out an unreachable database for up to `timeout` s); no lock elsewhere (see `locked`)."""
    held = Held()
    path = local_file(url)
    if path is not None:
        from filelock import FileLock

        with FileLock(f"{path}.lock"):
            yield held
        return
    if url.startswith("postgresql"):
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(b"zipnet " + url.encode()).digest()[:8], "big", signed=True)
        engine = _lock_engine(url)
        waiting = Patient(engine, timeout, log=lambda line: None)  # the storage's own calls log the outage
        conn = waiting.connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield held
            finally:
                try:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                except Exception as err:
                    if not unreachable(err):
                        raise
                    held.lost = True  # the connection went, and the lock with it
        finally:
            with contextlib.suppress(Exception):  # a connection already cut closes with an error
                conn.close()
        return
    yield held


_engines: dict[str, object] = {}  # URL -> an engine without a pool: no state, safe to share across sessions


def _lock_engine(url: str):
    if url not in _engines:
        import sqlalchemy

        # autocommit: the lock's statements alone, no transaction around them
        _engines[url] = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args(url), isolation_level="AUTOCOMMIT"
        )
    return _engines[url]


def heartbeats(storage) -> bool:
    """Whether the storage keeps Optuna's heartbeats (RDB storages here do; journal storages cannot)."""
    return hasattr(storage, "record_heartbeat") and storage.get_heartbeat_interval() is not None


def proxied(storage) -> bool:
    """Whether the storage is a gRPC proxy's client: zipnet beats through a trial attribute."""
    import optuna

    found = patient(storage)
    return isinstance(found._backend if found is not None else storage, optuna.storages.GrpcStorageProxy)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ----------------------------------------------------------------------------------------
# Counting


@dataclass
class Tally:
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # diverged, crashed, or retried too often: counts toward n_trials and the failure budget
    running: int = 0
    waiting: int = 0  # enqueued, to be asked next (retries)
    total: int = 0  # every trial in the storage, for the sampler's seed

    @property
    def counted(self) -> int:
        return self.complete + self.pruned + self.failed


def retried(trials) -> set[int]:
    """Numbers of trials that were asked again (RetryHeartbeatStaleTrialCallback's record)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    out = set()
    for t in trials:
        number = RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
        if number is not None:
            out.add(number)
    return out


def tally(trials) -> Tally:
    from optuna.trial import TrialState

    again = retried(trials)
    t = Tally(total=len(trials))
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            t.complete += 1
        elif trial.state == TrialState.PRUNED:
            t.pruned += 1
        elif trial.state == TrialState.FAIL and trial.number not in again and not trial.user_attrs.get(SURPLUS):
            t.failed += 1
        elif trial.state == TrialState.RUNNING:
            t.running += 1
        elif trial.state == TrialState.WAITING:
            t.waiting += 1
    return t


# ----------------------------------------------------------------------------------------
# The worker's side


class Coordinator:
    """One worker's dealings with the study: ask, beat, give back, wait."""

    def __init__(self, study, storage, url: str, spec: StudySpec, log=print, on_stale=None, extend=None):
        self.study, self.storage, self.url, self.spec, self.log = study, storage, url, spec, log
        self.on_stale = on_stale  # called with each trial failed as stale (its MLflow run ends KILLED)
        self.extend = extend  # called with each trial asked, its params suggested (custom_search_space)
        self.worker = worker_id()
        self.patient = patient(storage)
        if self.patient is not None:
            self.patient.log = log
        self.study_id = storage.get_study_id_from_name(spec.study_name)
        if hasattr(storage, "birth"):  # zipnet.sweeps.held: a trial asked here is created with its worker
            storage.birth = {WORKER: self.worker}
        self.mine: dict[int, int] = {}  # trial number -> trial id, asked here and not finished
        optuna_beats = heartbeats(storage)
        self.silence = Silence(spec.grace) if not optuna_beats and proxied(storage) else None  # zipnet's own beat
        self.beating = optuna_beats or self.silence is not None
        self._recovering = threading.Lock()  # the main thread and the beating thread both recover
        # another worker's silence is noticed within a beat, not at the next batch
        if optuna_beats:
            record = storage.record_heartbeat
        else:  # a beat that fails is noted (no trial judged stale meanwhile), not retried
            setter = self.patient.noted("set_trial_system_attr") if self.patient else storage.set_trial_system_attr
            record = attribute_beat(setter)
        self.heartbeat = (
            Heartbeat(record, spec.heartbeat_interval, log, on_beat=lambda: self.recover(wait=False))
            if self.beating
            else None
        )

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def now(self) -> Tally:
        return tally(self.study.get_trials(deepcopy=False))

    def recover(self, trials: list | None = None, wait: bool = True) -> bool:
        """Stale trials (their worker's heartbeat stopped) fail and are asked again. So does a
        trial whose worker died between asking it and its first heartbeat (it has no worker).
        Runs before every ask and with every heartbeat (from the beating thread, `wait=False`).
        `trials`: the study as just read (else it is read). Returns whether a trial was failed here.

        No trial is judged from a read that waited out an outage, nor in the grace period after one:
        the others' beats failed as this worker's did. The read that judges is not retried (a failure
        ends the judgement), and the beating thread never waits for the main thread's recovery, whose
        calls may wait out an outage: its own beats would stop."""
        if not self.beating:
            return False
        if not self._recovering.acquire(blocking=wait):
            return False  # the main thread is recovering
        try:
            return self._steady() and self._recover(trials)
        except Exception as err:
            if unreachable(err):
                return False  # the judging read failed (noted by Patient): judged again once steady
            raise
        finally:
            self._recovering.release()

    def _steady(self) -> bool:
        """Whether this worker has reached the storage without a failure for a whole grace period;
        where not, a beat unchanged across the outage must stay so a whole grace after it."""
        if self.patient is None or self.patient.steady(self.spec.grace):
            return True
        if self.silence is not None:
            self.silence.forget()
        return False

    def _recover(self, trials: list | None) -> bool:
        from optuna.trial import TrialState

        if trials is None:
            trials = self._running()
            if not self._steady():  # the read waited out an outage
                return False
        running = [t for t in trials if t.state == TrialState.RUNNING]
        stale = self._optuna_stale(running) if self.silence is None else self._silent(running)
        for number in sorted(stale - set(self.mine)):
            self.log(f"trial {number}: its worker stopped beating for {self.spec.grace} s; asked again")
            if self.on_stale is not None:
                self.on_stale(self.storage.get_trial(self.trial_id(number)))
        return bool(stale)

    def _silent(self, running: list) -> set[int]:
        """Trials whose `zipnet.beat` stayed the same for the grace period fail, each once (the
        storage refuses to finish a trial twice: the worker whose FAIL it took asks it again; a
        trial told, or failed by another worker, meanwhile is left as it is)."""
        silent = self.silence.silent([t for t in running if t.number not in self.mine])
        return {t.number for t in silent if self._fail_and_retry(t.number)}

    def _optuna_stale(self, running: list) -> set[int]:
        """Optuna's stale trials (fail_stale_trials), and a trial whose worker died between asking
        it and its first heartbeat (it has no worker). Where every running trial is this worker's,
        none is another's to judge: the storage is not asked for stale ones."""
        import optuna

        if all(t.number in self.mine for t in running):
            return set()
        callback = self.storage.get_heartbeat_stale_trial_callback()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(self.study)
        stale = callback.take() if isinstance(callback, StaleTrials) else set()
        cutoff = time.time() - self.spec.grace
        for t in running:
            if (
                t.number not in self.mine
                and t.number not in stale
                and WORKER not in t.user_attrs
                and t.datetime_start.timestamp() < cutoff
                and self._fail_and_retry(t.number)
            ):
                stale.add(t.number)
        return stale

    def _fail_and_retry(self, number: int, attr: str | None = None) -> bool:
        """FAIL the trial if it is still running, then ask its parameters again (at most
        max_retry times), as RetryHeartbeatStaleTrialCallback does for a stale one. False when
        the trial had ended meanwhile (its worker told it): then nothing is changed."""
        import optuna
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        tid = self.trial_id(number)
        try:
            if attr is not None:  # a finished trial takes no attribute: set it while it runs
                self.storage.set_trial_user_attr(tid, attr, True)
            if not self.storage.set_trial_state_values(tid, state=TrialState.FAIL):
                return False
        except UpdateFinishedTrialError:
            return False
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.spec.max_retry)(
            self.study, self.storage.get_trial(tid)
        )
        return True

    def _running(self):
        from optuna.trial import TrialState

        return self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    def ask(self, limit: int | None = None) -> list:
        """Up to `batch` trials (or `limit`: a refill's free lanes), never past `n_trials` counted and
        running; [] when none is left to ask. Raises FailureBudgetExceeded when too many failed."""
        spec = self.spec
        with lock(self.url, spec.outage_timeout) as held:
            # one read of the study for the recovery, the count and the batch's asks (under the lock no one
            # else asks), read again only where a trial was failed as stale; each trial asked is read back,
            # so the next ask sees it as it would in the storage
            snapshot = Snapshot(self.study)
            if self.recover(snapshot.trials):
                snapshot = Snapshot(self.study)
            now = tally(snapshot.trials)
            self._check_budget(now)
            free = spec.n_trials - now.counted - now.running
            if free <= 0:
                return []
            self.study.sampler = make_sampler(spec, now.total)
            asking = snapshot.study(self.study.sampler, self.study.pruner)
            asked = []
            together = getattr(self.storage, "together", contextlib.nullcontext)  # the batch's params in one write
            with together():
                for _ in range(min(spec.batch if limit is None else limit, free)):
                    # a trial in the storage is in `mine` too, for the give-back
                    with preempt.critical(stops_too=True):
                        trial = asking.ask({name: p.distribution for name, p in spec.params.items()})
                        self.mine[trial.number] = trial._trial_id
                    if self.extend is not None:
                        self._extend(trial)
                    snapshot.refresh(trial._trial_id)
                    if self.heartbeat is not None:  # its first beat written with it, where it was created here
                        born = getattr(self.storage, "born", None)
                        self.heartbeat.cover(trial.number, trial._trial_id, beat=not (born and born(trial._trial_id)))
                    trial.set_user_attr(WORKER, self.worker)  # no write where it was created with it
                    if trial.user_attrs.get(INTERRUPTED):  # a retry inherits its original's attributes
                        trial.set_user_attr(INTERRUPTED, False)
                    asked.append(trial)
        if held.lost:
            self.log("the storage's lock was lost while asking (the database restarted): checking the count")
        return self._past_target(asked, unlocked=held.lost)

    def _extend(self, trial) -> None:
        """The custom search space's function on a trial just asked. If it fails, the trial is
        left out of the count (not asked again), this worker's other trials are given back, and
        the sweep stops with the function's error."""
        try:
            self.extend(trial)
        except BaseException as err:
            self.storage.set_trial_user_attr(trial._trial_id, SURPLUS, True)
            self.storage.set_trial_user_attr(trial._trial_id, REASON, first_line(err)[:500])
            self.finish(trial.number, "FAIL")
            self.give_back()
            raise

    def _past_target(self, asked: list, unlocked: bool = False) -> list:
        """Without a lock (or with one lost meanwhile) two workers may both ask the last slots:
        the trials numbered past the target are given back as surplus (not counted, not asked again)."""
        if locked(self.url) and not unlocked:
            return asked
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        again = retried(trials)
        alive = sorted(
            t.number
            for t in trials
            if t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING)
            or (t.state == TrialState.FAIL and t.number not in again and not t.user_attrs.get(SURPLUS))
        )
        over = set(alive[self.spec.n_trials :])
        keep = []
        for trial in asked:
            if trial.number in over:
                self.storage.set_trial_user_attr(self.trial_id(trial.number), SURPLUS, True)
                self.finish(trial.number, "FAIL")
            else:
                keep.append(trial)
        return keep

    def _check_budget(self, now: Tally) -> None:
        if now.failed > self.spec.failure_budget:
            raise FailureBudgetExceeded(
                f"{now.failed} trials failed; max_failure_rate {self.spec.max_failure_rate} of {self.spec.n_trials} "
                f"allows {self.spec.failure_budget}. The study is kept: fix the cause and rerun the same command."
            )

    def check_budget(self) -> None:
        self._check_budget(self.now())

    def finish(self, number: int, state: str, value: float | None = None) -> None:
        """Tell a trial's end (skipped if its job told it already)."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            if state == "COMPLETE":
                self.study.tell(number, value, skip_if_finished=True)
            else:
                self.study.tell(number, state=getattr(TrialState, state), skip_if_finished=True)
        except UpdateFinishedTrialError:  # failed as stale by another worker since it was read: not ours (settle)
            pass
        self._release(number)

    def _release(self, number: int) -> None:
        self.mine.pop(number, None)
        if self.heartbeat is not None:
            self.heartbeat.release(number)

    def settle(self, numbers: list[int], reasons: dict[int, str]) -> None:
        """After a batch: a trial its job left running (the job failed before it could tell)
        fails with the job's reason. One read of the study for the batch: its trials are read from
        the storage, not answered from this worker's memory (a job elsewhere may have told them)."""
        from optuna.trial import TrialState

        let_go = getattr(self.storage, "let_go", None)
        if let_go is not None:
            for number in numbers:
                let_go(self.trial_id(number))
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        taken = []
        for number in numbers:
            frozen = trials[number]
            if frozen.state == TrialState.RUNNING:
                reason = reasons.get(number, "its job ended without telling a result")
                self.storage.set_trial_user_attr(self.trial_id(number), REASON, reason[:500])
                self.finish(number, "FAIL")
                self.log(f"trial {number} failed: {reason}")
            elif frozen.state == TrialState.FAIL and not any(
                frozen.user_attrs.get(k) for k in (REASON, INTERRUPTED, SURPLUS)
            ):
                taken.append(number)  # no one here failed it: another worker, which found it silent
            self._release(number)
        if taken:
            self.log(
                f"trials {', '.join(map(str, taken))}: lost: another worker failed them as stale and asked them "
                "again while this worker could not reach the storage; nothing of theirs was told from here, their "
                "runs ended KILLED; asking fresh trials"
            )

    def give_back(self) -> None:
        """Fail this worker's running trials and ask them again now (Ctrl-C, preemption)."""
        for number in sorted(self.mine):
            try:
                self._fail_and_retry(number, INTERRUPTED)
            except Exception as err:  # the storage itself may be what failed
                self.log(f"trial {number}: could not give it back ({first_line(err)})")
            self._release(number)

    def others_running(self) -> int:
        return sum(1 for t in self._running() if t.number not in self.mine)

    def wait_for_others(self) -> bool:
        """When nothing is left to ask but other workers hold trials: wait while they run,
        failing stale ones (they are then asked again). Returns True when there is work to
        ask again, False when the study is done. Without heartbeats, returns False at once."""
        if not self.beating:
            return False
        while True:
            with lock(self.url, self.spec.outage_timeout):
                trials = self.study.get_trials(deepcopy=False)
                now = self.now() if self.recover(trials) else tally(trials)
            if now.counted + now.running < self.spec.n_trials or now.waiting:
                return True
            if now.running == 0:
                return False
            time.sleep(min(self.spec.heartbeat_interval, 5))

    def close(self) -> None:
        """Stop beating (the worker holds no trial any more, or is stopping)."""
        if self.heartbeat is not None:
            self.heartbeat.close()
