"""A tracker's writes as plain requests (JSON, with a folder of files where one uploads some),
and how each goes to the store. The Tracker sends them at once to a local store, or through
the spool (zipnet/tracking/spool.py) to a server; either way this module is what reaches MLflow.

    {"op": "log_batch", "run_id", "metrics": [[key, value, ms, step]], "params": [[k, v]], "tags": [[k, v]]}
    {"op": "log_inputs", "run_id", "datasets": [base64 of DatasetInput protos]}
    {"op": "log_artifacts", "run_id", "artifact_uri"}   files: the folder uploaded into the run
    {"op": "log_model", "run_id", "experiment_id", "params"}   files: net.pt and example.npy
    {"op": "update_run", "run_id", "status"}
    {"op": "end", "run_id", "status", "text", "zipnet_status"}

A run some request of which was refused (`problems`: run id -> why) ends FAILED with the reason.
"""

from __future__ import annotations

import base64
from pathlib import Path

from zipnet.tracking import store

NET, EXAMPLE = "net.pt", "example.npy"


def log_batch(run_id: str, metrics=(), params=(), tags=()) -> dict:
    return {"op": "log_batch", "run_id": run_id, "metrics": list(metrics), "params": list(params), "tags": list(tags)}


def log_inputs(run_id: str, datasets: list) -> dict:
    coded = [base64.b64encode(d.to_proto().SerializeToString()).decode() for d in datasets]
    return {"op": "log_inputs", "run_id": run_id, "datasets": coded}


def log_artifacts(run_id: str, artifact_uri: str | None) -> dict:
    return {"op": "log_artifacts", "run_id": run_id, "artifact_uri": artifact_uri}


def log_model(run_id: str, folder: Path, net, example, experiment_id: str | None, params: dict | None) -> dict:
    """The net and its input example saved into `folder`, for `send` to log as the run's model."""
    import numpy as np
    import torch

    torch.save(net, folder / NET)
    np.save(folder / EXAMPLE, example)
    return {"op": "log_model", "run_id": run_id, "experiment_id": experiment_id, "params": params}


def update_run(run_id: str, status: str) -> dict:
    return {"op": "update_run", "run_id": run_id, "status": status}


def end(run_id: str, status: str, text: str | None, zipnet_status: str | None) -> dict:
    return {"op": "end", "run_id": run_id, "status": status, "text": text, "zipnet_status": zipnet_status}


def send(client, uri: str, request: dict, files: Path | None, problems: dict[str, str]) -> None:
    """One request to the store at `uri` (files: its folder, where it has one). A model's request
    records its steps in itself as they are done, so a try after a lost connection goes on."""
    from mlflow.entities import DatasetInput, Metric, Param, RunTag

    op, run_id = request["op"], request["run_id"]
    if op == "log_batch":
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, ms, step) for k, v, ms, step in request["metrics"]],
            params=[Param(k, v) for k, v in request["params"]],
            tags=[RunTag(k, v) for k, v in request["tags"]],
        )
    elif op == "log_inputs":
        from mlflow.protos.service_pb2 import DatasetInput as Proto

        found = [DatasetInput.from_proto(Proto.FromString(base64.b64decode(d))) for d in request["datasets"]]
        client.log_inputs(run_id, datasets=found)
    elif op == "log_artifacts":
        known = request["artifact_uri"]
        if known is not None:
            store.artifact_repository(uri, known).log_artifacts(str(files))
        else:  # a run the tracker did not start: MLflow reads its location first
            client.log_artifacts(run_id, str(files))
    elif op == "log_model":
        import numpy as np
        import torch

        from zipnet.tracking import models

        net = torch.load(files / NET, weights_only=False)  # saved by this package's own log_model above
        example = np.load(files / EXAMPLE)
        progress = request.setdefault("progress", {})  # kept by the spool between tries: one model, however many
        models.log_net(client, uri, run_id, net, example, request["experiment_id"], request["params"], progress)
    elif op == "update_run":
        client.update_run(run_id, status=request["status"])
    elif op == "end":
        status, text = request["status"], request["text"]
        problem = problems.pop(run_id, None)
        if problem is not None and status == "FINISHED":
            status, text = "FAILED", f"tracking: {problem}"
        tags = [RunTag("zipnet.error", text[-7900:])] if text is not None else []
        if request["zipnet_status"] is not None:
            tags.append(RunTag("zipnet.status", request["zipnet_status"]))
        if tags:
            client.log_batch(run_id, tags=tags)
        client.set_terminated(run_id, status)
    else:
        raise ValueError(f"{op!r}: not a tracking request")
