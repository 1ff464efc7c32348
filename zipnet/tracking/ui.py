"""`make ui`: MLflow's UI over the project's store, on 127.0.0.1, with the link that opens the
experiment's runs table (the "Model training" view, not MLflow 3's GenAI overview).

    python -m zipnet.tracking.ui [--port 5000] [--tracking-uri URI] [--experiment zipnet] [--workers 2]

MLflow's job runner (GenAI evaluation jobs, unused here) stays off unless
$MLFLOW_SERVER_ENABLE_JOB_EXECUTION says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

from zipnet.errors import StoreError
from zipnet.tracking import store


def link(uri: str, experiment: str, base: str) -> str:
    """The runs table of `experiment` in the UI at `base`; the experiment list if it does not exist yet."""
    client = store.open_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return f"{base}/#/experiments"
    if found.tags.get("mlflow.experimentKind") != store.EXPERIMENT_TAGS["mlflow.experimentKind"]:
        store.experiment_id(client, experiment, uri)  # a store from before zipnet set the kind
    return store.ui_link(base, found.experiment_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zipnet.tracking.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument(
        "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)"
    )
    parser.add_argument("--experiment", default=store.DEFAULT_EXPERIMENT)
    parser.add_argument("--workers", type=int, default=2, help="server processes (default 2)")
    args = parser.parse_args(argv)
    try:
        uri = store.resolve_uri(args.tracking_uri)
        store.check(uri)
        address = link(uri, args.experiment, f"http://127.0.0.1:{args.port}")
    except StoreError as err:
        print(f"zipnet ui: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"MLflow UI: {address}", flush=True)
    artifacts = store.sqlite_path(uri).parent / "artifacts" if store.sqlite_path(uri) else None
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    command = [
        mlflow,
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
    ]
    if artifacts is not None:  # experiments made in the UI keep their artifacts beside the database too
        command += ["--default-artifact-root", artifacts.as_uri()]
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(mlflow, command)


if __name__ == "__main__":
    main()
