"""Requests a trial makes to the shared servers, counted on the servers' side.

    .venv/bin/python benchmarks/bench_requests.py                      # 20 trials, 1 worker
    .venv/bin/python benchmarks/bench_requests.py --workers 1 4 16     # the cluster's rate by workers

Starts PostgreSQL 15 with `log_statement=all` and `mlflow server` (runs in PostgreSQL, proxied
artifacts, basic auth) on 127.0.0.1 with tests/servers.py, and a counting HTTP proxy in front
of the MLflow server. Then runs the small-trial study against them:

    zipnet-train -m sweeps=paper_open_choices hydra.sweeper.n_trials=20 hydra.sweeper.batch=20 \\
        data.n_train=1000 data.n_test=500 trainer.passes=6

once tracked and once with tracking.enabled=false (the storage's own count), each in a study of
its own. It prints, per trial: MLflow requests by endpoint (every HTTP request the proxy
forwarded), PostgreSQL statements in the Optuna database by kind (heartbeats apart, BEGIN and
COMMIT included), and the CPU seconds each server spent; with several workers, the cluster's
trials per second. Targets (the harness issue): at most 6 MLflow requests and 25 storage
statements per trial.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import http.server
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import postgres_missing, start_mlflow, start_postgres  # noqa: E402

MLFLOW_TARGET, STORAGE_TARGET = 6, 25
ENTRY = re.compile(r"^\[(\w*) (\w*\.\w*)\] LOG:  (?:statement|execute [^:]*): ", re.M)
ID = re.compile(r"\b(?:m-)?[0-9a-f]{32}\b")


class Counter(http.server.ThreadingHTTPServer):
    """Forwards every request to `upstream` (host, port) and counts it by method and path."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int]):
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.counts: collections.Counter[str] = collections.Counter()
        self.guard = threading.Lock()

    def take(self) -> collections.Counter[str]:
        with self.guard:
            counts, self.counts = self.counts, collections.Counter()
        return counts


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # the proxy is silent
        pass

    def _forward(self) -> None:
        server: Counter = self.server
        path = self.path.split("?")[0]
        if "/mlflow-artifacts/artifacts/" in path:  # one file: named without its run's or model's folder
            kind = "artifact " + path.rsplit("/", 1)[-1]
        else:
            kind = ID.sub("ID", path.removeprefix("/api/2.0/mlflow/"))
        with server.guard:
            server.counts[f"{self.command} {kind}"] += 1
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        upstream = http.client.HTTPConnection(*server.upstream, timeout=120)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


def cpu_seconds(pid: int) -> float:
    """CPU of a server: its process tree, plus the children it has already reaped."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


# a transaction's writes name the storage call that made it (Optuna's RDBStorage: one per call)
CALLS = (
    ("INSERT trials", "create_new_trial (ask)"),
    ("INSERT trial_intermediate_values", "set_trial_intermediate_value (report)"),
    ("UPDATE trial_intermediate_values", "set_trial_intermediate_value (report)"),
    ("INSERT trial_params", "set_trial_param (suggest)"),
    ("UPDATE trials", "set_trial_state_values (tell, fail)"),
    ("INSERT trial_values", "set_trial_state_values (tell, fail)"),
    ("INSERT trial_user_attributes", "set_trial_user_attr"),
    ("UPDATE trial_user_attributes", "set_trial_user_attr"),
    ("INSERT trial_system_attributes", "set_trial_system_attr"),
    ("UPDATE trial_system_attributes", "set_trial_system_attr"),
    ("INSERT trial_heartbeats", "record_heartbeat"),
    ("UPDATE trial_heartbeats", "record_heartbeat"),
)


def call_of(kinds: list[str]) -> str:
    """The storage call behind one transaction's statements (kinds as `statements` names them)."""
    for kind, call in CALLS:
        if kind in kinds:
            return call
    if "heartbeat" in kinds:
        return "heartbeat reads (stale trials)"
    reads = {k.split()[1] for k in kinds if k.startswith("SELECT ")}
    if {"trial_params", "trial_values", "trial_intermediate_values"} <= reads:
        return "get_all_trials / get_trial (whole trials)"
    return "other reads (study, state, attrs)" if reads else "pre-ping and empty"


