"""zipnet.model.ZipNet against the engine, and the MLflow model a run logs: loaded with
mlflow.pyfunc, registered, and served over HTTP on 127.0.0.1."""

import json
import os
import signal
import subprocess
import sys
import urllib.request

import mlflow
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from servers import free_port, wait_for

from zipnet import config as checks
from zipnet import tracking
from zipnet.cli.train import CONF_DIR
from zipnet.data import load_digits
from zipnet.engine import MSE_C, Population, input_patches, train
from zipnet.engine.torch_ops import TorchOps
from zipnet.model import ZipNet

TINY = ["data.n_train=200", "data.n_test=300", "trainer.progress=off"]
VARIANTS = {
    "paper": [],
    "scaled_tanh, random table": ["model.activation=scaled_tanh", "model.table=random", "model.table_seed=2"],
    "relu, linear outputs, cross-entropy": ["model.activation=relu", "model.output=linear", "loss=cross_entropy"],
    "full table, targets 0.6": ["model.table=full", "data.target_negative=-0.6", "data.target_positive=0.6"],
}


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_module_computes_the_engines_test_outputs_and_misses(variant):
    cfg = _compose(TINY + VARIANTS[variant])
    digits = load_digits(cfg.data)
    member = checks.member(cfg)
    (result,) = train([member], digits, passes=1, log=None)
    net = ZipNet.from_member(result.params, member)
    with torch.no_grad():
        outputs = net(digits.test_x)
        predicted = net(digits.test_x.reshape(-1, 256).numpy(), output="digit")  # any layout of 256 pixels
    # the kernel evaluates in its own order of fused multiply-adds: the last bits differ, the misses do not
    torch.testing.assert_close(outputs, result.test_outputs, rtol=1e-5, atol=1e-6)
    assert int((predicted != digits.test_y).sum()) == result.history[-1]["test/misses"]
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {
        k: tuple(v.shape) for k, v in result.params.items()
    }


def test_autograd_through_the_module_equals_the_engines_hand_written_backprop():
    """The module trains like any nn.Module: its autograd gradients for one pattern are the
    engine's backprop (MSE, E = (c/2) sum_k (d_k - x_k)^2)."""
    cfg = _compose(TINY + ["model.activation=scaled_tanh", "model.table=random", "loss.mse=half_sum"])
    digits = load_digits(cfg.data)
    member = checks.member(cfg)
    population = Population([member])
    x, label = digits.train_x[:1], int(digits.train_y[0])
    grads = TorchOps(population).gradients(input_patches(x)[0], label)
    net = ZipNet.from_member(population.member_params(0), member)
    target = torch.full((10,), member.target_negative)
    target[label] = member.target_positive
    loss = MSE_C[member.mse] / 2 * ((net(x)[0] - target) ** 2).sum()
    loss.backward()
    for name, grad in grads.items():
        expected = grad[0] if name != "H2w" else grad[0] * net.mask
        got = getattr(net, name).grad * (net.mask if name == "H2w" else 1)
        expected = expected.reshape(got.shape)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (name, (got - expected).abs().max())


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny real run (200 digits, 2 passes) streamed into a temp store as the runner does."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("model")
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    cfg = _compose(TINY + ["trainer.passes=2"])
    digits = load_digits(cfg.data)
    tracker = tracking.Tracker(uri, "zipnet", figures=False)
    run_id = tracker.start("tiny", role="run")
    tracker.log_config(run_id, cfg, ["trainer.passes=2"], digits)
    (result,) = train(
        [checks.member(cfg)],
        digits,
        passes=2,
        log=None,
        on_pass=lambda n, live: tracker.log_pass(run_id, live[0].history[-1]) or set(),
    )
    tracker.finish(run_id, result, digits)
    client = tracker.client  # waits for the queue
    return {
        "root": root,
        "uri": uri,
        "client": client,
        "run_id": run_id,
        "result": result,
        "digits": digits,
        "cfg": cfg,
    }


