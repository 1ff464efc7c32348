"""Population-based training (hydra.sweeper.scheduler: {name: pbt}): the exploit copies a member's
weights and optimiser state bit for bit, each member's run records its lineage, a member is
replayed exactly from what its run stored, and a perturb key the engine cannot change is refused."""

import math
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import SHARED_USPS
from stand_ins import data as _data
from sweep_helpers import TINY, load, runs, study_args, zipnet

from zipnet.engine import Member, train
from zipnet.engine.members import Copy, mutable_values, mutated
from zipnet.net import InitSpec
from zipnet.optim import OptimSpec
from zipnet.sweeps import pbt

PASSES = 3
OPTIMS = {
    "sgd": OptimSpec(name="sgd", lr=0.02, lr_end=0.005),
    "sdlm": OptimSpec(name="sdlm", lr=0.0005, hessian_samples=20),
    "adamw": OptimSpec(name="adamw", lr=0.001, weight_decay=0.02),
}


def _members(optim: OptimSpec, k: int = 4) -> list[Member]:
    return [Member(init=InitSpec(seed=10 + i), optim=replace(optim, lr=optim.lr * (1 + i / 2))) for i in range(k)]


def _rows(history):
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in history]


def _copy_after_first(members, source: int, target: int, member: Member | None = None):
    """An exploit hook: after pass 1, `target` takes `source`'s state, going on as `member` (by
    default with the source's mutable values, as an unperturbed PBT copy)."""

    def exploit(pass_number, live):
        if pass_number != 1:
            return []
        now = member or mutated(members[target], mutable_values(members[source]))
        return [Copy(target=target, source=source, member=now)]

    return exploit


@pytest.mark.parametrize("optim", sorted(OPTIMS))
def test_exploit_copies_the_lane_bit_for_bit(optim):
    """On the kernel: just after the copy the target's weights and optimiser state are the source's,
    bit for bit, and with the same settings and data the two go on identical to the last pass."""
    digits, members = _data(n_train=300, n_test=100), _members(OPTIMS[optim])
    states = {}

    def keep(checkpoint, positions):
        states[checkpoint.passes_done] = checkpoint

    results = train(
        members,
        digits,
        passes=PASSES,
        log=None,
        backend="c",
        exploit=_copy_after_first(members, source=0, target=2),
        checkpoint_every=1,
        on_checkpoint=keep,
    )
    assert [r.backend for r in results] == ["c"] * 4
    after = states[1].members
    for part in ("params", "optim"):
        source, target = getattr(after[0], part), getattr(after[2], part)
        assert source.keys() == target.keys() and (source or (part, optim) == ("optim", "sgd"))
        for name in source:
            assert torch.equal(source[name], target[name]), (part, name)
    (copy,) = results[2].copies
    assert (copy.pass_number, copy.source, copy.target) == (1, 0, 2)
    for name, t in copy.state.members[0].params.items():  # what the run stores: the state just after
        assert torch.equal(t, after[0].params[name])
    assert results[2].current.optim.lr == members[0].optim.lr
    assert _rows(results[2].history[1:]) == _rows(results[0].history[1:])
    assert _rows(results[2].history[:1]) != _rows(results[0].history[:1])
    for name, t in results[0].params.items():
        assert torch.equal(t, results[2].params[name])


@pytest.mark.parametrize("optim", sorted(OPTIMS))
def test_member_replays_from_its_stored_copy(optim):
    """The target's state just after the copy, resumed as a single run with its new settings,
    ends bit for bit where the member ended in the population (the replay zipnet-reproduce runs)."""
    digits, members = _data(n_train=300, n_test=100), _members(OPTIMS[optim])
    values = {key: (v * 1.25 if v is not None else None) for key, v in mutable_values(members[1]).items()}
    now = mutated(members[3], values)
    results = train(
        members, digits, passes=PASSES, log=None, backend="c", exploit=_copy_after_first(members, 1, 3, now)
    )
    (copy,) = results[3].copies
    (alone,) = train([now], digits, passes=PASSES, log=None, backend="c", start=copy.state)
    assert _rows(alone.history) == _rows(results[3].history)
    assert [row["lr"] for row in alone.history[1:]] == [now.optim.lr_at(p, PASSES) for p in range(1, PASSES)]
    for name, t in results[3].params.items():
        assert torch.equal(t, alone.params[name])


def test_a_copy_changes_only_what_may_change():
    members = _members(OPTIMS["sgd"], k=2)
    with pytest.raises(ValueError, match="optim.mu cannot change between passes with optim=sgd"):
        mutated(members[0], {"optim.mu": 0.1})
    other = replace(members[1], target_negative=-0.5)
    with pytest.raises(ValueError, match="a copy may change only optim.lr, optim.lr_end"):
        train(
            members, _data(n_train=50, n_test=20), passes=2, log=None, exploit=_copy_after_first(members, 0, 1, other)
        )


# --------------------------------------------------------------------------------------------
# Through the sweeper: real sqlite Optuna and MLflow stores

PBT = "{name:pbt,interval:1,quantile:0.25,perturb:{optim.lr:[0.8,1.25]},resample_probability:0.25}"
SCHEDULER = f"hydra.sweeper.scheduler={PBT}"


def _pbt_study(tmp_path, name="pbt", *extra):
    args = [*study_args(name, n_trials=4, batch=4, pruner="{name:none}"), SCHEDULER, *TINY_PBT, *extra]
    return zipnet(tmp_path, *args, "optim.lr=tag(log,interval(0.005,0.1))")


TINY_PBT = ["data.n_train=200", "data.n_test=100", "trainer.passes=3", "tracking.figures=false", "trainer.backend=c"]


