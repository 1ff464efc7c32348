"""Throwaway PostgreSQL 15 and MLflow tracking servers, as they run for many machines.

Both ask for a password (PostgreSQL: scram-sha-256; MLflow: its basic-auth app), listen only on
the addresses given (127.0.0.1 by default, or a bridge from hosts.py), keep their data in a
temporary folder, and stop and remove it when the context ends. Clients get the credentials from
the environment (`PGPASSFILE`, `MLFLOW_TRACKING_USERNAME` / `_PASSWORD`), never inside a URL.

    # tests/conftest.py loads this module as a plugin: its fixtures are there in every test module
    def test_x(postgres, mlflow_server):         # session-scoped; on 127.0.0.1, or a bridge (see `lan`)
        storage = postgres.url("optuna")         # postgresql://zipnet@ADDRESS:PORT/optuna
        env = {**os.environ, **postgres.env, **mlflow_server.env}

    with start_postgres(listen=("127.0.0.1", net.address), clients=("127.0.0.1/32", net.cidr)) as pg:
        with start_mlflow(pg, host=net.address) as server:   # servers that other namespaces reach
            ...

    def test_y(cluster):                         # both servers, and hosts that reach them
        worker = cluster.host("worker-1", pid=True).popen(["zipnet-train", ...], env=cluster.env())

PostgreSQL refuses to run as root: as root the server runs as the system user `zipnet-pg`
(created on first use); otherwise as the current user.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hosts
import pytest

PG_BINARIES = ("initdb", "pg_ctl", "postgres")
PG_OS_USER = "zipnet-pg"
PG_SUPERUSER = "postgres"
CLIENT_ROLE = "zipnet"
DATABASES = ("optuna", "mlflow")
MLFLOW_ADMIN = "admin"
STARTUP_TRIES = 5  # a free port can be taken between choosing it and binding it: choose again


def postgres_missing() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None when it can."""
    missing = [name for name in PG_BINARIES if shutil.which(name) is None]
    if missing:
        return f"PostgreSQL binaries not on PATH: {', '.join(missing)} (Debian: apt-get install postgresql-15)"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, timeout: float = 180.0) -> bytes:
    """The body of the first answer from `url`; fails if the server exits or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read()
        except OSError:
            if server.poll() is not None:
                raise AssertionError(f"the server exited with {server.returncode}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer in {timeout} s") from None
            time.sleep(0.25)


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@dataclass(frozen=True)
class Postgres:
    """A running server: `url(db)` for clients, `env` for their credentials."""

    host: str  # the address clients connect to; the server also listens on `listen`
    port: int
    listen: tuple[str, ...]
    user: str
    password: str
    pgpass: Path
    log: Path
    pid: int = 0  # the postmaster's

    def url(self, database: str, *, password: bool = False, host: str | None = None) -> str:
        """`postgresql://zipnet@HOST:PORT/database`; with `password=True` the password is in it (never log that)."""
        cred = f"{self.user}:{urllib.parse.quote(self.password, safe='')}" if password else self.user
        return f"postgresql://{cred}@{host or self.host}:{self.port}/{database}"

    @property
    def env(self) -> dict[str, str]:
        """What a client needs beside the URL: libpq reads the password from this file."""
        return {"PGPASSFILE": str(self.pgpass)}


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) of the unprivileged user PostgreSQL runs as when we are root; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        made = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                PG_OS_USER,
            ],
            capture_output=True,
            text=True,
        )
        try:  # another process may have created it meanwhile
            entry = pwd.getpwnam(PG_OS_USER)
        except KeyError:
            raise RuntimeError(f"useradd {PG_OS_USER} failed: {made.stderr.strip()}") from None
    return entry.pw_uid, entry.pw_gid


def _as_user(ids: tuple[int, int] | None) -> dict:
    return {} if ids is None else {"user": ids[0], "group": ids[1], "extra_groups": []}


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _connect_admin(host: str, port: int, password: str):
    import psycopg

    return psycopg.connect(
        host=host,
        port=port,
        user=PG_SUPERUSER,
        password=password,
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    )


@contextlib.contextmanager
def start_postgres(
    listen: tuple[str, ...] = ("127.0.0.1",),
    clients: tuple[str, ...] = ("127.0.0.1/32",),
    databases: tuple[str, ...] = DATABASES,
    durable: bool = False,
    settings: tuple[str, ...] = (),
) -> Iterator[Postgres]:
    """A PostgreSQL server on `listen` (the first is what URLs name) that admits `clients` (CIDRs) by password.

    Creates the role `zipnet` owning `databases`. `durable=False` turns fsync off, for tests.
    `settings` are more `name=value` server settings (a benchmark's `log_statement=all`).
    """
    reason = postgres_missing()
    if reason:
        raise RuntimeError(reason)
    from psycopg import sql

    ids = _run_as()
    root = Path(tempfile.mkdtemp(prefix="zipnet-pg-"))  # /tmp/...: reachable by the server's user
    client_dir = Path(tempfile.mkdtemp(prefix="zipnet-pgclient-"))
    data, log = root / "data", root / "server.log"
    su_password, password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    started = False
    try:
        (root / "superuser").write_text(su_password + "\n")
        if ids is not None:
            os.chown(root, *ids)
            os.chown(root / "superuser", *ids)
        subprocess.run(
            [
                "initdb",
                "-D",
                str(data),
                "-U",
                PG_SUPERUSER,
                f"--pwfile={root / 'superuser'}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            cwd=root,
            check=True,
            capture_output=True,
            **_as_user(ids),
        )
        (root / "superuser").unlink()
        hba = ["local all all scram-sha-256"] + [f"host all all {cidr} scram-sha-256" for cidr in clients]
        (data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        options = [
            f"listen_addresses='{','.join(listen)}'",
            f"unix_socket_directories='{root}'",
            "password_encryption=scram-sha-256",
        ]
        if not durable:
            options += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        options += list(settings)
        for attempt in range(STARTUP_TRIES):
            port = free_port(listen[0])
            cmd = [
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                " ".join([f"-p {port}"] + [f"-c {o}" for o in options]),
            ]
            done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, **_as_user(ids))
            if done.returncode == 0:
                started = True
                break
            if attempt == STARTUP_TRIES - 1:
                raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}\n{_tail(log)}")
        with _connect_admin(listen[0], port, su_password) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(CLIENT_ROLE), sql.Literal(password))
            )
            for db in databases:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(CLIENT_ROLE))
                )
        pgpass = client_dir / "pgpass"
        pgpass.write_text(
            "".join(f"{_pgpass_field(addr)}:{port}:*:{CLIENT_ROLE}:{_pgpass_field(password)}\n" for addr in listen)
        )
        pgpass.chmod(0o600)  # libpq ignores a password file that others can read
        pid = int((data / "postmaster.pid").read_text().split()[0])
        yield Postgres(
            host=listen[0],
            port=port,
            listen=tuple(listen),
            user=CLIENT_ROLE,
            password=password,
            pgpass=pgpass,
            log=log,
            pid=pid,
        )
    finally:
        if started:
            subprocess.run(
                ["pg_ctl", "stop", "-w", "-m", "fast", "-D", str(data)], cwd=root, capture_output=True, **_as_user(ids)
            )
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(client_dir, ignore_errors=True)


def _pg_ctl(pg: Postgres, *args: str) -> None:
    """pg_ctl on `pg`'s data folder, as the user the server runs as."""
    data = pg.log.parent / "data"
    done = subprocess.run(
        ["pg_ctl", *args, "-w", "-t", "60", "-D", str(data)],
        cwd=pg.log.parent,
        capture_output=True,
        text=True,
        **_as_user(_run_as()),
    )
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctl {args[0]} failed: {done.stderr.strip()}\n{_tail(pg.log)}")


def restart_postgres(pg: Postgres) -> None:
    """`pg_ctl restart -m fast`: every client connection is cut, the server answers again at once."""
    _pg_ctl(pg, "restart", "-m", "fast", "-l", str(pg.log))  # the log: else the server's output holds our pipe


def stop_postgres(pg: Postgres) -> None:
    """`pg_ctl stop -m fast`: clients' connections are cut and new ones refused until `start_postgres_again`."""
    _pg_ctl(pg, "stop", "-m", "fast")


def start_postgres_again(pg: Postgres) -> None:
    """Start a stopped server with the options of its last start (its postmaster.opts)."""
    import shlex

    argv = shlex.split((pg.log.parent / "data" / "postmaster.opts").read_text())
    rest = [a for k, a in enumerate(argv[1:], 1) if a != "-D" and argv[k - 1] != "-D"]
    _pg_ctl(pg, "start", "-l", str(pg.log), "-o", " ".join(shlex.quote(a) for a in rest))


@dataclass(frozen=True)
class Mlflow:
    """A running `mlflow server --app-name basic-auth`: `url`, and `env` with a user's credentials."""

    url: str
    username: str
    password: str
    admin_username: str
    admin_password: str
    artifacts: Path  # --artifacts-destination: only the server touches it
    log: Path
    pid: int = 0  # the `mlflow server` process (its workers are its children)
    process: MlflowProcess | None = field(default=None, compare=False, repr=False)  # kill_mlflow, start_mlflow_again

    @property
    def env(self) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": self.username,
            "MLFLOW_TRACKING_PASSWORD": self.password,
        }

    def credentials_file(self, home: Path) -> Path:
        """Write MLflow's credentials file under `home` (`~/.mlflow/credentials` for a client whose HOME it is)."""
        path = home / ".mlflow" / "credentials"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"[mlflow]\nmlflow_tracking_username = {self.username}\nmlflow_tracking_password = {self.password}\n"
        )
        path.chmod(0o600)
        return path