def statements(log: Path, offset: int, database: str) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Statements logged in `database` since byte `offset`, by kind; the same statements by the
    storage call whose transaction ran them (heartbeats apart); and the new offset."""
    counts: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    open_tx: dict[str, list[str]] = {}  # session -> the kinds of its transaction so far
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
        end = f.tell()
    starts = list(ENTRY.finditer(text))
    for here, after in zip(starts, starts[1:] + [None]):
        db, session = here.group(1), here.group(2)
        # a statement runs on over continuation lines, up to the next line the server logged
        sql = text[here.end() : after.start() if after else len(text)].split("\n[", 1)[0]
        if db != database:
            continue
        words = sql.split()
        head = words[0].upper() if words else "?"
        if "trial_heartbeats" in sql:
            kind = "heartbeat"
        elif head in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", sql, re.I)
            kind = f"{head} {table.group(1) if table else '?'}"
        elif head == ";":
            kind = "; (the pool's pre-ping)"
        else:
            kind = head
        counts[kind] += 1
        tx = open_tx.setdefault(session, [])
        tx.append(kind)
        if head in ("COMMIT", "ROLLBACK") or (head == ";" and len(tx) == 1):
            call = call_of(tx)
            if call not in ("record_heartbeat", "heartbeat reads (stale trials)"):
                calls[call] += len(tx)
            del open_tx[session]
    for tx in open_tx.values():
        calls[call_of(tx)] += len(tx)
    return counts, calls, end


def study_command(name: str, storage: str, trials: int, outputs: str | None, extra: tuple[str, ...] = ()) -> list[str]:
    """The small-trial study; `outputs` is tracking.trial_outputs, None for tracking off; `extra`
    more overrides (hydra.sweeper.checkpoint_upload_every=1: what uploading checkpoints costs)."""
    return [
        sys.executable,
        "-m",
        "zipnet.cli.train",
        "-m",
        "sweeps=paper_open_choices",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.n_trials={trials}",
        "hydra.sweeper.batch=20",
        "data.n_train=1000",
        "data.n_test=500",
        "trainer.passes=6",
        *([f"tracking.trial_outputs={outputs}"] if outputs else ["tracking.enabled=false"]),
        *extra,
    ]


def run_workers(cmd: list[str], workers: int, env: dict[str, str], cwd: Path) -> float:
    """`workers` copies of the study's command at once; the wall time until the last exits."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"bench_requests: a worker exited {proc.returncode}:\n{err[-3000:]}")
    return time.perf_counter() - started


def table(counts: collections.Counter[str], trials: int, width: int = 44) -> list[str]:
    return [f"    {kind:<{width}} {n / trials:6.1f}" for kind, n in counts.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per worker")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--outputs",
        nargs="*",
        default=["best", "lean"],
        help="tracking.trial_outputs to count (and tracking off; none given: tracking off only)",
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every trial")
    args = parser.parse_args()
    reason = postgres_missing()
    if reason:
        raise SystemExit(f"bench_requests: {reason}")
    settings = ("log_statement=all", "log_line_prefix='[%d %c] '")
    with start_postgres(settings=settings) as pg, start_mlflow(pg) as server:
        upstream = server.url.removeprefix("http://").split(":")
        proxy = Counter((upstream[0], int(upstream[1])))
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        env = {
            **os.environ,
            **pg.env,
            **server.env,
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{proxy.server_address[1]}",
        }
        storage = pg.url("optuna")
        print(f"{psutil.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start")
        with tempfile.TemporaryDirectory() as tmp:
            warm = study_command("warm-up", storage, 2, "best")  # tables, the first password check
            warm[warm.index("hydra.sweeper.batch=20")] = "hydra.sweeper.batch=2"
            run_workers(warm, 1, env, Path(tmp))
            for workers in args.workers:
                trials = workers * args.trials
                for outputs in [*args.outputs, None]:
                    tracked = outputs is not None
                    name = f"requests-{workers}-{outputs or 'untracked'}"
                    proxy.take()
                    offset = pg.log.stat().st_size
                    cpu_before = cpu_seconds(server.pid), cpu_seconds(pg.pid)
                    cmd = study_command(name, storage, trials, outputs, tuple(args.extra))
                    wall = run_workers(cmd, workers, env, Path(tmp))
                    time.sleep(1.0)  # the server's log catches up
                    mlflow_cpu = cpu_seconds(server.pid) - cpu_before[0]
                    pg_cpu = cpu_seconds(pg.pid) - cpu_before[1]
                    requests = proxy.take()
                    stmts, calls, _ = statements(pg.log, offset, "optuna")
                    beats = stmts.pop("heartbeat", 0)
                    total_stmts = sum(stmts.values())
                    print(
                        f"\n{workers} worker(s), {trials} trials, "
                        f"{f'tracking.trial_outputs={outputs}' if tracked else 'tracking off'}: "
                        f"{wall:.1f} s, {trials / wall:.2f} trials/s"
                    )
                    if tracked:
                        total = sum(requests.values())
                        print(
                            f"  MLflow: {total / trials:.1f} requests per trial (target <= {MLFLOW_TARGET}: "
                            f"{total / trials / MLFLOW_TARGET:.1f}x), server CPU {mlflow_cpu / trials:.3f} s per trial"
                        )
                        print("\n".join(table(requests, trials)))
                    print(
                        f"  PostgreSQL (optuna): {total_stmts / trials:.1f} statements per trial (target <= "
                        f"{STORAGE_TARGET}: {total_stmts / trials / STORAGE_TARGET:.1f}x), {beats / trials:.1f} "
                        f"heartbeat statements apart; server CPU {pg_cpu / trials:.3f} s per trial (both databases)"
                    )
                    print("\n".join(table(stmts, trials)[:12]))
                    print("  the same statements by the storage call that made them:")
                    print("\n".join(table(calls, trials)))


if __name__ == "__main__":
    main()