def test_the_logged_model_predicts_the_runs_final_test_misses(logged):
    client, run_id, digits = logged["client"], logged["run_id"], logged["digits"]
    uri = tracking.model_uri(client, run_id)
    with tracking.store.use_uri(logged["uri"]):
        model = mlflow.pyfunc.load_model(uri)
    images = digits.test_x.reshape(-1, 16, 16).numpy()
    outputs = model.predict(images)
    predicted = model.predict(images, params={"output": "digit"})
    logged_misses = client.get_run(run_id).data.metrics["test/misses"]
    misses = int((predicted != digits.test_y.numpy()).sum())
    assert misses == logged_misses == logged["result"].history[-1]["test/misses"]
    np.testing.assert_allclose(outputs, logged["result"].test_outputs.numpy(), rtol=1e-5, atol=1e-6)
    signature = model.metadata.signature
    (spec,) = signature.inputs.inputs
    assert (spec.type, tuple(spec.shape)) == (np.dtype(np.float32), (-1, 16, 16))
    assert [p.name for p in signature.params.params] == ["output"]


def test_the_model_is_the_runs_output_and_the_splits_are_its_datasets(logged):
    client, run_id, digits = logged["client"], logged["run_id"], logged["digits"]
    run = client.get_run(run_id)
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.source_run_id == run_id and model.experiment_id == run.info.experiment_id  # the UI looks there
    assert [m.model_id for m in client.search_logged_models([run.info.experiment_id])] == [output.model_id]
    assert model.artifact_location.startswith((logged["root"] / "mlruns" / "artifacts").as_uri())
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "test"}
    assert inputs["train"].name == "embedded train 200 seed 0" and inputs["test"].name == "embedded test 300 seed 0"
    assert {d.digest for d in inputs.values()} == {digits.fingerprint[:12]}
    assert json.loads(inputs["test"].profile)["num_rows"] == 300
    assert json.loads(inputs["train"].profile)["fingerprint"] == digits.fingerprint


def test_the_model_loads_in_a_process_that_imports_only_mlflow(logged, tmp_path):
    """Loading needs the installed zipnet package and nothing else of zipnet's."""
    uri = tracking.model_uri(logged["client"], logged["run_id"])
    images = logged["digits"].test_x[:5].reshape(-1, 16, 16).numpy()
    np.save(tmp_path / "x.npy", images)
    code = (
        "import sys, numpy, mlflow\n"
        f"m = mlflow.pyfunc.load_model({uri!r})\n"
        f"print(m.predict(numpy.load({str(tmp_path / 'x.npy')!r}), params={{'output': 'digit'}}).tolist())"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["uri"]}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == logged["result"].test_outputs[:5].argmax(1).tolist()


def test_a_registered_model_serves_predictions_on_loopback(logged):
    version = tracking.register(logged["uri"], logged["run_id"], "zipnet-tiny", {"zipnet.note": "test"})
    assert int(version.version) == 1 and version.tags["zipnet.note"] == "test"
    port, bin_dir = free_port(), os.path.dirname(sys.executable)
    # the scoring server runs uvicorn from PATH: the environment's own
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["uri"], "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [
            os.path.join(bin_dir, "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/zipnet-tiny/1",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        cwd=logged["root"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", server)
        images = logged["digits"].test_x[:20].reshape(-1, 16, 16).numpy()
        answers = {}
        for output in ("outputs", "digit"):
            body = json.dumps({"inputs": images.tolist(), "params": {"output": output}}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                answers[output] = np.array(json.loads(response.read())["predictions"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    expected = logged["result"].test_outputs[:20].numpy()
    np.testing.assert_allclose(answers["outputs"], expected, rtol=1e-5, atol=1e-6)  # the kernel's last bits
    assert answers["digit"].tolist() == expected.argmax(axis=1).tolist()