def http_status(url: str, auth: tuple[str, str] | None = None, body: dict | None = None) -> int:
    """The HTTP status of GET `url` (POST with a JSON `body`), with basic `auth` when given."""
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode())
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> bool:
    """True once GET /health answers 200; False if the server exited first (a taken port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            if http_status(f"{url}/health") == 200:
                return True
        time.sleep(0.25)
    raise RuntimeError(f"mlflow server at {url} not healthy after {timeout:.0f} s\n{_tail(log)}")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it was started in its own session), SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)  # its data is thrown away: no need to wait for idle client connections
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class MlflowProcess:
    """The `mlflow server` command, and its process now: killed and started again on the same port,
    runs and artifacts, as a server that crashed and was restarted."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path):
        self.argv, self.env, self.cwd, self.log = argv, env, cwd, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self.proc


def kill_mlflow(server: Mlflow) -> None:
    """SIGKILL the server's process group: gone at once, mid-request, as a crashed host's."""
    proc = server.process.proc
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def start_mlflow_again(server: Mlflow, timeout: float = 120) -> None:
    """Start a killed server with its first command: the same port, runs, artifacts and accounts."""
    if not _wait_healthy(server.process.start(), server.url, server.log, timeout):
        raise RuntimeError(f"mlflow server at {server.url} exited on its restart\n{_tail(server.log)}")


