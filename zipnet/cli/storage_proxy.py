"""zipnet-storage-proxy: Optuna's gRPC storage proxy in front of one study storage.

    zipnet-storage-proxy --storage postgresql://zipnet@db:5432/optuna --host 0.0.0.0 --port 13000
    zipnet-train -m ... hydra.sweeper.storage=grpc://PROXY_HOST:13000      # on every worker

Each worker then holds one gRPC channel instead of its own PostgreSQL connections (3 a worker,
so the default max_connections stops at about 25-30 workers); the proxy holds the storage's
connections (`optuna.storages.run_grpc_proxy_server` over `optuna.storages.get_storage`).
Its API has no heartbeat and no lock: workers beat through a trial attribute and give back
what they asked past the target (zipnet.sweeps.storage). It runs until stopped (Ctrl-C,
SIGTERM). Exit status 2, with one line saying why, when the storage cannot be opened or the
port is taken.
"""

from __future__ import annotations

import argparse
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

PROG = "zipnet-storage-proxy"


class ProxyError(RuntimeError):
    pass


def open_backend(url: str):
    """The storage the proxy serves: an RDB URL, opened as zipnet's workers open it."""
    from zipnet.sweeps import storage as stores
    from zipnet.sweeps.study import SweepError

    shown = stores.masked(url)
    if url.startswith("journal:"):
        raise ProxyError(f"--storage {shown}: Optuna's gRPC proxy cannot serve a journal storage; give an RDB URL")
    if url.startswith("grpc://"):
        raise ProxyError(
            f"--storage {shown}: that is a proxy; give the storage it serves (postgresql://..., sqlite:///...)"
        )
    if "://" not in url:
        raise ProxyError(
            f"--storage {shown}: not a storage URL; give postgresql://USER@HOST:PORT/DB, mysql+pymysql://..., "
            "or sqlite:///PATH"
        )
    path = stores.local_file(url)
    if path is not None and not path.parent.is_dir():
        raise ProxyError(f"--storage {shown}: the folder {path.parent} does not exist; create it or fix the URL")
    try:
        storage = stores.open_storage(url)
        storage.get_all_studies()  # the server answers and the tables are there (created if missing)
    except SweepError as err:
        raise ProxyError(str(err)) from None
    except Exception as err:
        raise ProxyError(str(stores.storage_error(url, err))) from None
    return storage


def check_port(host: str, port: int) -> None:
    """Refuse a port something listens on. gRPC servers bind with SO_REUSEPORT, so a second proxy
    would otherwise share the port with the first and take half its requests; a plain socket
    (without it) cannot bind there."""
    if not 0 < port < 65536:
        raise ProxyError(f"--port {port}: give a port from 1 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ProxyError(f"--host {host}: cannot resolve it ({err.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed proxy's TIME_WAIT is no owner
        try:
            probe.bind(address)
        except OSError as err:
            raise ProxyError(
                f"--port {port}: cannot listen on {host}:{port} ({err.strerror}); stop what holds it, or pick another"
            ) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--storage",
        required=True,
        help="the storage to serve: postgresql://USER@HOST:PORT/DB (password from $PGPASSWORD or ~/.pgpass), "
        "mysql+pymysql://..., or sqlite:///PATH",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=13000, help="port to listen on (default 13000)")
    parser.add_argument("--threads", type=int, default=10, help="requests served at once (default 10)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: give 1 or more")
    import warnings

    import optuna

    from zipnet.sweeps.storage import masked

    try:
        storage = open_backend(args.storage)
        check_port(args.host, args.port)
    except ProxyError as err:
        parser.exit(2, f"{PROG}: error: {err}\n")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped like Ctrl-C: its clients' next call fails
    print(f"{PROG}: serving {masked(args.storage)} at grpc://{args.host}:{args.port}", flush=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the proxy is marked experimental
            optuna.storages.run_grpc_proxy_server(
                storage, host=args.host, port=args.port, thread_pool=ThreadPoolExecutor(max_workers=args.threads)
            )
    except RuntimeError as err:  # the port was taken between the check and the bind
        parser.exit(2, f"{PROG}: error: --port {args.port}: cannot listen on {args.host}:{args.port} ({err})\n")
    except KeyboardInterrupt:
        pass
    print(f"{PROG}: stopped", flush=True)


if __name__ == "__main__":
    main()
