"""Checkpoints at pass boundaries: a run stopped after k passes and resumed from its checkpoint
ends bit for bit where the uninterrupted run ends, alone and in a population, on both backends."""

from dataclasses import replace

import pytest
import torch
from stand_ins import data as _data

from zipnet.engine import Member, train
from zipnet.engine.checkpoint import Checkpoint
from zipnet.errors import ConfigError
from zipnet.net import PARAM_NAMES, InitSpec
from zipnet.optim import OptimSpec

PASSES, STOP = 3, 1  # the uninterrupted run's passes; the interrupted one stops after STOP
OPTIMS = {
    "sgd": OptimSpec(name="sgd", lr=0.02, lr_end=0.005),  # lr_end: the schedule's position matters
    "sdlm": OptimSpec(name="sdlm", lr=0.0005, hessian_samples=20),
    "sdlm-running": OptimSpec(name="sdlm", lr=0.0005, hessian="running", hessian_samples=20),
    "adamw": OptimSpec(name="adamw", lr=0.001, lr_by_pass=(0.002, 0.001)),
}
BACKENDS = ["torch", "c"]


class Stopped(Exception):
    """What the interrupted run raises after its STOP-th checkpoint (a preemption, here by hand)."""


def _members(optim: OptimSpec, k: int) -> list[Member]:
    return [
        Member(init=InitSpec(seed=10 + i), dropout=0.1 * (i + 1), optim=replace(optim, lr=optim.lr * (1 + i / 2)))
        for i in range(k)
    ]


def _train(members, digits, backend, **kw):
    return train(members, digits, passes=PASSES, log=None, backend=backend, shift=1, shift_seed=5, **kw)


def _interrupted(members, digits, backend, path) -> Checkpoint:
    """Train until the STOP-th pass's checkpoint is on disk, then stop; that checkpoint, read back."""

    def save(checkpoint: Checkpoint, positions: list[int]) -> None:
        assert positions == list(range(len(members)))
        checkpoint.save(path)
        if checkpoint.passes_done == STOP:
            raise Stopped

    with pytest.raises(Stopped):
        _train(members, digits, backend, checkpoint_every=1, on_checkpoint=save)
    return Checkpoint.load(path)


def _rows(result):
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in result.history]