def mlflow_executable() -> str:
    """The `mlflow` command of this interpreter's environment."""
    beside = Path(sys.executable).with_name("mlflow")
    return str(beside) if beside.exists() else shutil.which("mlflow") or "mlflow"


@contextlib.contextmanager
def start_mlflow(
    pg: Postgres, host: str = "127.0.0.1", workers: int = 2, user: str = "zipnet", timeout: float = 120
) -> Iterator[Mlflow]:
    """`mlflow server` on `host` with runs in `pg`'s `mlflow` database and proxied artifacts, basic auth on.

    The admin account is made on first start; `user` (its password random) is the account clients get in `env`.
    """
    root = Path(tempfile.mkdtemp(prefix="zipnet-mlflow-"))
    artifacts, log, ini = root / "artifacts", root / "server.log", root / "basic_auth.ini"
    admin_password, password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    ini.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{root / 'auth.db'}\n"
        f"admin_username = {MLFLOW_ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 300\n"
    )  # else every request hashes the password (~0.5 s CPU)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update(
        pg.env,
        MLFLOW_AUTH_CONFIG_PATH=str(ini),
        MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
    )
    process = None
    try:
        for attempt in range(STARTUP_TRIES):
            port = free_port(host)
            url = f"http://{host}:{port}"
            argv = [
                mlflow_executable(),
                "server",
                "--backend-store-uri",
                pg.url("mlflow", host=host),
                "--artifacts-destination",
                str(artifacts),
                "--host",
                host,
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--app-name",
                "basic-auth",
            ]
            process = MlflowProcess(argv, env, root, log)
            proc = process.start()
            if _wait_healthy(proc, url, log, timeout):
                break
            if attempt == STARTUP_TRIES - 1:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}\n{_tail(log)}")
        status = http_status(
            f"{url}/api/2.0/mlflow/users/create",
            auth=(MLFLOW_ADMIN, admin_password),
            body={"username": user, "password": password},
        )
        if status != 200:
            raise RuntimeError(f"creating the MLflow user {user!r} answered HTTP {status}\n{_tail(log)}")
        yield Mlflow(
            url=url,
            username=user,
            password=password,
            admin_username=MLFLOW_ADMIN,
            admin_password=admin_password,
            artifacts=artifacts,
            log=log,
            pid=proc.pid,
            process=process,
        )
    finally:
        if process is not None and process.proc is not None:
            _stop_group(process.proc)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class StorageProxy:
    """A running `zipnet-storage-proxy`: workers use `url` (grpc://HOST:PORT) as their storage."""

    url: str
    backend: str  # the storage it serves
    proc: subprocess.Popen
    log: Path