def test_a_pbt_study_records_each_members_lineage_and_replays_it_exactly(tmp_path):
    proc = _pbt_study(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, _, children = runs(tmp_path, "pbt")
    study = load(tmp_path, "pbt")
    by_trial = {int(c.data.tags["zipnet.trial"]): c for c in children}
    run_of = {n: c.info.run_id for n, c in by_trial.items()}
    copied = [t for t in study.trials if t.user_attrs[pbt.COPIES]]
    assert len(copied) == 2  # passes 1 and 2 (not after the last): one of 4 copies each time
    for t in study.trials:
        run = by_trial[t.number]
        lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]
        errors = client.get_metric_history(run.info.run_id, "test/error")
        assert t.value == max(errors, key=lambda m: m.step).value  # the value: its metric at the last pass
        assert float(run.data.params["optim.lr"]) == t.params["optim.lr"]  # asked with its first lr
        expected = [t.params["optim.lr"]] * 3  # the lr it trained each pass with, independently of the engine
        for copy in t.user_attrs[pbt.COPIES]:
            p, source = copy["pass"], copy["from_trial"]
            assert copy["from_run"] == run_of[source]
            tags = run.data.tags
            assert tags[f"zipnet.pbt.{p}.copied_from"] == run_of[source]
            assert tags[f"zipnet.pbt.{p}.copied_from_trial"] == str(source)
            old, new = copy["changes"]["optim.lr"]
            assert old == expected[p - 1] and tags[f"zipnet.pbt.{p}.changes"] == f"optim.lr {old!r} -> {new!r}"
            (source_lr,) = [m.value for m in client.get_metric_history(run_of[source], "lr") if m.step == p]
            perturbed = any(math.isclose(new, source_lr * f, rel_tol=1e-6) for f in (0.8, 1.25))
            assert perturbed or 0.005 <= new <= 0.1  # the source's lr times a factor, or drawn from the space
            expected[p:] = [new] * (3 - p)
        assert lrs == pytest.approx(expected, rel=1e-6)
        assert t.user_attrs[pbt.PARAMS]["optim.lr"] == pytest.approx(expected[-1], rel=1e-6)
        if t.user_attrs[pbt.COPIES]:
            with tempfile.TemporaryDirectory() as tmp:
                table = Path(client.download_artifacts(run.info.run_id, "pbt/lineage.csv", tmp)).read_text()
            rows = table.splitlines()
            assert rows[0] == "pass,copied_trial,copied_run,param,old,new" and len(rows) == 1 + len(
                t.user_attrs[pbt.COPIES]
            )
            arts = {a.path for a in client.list_artifacts(run.info.run_id, "pbt")}
            assert {f"pbt/pass_{c['pass']}.pt" for c in t.user_attrs[pbt.COPIES]} <= arts
    for p in (1, 2):  # with 4 members a quarter is one: the worst at pass p copies the best
        at = {n: _metric_at(client, run_of[n], "test/error", p) for n in run_of}
        ranked = sorted(at, key=lambda n: (at[n], n))
        (target,) = [t for t in study.trials if any(c["pass"] == p for c in t.user_attrs[pbt.COPIES])]
        (copy,) = [c for c in target.user_attrs[pbt.COPIES] if c["pass"] == p]
        assert (target.number, copy["from_trial"]) == (ranked[-1], ranked[0])
    member = by_trial[copied[-1].number].info.run_id  # copied at pass 2, from a member maybe copied at pass 1
    again = zipnet(tmp_path, member, module="zipnet.cli.reproduce")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"run {member}: reproduced exactly" in again.stdout
    assert "bit for bit" in again.stdout
    report = zipnet(tmp_path, "--study", "pbt", module="zipnet.cli.report")
    assert report.returncode == 0, report.stderr[-2000:]
    assert "## Lineage of the best member (PBT)" in report.stdout


def _metric_at(client, run_id: str, key: str, step: int) -> float:
    (value,) = [m.value for m in client.get_metric_history(run_id, key) if m.step == step]
    return value


@pytest.mark.parametrize(
    "perturb, text",
    [
        ("{model.init:[0.5,2]}", "model.init cannot change between passes; the keys that can: optim.lr, optim.lr_end"),
        ("{optim.mu:[0.5,2]}", "optim.mu cannot change between passes with optim=sgd; the keys that can: optim.lr"),
    ],
)
def test_a_perturb_key_that_cannot_change_is_refused_in_one_line(tmp_path, perturb, text):
    args = [*study_args("bad", n_trials=4, batch=4), f"hydra.sweeper.scheduler={{name:pbt,perturb:{perturb}}}", *TINY]
    proc = zipnet(tmp_path, *args, "optim.lr=choice(0.01,0.03)")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("zipnet-train: error:")]
    assert len(lines) == 1 and ": scheduler.perturb: " in lines[0] and text in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlruns" / "optuna.db").exists() and not (tmp_path / "mlruns" / "mlflow.db").exists()


@pytest.mark.slow  # kept out of CI for the suite's 20 minutes; make test-all runs it
@pytest.mark.skipif(not SHARED_USPS.is_file(), reason=f"needs the shared USPS copy at {SHARED_USPS}")
def test_the_pbt_usps_preset_runs(tmp_path):
    args = ["-m", "sweeps=pbt_usps", f"data.path={SHARED_USPS}", "data.n_train=300", "data.n_test=100"]
    args += ["trainer.passes=2", "hydra.sweeper.n_trials=4", "hydra.sweeper.batch=4"]
    args.append("hydra.sweeper.scheduler.interval=1")
    proc = zipnet(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "study 'pbt_usps': 4/4 trials (4 complete" in proc.stdout
    assert "copies" in proc.stdout + proc.stderr