def _identical(got, want, neighbours: bool = True) -> None:
    """The same rows, weights and outputs; `neighbours`: trained beside as many members, too."""
    assert got.status == want.status == "finished"
    assert _rows(got) == _rows(want)
    if neighbours:
        assert got.population_sizes == want.population_sizes
    for name in PARAM_NAMES:
        assert torch.equal(got.params[name], want.params[name]), name
    assert torch.equal(got.test_outputs, want.test_outputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optim", list(OPTIMS))
def test_a_resumed_run_ends_bit_for_bit_where_the_uninterrupted_one_does(tmp_path, optim, backend):
    members = _members(OPTIMS[optim], 1)
    digits = _data(60, 20)
    (whole,) = _train(members, digits, backend)
    start = _interrupted(members, digits, backend, tmp_path / "checkpoint.pt")
    assert start.passes_done == STOP and start.backend == whole.backend
    (resumed,) = _train(members, digits, backend, start=start)
    assert len(resumed.history) == PASSES
    _identical(resumed, whole)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optim", list(OPTIMS))
def test_a_resumed_population_and_each_resumed_member_end_where_they_would_have(tmp_path, optim, backend):
    """Three members with their own data seeds and dropout rates, resumed together; and each member's
    checkpoint taken out and put back together in another order. On the kernel a member's numbers
    do not depend on its neighbours, so one member resumed alone ends where it ends in the population."""
    members = _members(OPTIMS[optim], 3)
    digits = [_data(60, 20, seed=20 + k) for k in range(3)]
    whole = _train(members, digits, backend)
    start = _interrupted(members, digits, backend, tmp_path / "checkpoint.pt")
    for got, want in zip(_train(members, digits, backend, start=start), whole):
        _identical(got, want)
    order = [2, 0, 1]
    again = Checkpoint.stack([start.member(k) for k in order])
    shuffled = _train([members[k] for k in order], [digits[k] for k in order], backend, start=again)
    if backend == "c":
        for got, k in zip(shuffled, order):
            _identical(got, whole[k])
        (alone,) = _train([members[1]], digits[1], backend, start=start.member(1))
        _identical(alone, whole[1], neighbours=False)
        assert alone.population_sizes == [3, 1, 1]
    else:  # torch ops: batched products over another arrangement may add in another order
        for got, k in zip(shuffled, order):
            assert [r["test/misses"] for r in got.history] == [r["test/misses"] for r in whole[k].history]


def test_a_checkpoint_of_another_config_is_refused_in_one_line_naming_what_differs(tmp_path):
    members = _members(OPTIMS["sgd"], 1)
    digits = _data(60, 20)
    start = _interrupted(members, digits, "torch", tmp_path / "checkpoint.pt")
    other = [replace(members[0], optim=replace(members[0].optim, lr=0.5))]
    with pytest.raises(ConfigError) as refused:
        _train(other, digits, "torch", start=start)
    text = str(refused.value)
    assert "\n" not in text and text.startswith("trainer.resume: ")
    assert "was written for another config: member 0 optim.lr (0.02 there, 0.5 here)" in text
    with pytest.raises(ConfigError, match="another config: member 0 data"):
        _train(members, _data(60, 20, seed=4), "torch", start=start)
    with pytest.raises(ConfigError, match=r"another config: passes \(3 there, 2 here\)"):  # sgd's lr_end
        train(members, digits, passes=2, log=None, shift=1, shift_seed=5, start=start)
    constant = _members(OPTIMS["adamw"], 1)  # its lr does not depend on the passes: a run may be extended
    start = _interrupted(constant, digits, "torch", tmp_path / "adamw.pt")
    with pytest.raises(ConfigError, match="trainer.passes: 0 is fewer than the 1 passes done"):
        train(constant, digits, passes=0, log=None, shift=1, shift_seed=5, start=start)


def test_a_file_that_is_no_checkpoint_is_refused_in_one_line(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"^trainer.resume: .*junk.pt is not a zipnet checkpoint \("):
        Checkpoint.load(junk)
    torch.save({"format": "zipnet-checkpoint", "version": 99}, junk)
    with pytest.raises(ConfigError, match="has checkpoint format version 99; this zipnet reads 1"):
        Checkpoint.load(junk)
    with pytest.raises(ConfigError, match="missing.pt: no such checkpoint"):
        Checkpoint.load(tmp_path / "missing.pt")


def _cli(*args, cwd):
    import subprocess
    import sys

    run = [sys.executable, "-m", "zipnet.cli.train", *args]
    return subprocess.run(run, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_cli_resumed_from_k_passes_to_n_ends_where_an_n_pass_run_ends(tmp_path):
    import json

    args = ["data.n_train=200", "data.n_test=100", "trainer.progress=off", "tracking.enabled=false"]
    args += ["trainer.shift=1", "model.dropout=0.1", "optim=adamw", "optim.lr=0.001"]
    stamped = "hydra.run.dir=out/${now:%H-%M-%S-%f}"  # a new folder per run, as Hydra's default
    first = _cli(*args, "trainer.passes=2", stamped, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = _cli(*args, "trainer.passes=4", "trainer.resume=true", stamped, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoint.pt: 2 of 4 passes done" in resumed.stdout
    whole = _cli(*args, "trainer.passes=4", "hydra.run.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    (last,) = [
        d
        for d in (tmp_path / "out").iterdir()
        if json.loads((d / "metrics.json").read_text())["history"][-1]["pass"] == 4
    ]

    def rows(folder):
        history = json.loads((folder / "metrics.json").read_text())["history"]
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in history]

    assert rows(last) == rows(tmp_path / "whole") and len(rows(last)) == 4
    got, want = Checkpoint.load(last / "checkpoint.pt"), Checkpoint.load(tmp_path / "whole" / "checkpoint.pt")
    for name in PARAM_NAMES:
        assert torch.equal(got.members[0].params[name], want.members[0].params[name])
    other = _cli(*args, "trainer.passes=4", "optim.lr=0.002", "trainer.resume=true", stamped, cwd=tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert (
        "trainer.resume: " in other.stderr
        and "another config: member 0 optim.lr (0.001 there, 0.002 here)" in other.stderr
    )


def test_a_tracked_resumed_run_goes_on_in_its_mlflow_run_with_every_pass_once(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["data.n_train=200", "data.n_test=100", "trainer.progress=off", f"tracking.uri={uri}"]
    args += ["tracking.figures=false", "tracking.system_metrics=false", "hydra.run.dir=run"]
    assert _cli(*args, "trainer.passes=2", cwd=tmp_path).returncode == 0
    resumed = _cli(*args, "trainer.passes=3", "trainer.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("zipnet").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["zipnet.resumed_from_pass"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/error")] == [1, 2, 3]