@contextlib.contextmanager
def start_storage_proxy(
    backend: str, env: dict[str, str] | None = None, host: str = "127.0.0.1", timeout: float = 60, port: int = 0
) -> Iterator[StorageProxy]:
    """`zipnet-storage-proxy --storage BACKEND` on `port` (0: a free port) of `host`, answering before
    this yields; `env` carries the backend's credentials (the workers need none). Stopped with SIGTERM
    at the end."""
    import optuna

    root = Path(tempfile.mkdtemp(prefix="zipnet-proxy-"))
    log = root / "proxy.log"
    proc = None
    try:
        given = port
        for attempt in range(STARTUP_TRIES):
            port = given or free_port(host)
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "zipnet.cli.storage_proxy", "--storage", backend]
                    + ["--host", host, "--port", str(port)],
                    cwd=root,
                    env={**os.environ, **(env or {})},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # marked experimental
                client = optuna.storages.GrpcStorageProxy(host=host, port=port)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:  # until it answers, or exits (a taken port)
                try:
                    client.wait_server_ready(timeout=1)
                    break
                except ConnectionError:
                    continue
            client.close()
            if proc.poll() is None:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"zipnet-storage-proxy did not answer in {timeout:.0f} s\n{_tail(log)}")
                break
            if attempt == STARTUP_TRIES - 1:
                raise RuntimeError(f"zipnet-storage-proxy exited with {proc.returncode}\n{_tail(log)}")
        yield StorageProxy(url=f"grpc://{host}:{port}", backend=backend, proc=proc, log=log)
    finally:
        if proc is not None:
            _stop_group(proc)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Cluster:
    """Both servers and the machines that use them: hosts in network namespaces on a bridge when this
    machine allows it (`network` set, servers listening on the bridge), else hosts with their own
    hostname on this machine's network (servers on 127.0.0.1)."""

    postgres: Postgres
    mlflow: Mlflow
    network: hosts.Network | None

    @property
    def storage(self) -> str:
        """The Optuna storage URL every host reaches (no password in it)."""
        return self.postgres.url("optuna")

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) with both servers' URL and credentials."""
        return {**(os.environ if base is None else base), **self.postgres.env, **self.mlflow.env}

    def host(self, hostname: str, pid: bool = False) -> hosts.Host:
        """Another machine: on the bridge with its own address if there is one, else on this network."""
        return self.network.host(hostname, pid=pid) if self.network else hosts.host(hostname, pid=pid)


def addresses(network: hosts.Network | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(listen, clients) for start_postgres: the bridge first (the URLs name it) and loopback, or loopback alone."""
    if network is None:
        return ("127.0.0.1",), ("127.0.0.1/32",)
    return (network.address, "127.0.0.1"), (network.cidr, "127.0.0.1/32")


@contextlib.contextmanager
def start_cluster() -> Iterator[Cluster]:
    """PostgreSQL and MLflow for hosts: on a bridge with network namespaces where possible."""
    with contextlib.ExitStack() as stack:
        network = None if hosts.unavailable(network=True, pid=True) else stack.enter_context(hosts.start_network())
        pg = stack.enter_context(start_postgres(*addresses(network)))
        server = stack.enter_context(start_mlflow(pg, host=pg.host))
        yield Cluster(postgres=pg, mlflow=server, network=network)


@pytest.fixture(scope="session")
def lan() -> Iterator[hosts.Network | None]:
    """A bridge for hosts in network namespaces, or None where this machine cannot make one."""
    if hosts.unavailable(network=True, pid=True):
        yield None
        return
    with hosts.start_network() as network:
        yield network


@pytest.fixture(scope="session")
def postgres(lan: hosts.Network | None) -> Iterator[Postgres]:
    """PostgreSQL with databases `optuna` and `mlflow`, on `lan`'s bridge if there is one, else 127.0.0.1
    (this machine reaches both); skips when PostgreSQL's binaries are missing."""
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    with start_postgres(*addresses(lan)) as pg:
        yield pg


@pytest.fixture(scope="session")
def mlflow_server(postgres: Postgres) -> Iterator[Mlflow]:
    """`mlflow server` over `postgres`, on the same address, artifacts proxied, basic auth."""
    with start_mlflow(postgres, host=postgres.host) as server:
        yield server


@pytest.fixture(scope="session")
def cluster(postgres: Postgres, mlflow_server: Mlflow, lan: hosts.Network | None) -> Cluster:
    """The session's servers and the hosts that use them; skips, saying why, where namespaces cannot be made."""
    reason = hosts.unavailable(pid=True)
    if reason:
        pytest.skip(reason)
    return Cluster(postgres=postgres, mlflow=mlflow_server, network=lan)
