"""A run's trained net as an MLflow model, and the Model Registry.

Every finished run logs its net (`zipnet.model.ZipNet`) as an MLflow pytorch model:
pickled, so loading needs the installed zipnet package and nothing more; with a signature
(float32 (N, 16, 16) digits in [-1, 1] in, the ten outputs out, and a param `output` that
asks for the predicted digit instead) and an input example (the run's first test digits).
The model is an output of its run, which fills the Model column of MLflow's runs table.

    model = mlflow.pyfunc.load_model(tracking.model_uri(client, run_id))
    model.predict(images)                                  # (N, 10) outputs
    model.predict(images, params={"output": "digit"})      # (N,) digits 0..9
"""

from __future__ import annotations

import contextlib
import logging

from zipnet.tracking.store import artifact_repository, use_uri

NAME = "model"  # the logged model's name in its run


def signature():
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    from zipnet.model import PREDICTIONS

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 16, 16))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]),
        params=ParamSchema([ParamSpec("output", "string", PREDICTIONS[0])]),
    )


def requirements() -> list[str]:
    import torch

    import zipnet

    return [f"torch=={torch.__version__.split('+')[0]}", f"zipnet=={zipnet.__version__}"]


@contextlib.contextmanager
def _unchecked():
    """mlflow's save_model without its check that the installed packages satisfy the model's
    requirements: a warning at most, for requirements that `requirements()` reads from the installed
    versions themselves; the check maps every installed package to its modules (most of a second)."""
    from mlflow.utils import environment

    check = environment.warn_dependency_requirement_mismatches
    environment.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = check


@contextlib.contextmanager
def _quiet(name: str, level: int = logging.ERROR):
    """A library logger held at `level` for the block."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def net_and_example(result, digits=None):
    """The member of `result` (an engine RunResult) as a ZipNet, and its input example: the first
    test digits of `digits`, else a blank digit (all background)."""
    import numpy as np

    from zipnet.model import ZipNet

    net = ZipNet.from_member(result.params, result.member).eval()
    if digits is not None:
        example = digits.test_x[:2].reshape(-1, 16, 16).cpu().numpy()
    else:
        example = np.full((1, 16, 16), -1.0, dtype=np.float32)
    return net, example


def log(
    client, uri: str, run_id: str, result, digits=None, experiment_id: str | None = None, params: dict | None = None
) -> str:
    """Log the member of `result` as the model of run `run_id` in the store at `uri` (`log_net`)."""
    return log_net(client, uri, run_id, *net_and_example(result, digits), experiment_id, params)


def log_net(
    client,
    uri: str,
    run_id: str,
    net,
    example,
    experiment_id: str | None = None,
    params: dict | None = None,
    progress: dict | None = None,
) -> str:
    """Log `net` as the model of run `run_id`; returns the model's id (its URI is models:/ID). The
    run's experiment and params are read from the store unless both are given. `progress` keeps
    the steps done (the model's id once created, whether it is linked), so that a call tried
    again after a lost connection makes no second model.

    The steps of `mlflow.pytorch.log_model`, less its check that the saved model serves its
    input example (a load and a predict per call, two thirds of its time): the model is
    created in the run's experiment, linked as the run's output, saved locally, uploaded
    (a request per file to a server) and marked READY."""
    import tempfile

    import mlflow.pytorch
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    progress = {} if progress is None else progress
    if experiment_id is None or params is None:
        run = client.get_run(run_id)
        experiment_id, params = run.info.experiment_id, run.data.params
    if "model_id" not in progress:
        made = client.create_logged_model(experiment_id, name=NAME, source_run_id=run_id, params=params)
        progress.update(model_id=made.model_id, artifact_location=made.artifact_location)
    model_id, location = progress["model_id"], progress["artifact_location"]
    if not progress.get("linked"):
        client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
        progress["linked"] = True
    about = Model(location, run_id=run_id, model_uuid=model_id, model_id=model_id)
    # mlflow.pytorch warns about every pickled model; loading this one needs zipnet, by design
    with tempfile.TemporaryDirectory() as tmp, use_uri(uri), _quiet("mlflow.pytorch"), _unchecked():
        mlflow.pytorch.save_model(
            net,
            f"{tmp}/{NAME}",
            mlflow_model=about,
            signature=signature(),
            input_example=example,
            pip_requirements=requirements(),
            serialization_format="pickle",
        )
        # straight to the model's location, which MlflowClient.log_model_artifacts reads back first
        artifact_repository(uri, location).log_artifacts(f"{tmp}/{NAME}")
    client.finalize_logged_model(model_id, LoggedModelStatus.READY)
    return model_id


def warm() -> None:
    """Save a blank net as an MLflow model into a temporary folder: the first save in a process
    imports what saving needs (the flavour, signatures, input examples)."""
    import tempfile

    import mlflow.pytorch
    import numpy as np

    from zipnet.model import ZipNet

    with tempfile.TemporaryDirectory() as tmp, _quiet("mlflow.pytorch"), _unchecked():
        mlflow.pytorch.save_model(
            ZipNet(),
            f"{tmp}/model",
            signature=signature(),
            pip_requirements=requirements(),
            input_example=np.full((1, 16, 16), -1.0, dtype=np.float32),
            serialization_format="pickle",
        )


def model_id(client, run_id: str) -> str | None:
    """The id of the model that run `run_id` logged, if any."""
    outputs = client.get_run(run_id).outputs
    models = outputs.model_outputs if outputs is not None else []
    return models[-1].model_id if models else None


def model_uri(client, run_id: str) -> str:
    """`models:/ID` of the model that run `run_id` logged (for mlflow.pyfunc.load_model)."""
    found = model_id(client, run_id)
    if found is None:
        raise LookupError(f"run {run_id} logged no model")
    return f"models:/{found}"


def register(uri: str, run_id: str, name: str, tags: dict[str, str] | None = None):
    """Register the model of run `run_id` under `name` in the store's Model Registry (the name
    is created on first use); returns the new ModelVersion."""
    import mlflow

    from zipnet.tracking.store import open_client

    source = model_uri(open_client(uri), run_id)
    with use_uri(uri), _quiet("mlflow.tracking._model_registry", logging.WARNING):
        return mlflow.register_model(source, name, tags={k: str(v) for k, v in (tags or {}).items()})
