"""zipnet-reproduce: rebuild a logged run's zipnet-train command, rerun it, compare every pass.

    zipnet-reproduce RUN_ID
    zipnet-reproduce --best paper_open_choices     the best trial of an Optuna study
    zipnet-reproduce --best zipnet                 the best finished run of an experiment

The override list is rebuilt from the stored config (config_resolved.yaml): start from the
run's own overrides, compose, and add `key=value` for every key whose stored value differs
(a default changed since), then check that the composed config equals the stored one. The
command is printed, rerun, and every per-pass metric except `seconds` is compared exactly.
Exit status: 0 when everything matches, 1 on a mismatch, 2 when the run cannot be rebuilt.

A member of a population (a sweep trial) went through an engine path chosen by the
population's size K (batched torch ops, or the compiled kernel with a block width set by
K), whose rounding differs from a population of one. Its run records how many members
trained in each pass (`zipnet.population_sizes`); it is rerun in-process among that many
copies of itself at its place (`zipnet.population_positions`), dropping copies where the
original population lost members, which is bit-identical at the same thread count.
`--single` reruns the plain command instead.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from zipnet import metrics, runner, tracking
from zipnet.config import Composer, override_key, override_value
from zipnet.tracking import lineage

COMPARED = metrics.COMPARED
# another backend or CPU rounds differently: within this, a run counts as reproduced
TOLERANCE = {"rel": 1e-4, "abs": 1e-6}
EXACT_ACROSS_BACKENDS = ("train/misses", "test/misses", "train/error", "test/error", "lr")  # still exact
NOT_TRAINING = tracking.NOT_TRAINING  # where a run was watched, or which trial it was: not what it trained


class ReproduceError(RuntimeError):
    pass


def _training_keys(flat: dict) -> dict:
    return {k: v for k, v in flat.items() if not k.startswith(NOT_TRAINING)}


def rebuild_overrides(stored_cfg: dict, stored_overrides: list[str]) -> list[str]:
    """The zipnet-train overrides that compose to `stored_cfg` with today's conf/."""
    drop = ("tracking.", "hydra.", "trainer.progress", "trainer.checkpoint_every", "trainer.resume", "trial.")
    overrides = [o for o in stored_overrides if not override_key(o).startswith(drop)]
    want = _training_keys(tracking.flatten(stored_cfg))
    with Composer() as composer:
        try:
            have = _training_keys(tracking.flatten(composer.compose(overrides)))
        except Exception as err:
            raise ReproduceError(f"the stored overrides no longer compose: {err}") from err
        missing = sorted(set(want) - set(have))
        if missing:
            raise ReproduceError(f"config keys of the run are gone from conf/: {', '.join(missing)}")
        added = sorted(set(have) - set(want))
        if added:
            raise ReproduceError(f"conf/ has keys the run did not have: {', '.join(added)}; check out the run's commit")
        set_keys = {override_key(o) for o in overrides}
        for key in sorted(want):
            if have[key] != want[key] or type(have[key]) is not type(want[key]):
                if key in set_keys:
                    overrides = [o for o in overrides if override_key(o) != key]
                overrides.append(f"{key}={override_value(want[key])}")
        again = _training_keys(tracking.flatten(composer.compose(overrides)))
    if again != want:
        diff = sorted(k for k in want if again.get(k) != want[k])
        raise ReproduceError(f"cannot rebuild the config: {', '.join(diff)} still differ")
    return overrides


@dataclass
class Stored:
    run_id: str
    cfg: dict
    overrides: list[str]
    history: dict[str, list[tuple[int, float]]]
    status: str
    sizes: list[int]  # members trained together in each pass
    positions: list[int]  # and this member's place among them
    engine: dict[str, str]  # the backend, kernel build and CPU that trained it (runner.engine_tags)


def load_stored(client, run_id: str) -> Stored:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ReproduceError(f"no run {run_id!r} in {client.tracking_uri}") from err
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cfg_path = client.download_artifacts(run_id, "config_resolved.yaml", tmp)
            ovr_path = client.download_artifacts(run_id, "overrides.yaml", tmp)
        except Exception as err:
            raise ReproduceError(f"run {run_id} has no stored config: {err}") from err
        cfg = OmegaConf.to_container(OmegaConf.load(cfg_path))
        overrides = list(OmegaConf.to_container(OmegaConf.load(ovr_path)) or [])
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in COMPARED}
    tags = run.data.tags
    sizes = [int(k) for k in tags.get("zipnet.population_sizes", "").split(",") if k.strip()]
    if not sizes:
        sizes = [int(tags.get("zipnet.population_size", "1") or 1)] * max(1, len(history["train/loss"]))
    positions = [int(k) for k in tags.get("zipnet.population_positions", "").split(",") if k.strip()]
    if len(positions) != len(sizes):
        positions = [0] * len(sizes)
    engine = {k: v for k, v in tags.items() if k in ("zipnet.backend", "zipnet.kernel_build", "zipnet.cpu")}
    return Stored(run_id, cfg, overrides, history, tags.get("zipnet.status", "finished"), sizes, positions, engine)


def tags_of(client, run_id: str) -> dict[str, str]:
    return client.get_run(run_id).data.tags


def rerun_command(overrides: list[str], workdir: Path) -> tuple[list[dict], dict]:
    """`zipnet-train OVERRIDES` in a fresh process, untracked; its per-pass history and
    which backend trained it, on what."""
    cmd = [
        sys.executable,
        "-m",
        "zipnet.cli.train",
        *overrides,
        "tracking.enabled=false",
        "trainer.progress=off",
        f"hydra.run.dir={workdir}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReproduceError(f"the rerun failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads((workdir / "metrics.json").read_text())
    return out["history"], out.get("engine", {})


class _Follow:
    """Copies of one member, dropped around the target copy so that every pass matches the
    original population's size and the member's place in it (shared by the copies' watchers)."""

    def __init__(self, sizes: list[int], positions: list[int]):
        self.sizes, self.positions = sizes, positions
        self.alive = list(range(sizes[0]))
        self.target = positions[0]
        self.dropping: tuple[int, set[int]] = (0, set())

    def drops(self, pass_number: int) -> set[int]:
        if self.dropping[0] != pass_number:  # decided once per pass, on its first call
            drop: set[int] = set()
            if pass_number < len(self.sizes) and self.target in self.alive:
                at = self.alive.index(self.target)
                before, after = self.alive[:at], self.alive[at + 1 :]
                want_before = self.positions[pass_number]
                want_after = self.sizes[pass_number] - want_before - 1
                drop = set(before[: len(before) - want_before]) | set(after[max(0, want_after) :])
            self.alive = [k for k in self.alive if k not in drop]
            self.dropping = (pass_number, drop)
        return self.dropping[1]


class _Copy(runner.Watcher):
    def __init__(self, k: int, follow: _Follow):
        self.k, self.follow = k, follow

    def on_pass(self, job, result) -> bool:
        return self.k in self.follow.drops(int(result.history[-1]["pass"]))


def rerun_population(overrides: list[str], sizes: list[int], positions: list[int]) -> tuple[list[dict], dict]:
    """The member retrained among copies of itself: as many per pass as trained together
    then, with the member at the same place.

    A member's arithmetic does not depend on its partners' values, only on how many there
    are (the engine picks its path and kernel block from K) and on its place (alignment in
    the batched evaluation), so copies stand in for the partners.
    """
    with Composer() as composer:
        cfg = composer.compose(overrides)
    follow = _Follow(sizes, positions)
    jobs = [runner.Job(cfg, watchers=[_Copy(k, follow)]) for k in range(sizes[0])]
    runner.run(jobs, log=None)
    job = jobs[follow.target]
    if job.error is not None:
        raise ReproduceError(f"the rerun failed: {job.error}")
    return job.result.history, runner.engine_tags(job.result)


class Replay:
    """A PBT member (zipnet/sweeps/pbt.py) replayed from what its run stored, stretch by stretch.

    Its passes up to its first copy follow from its config alone; each copy's stored checkpoint
    (pbt/pass_P.pt: the weights and optimiser state it took, and the settings it went on with)
    starts the next stretch, trained as a single run with the recorded changes applied. A stored
    copy is itself checked against its source: the source run is replayed the same way up to pass
    P, and its weights and optimiser state there must equal the checkpoint bit for bit, so the
    whole lineage tree is rebuilt from configs alone, down to every member's first pass.
    """

    def __init__(self, client, log=print):
        self.client, self.log = client, log
        self.states: dict[tuple[str, int], object] = {}  # (run id, pass) -> its replayed Checkpoint there

    def member(self, run_id: str, until: int | None = None, stored: Stored | None = None):
        """The run's history replayed (to `until`, or its end), and the engine tags of the last stretch."""
        from zipnet import config as checks
        from zipnet.data import load_digits
        from zipnet.engine import train
        from zipnet.engine.checkpoint import Checkpoint
        from zipnet.engine.members import mutated
        from zipnet.tracking import lineage

        stored = stored or load_stored(self.client, run_id)
        overrides = rebuild_overrides(stored.cfg, stored.overrides)
        with Composer() as composer:
            cfg = composer.compose(overrides)
        member, opts = checks.check(cfg)
        options = {**checks.engine_options(opts), "backend": stored.engine.get("zipnet.backend") or opts["backend"]}
        passes, until = opts["passes"], until or opts["passes"]
        events, starts = [], [None]
        with tempfile.TemporaryDirectory() as tmp:
            if int(tags_of(self.client, run_id).get(lineage.COUNT, "0") or 0):
                table = self.client.download_artifacts(run_id, lineage.TABLE, tmp)
                events = [e for e in lineage.read_table(Path(table).read_text()) if e.pass_number < until]
            for event in events:
                starts.append(
                    Checkpoint.load(self.client.download_artifacts(run_id, lineage.state_name(event.pass_number), tmp))
                )
        digits, members, ends = load_digits(cfg.data), [member], [e.pass_number for e in events] + [until]
        for event, state in zip(events, starts[1:]):
            members.append(mutated(members[-1], {key: new for key, (_, new) in event.changes.items()}))
            self._check_source(event, state)
        history, kept = [], {}
        for event, start, end, now in zip([None, *events], starts, ends, members):
            first = start.passes_done if start is not None else 0
            origin = f"its copy of run {event.source_run[:8]}" if event is not None else "its config"
            self.log(f"  run {run_id[:8]}: passes {first + 1}-{end} from {origin}")

            # a stretch stops after its last pass; the one that ends at `until` goes one pass further,
            # since the engine writes a pass's checkpoint (the state a copy is checked against) only
            # for members that go on
            last = end + 1 if end == until and until < passes else end

            def stop(pass_number, live, last=last):
                return {0} if pass_number == last and last < passes else set()

            def keep(checkpoint, positions, end=end):
                if checkpoint.passes_done == end:
                    kept[end] = checkpoint

            (result,) = train(
                [now], digits, log=None, on_pass=stop, start=start, checkpoint_every=end, on_checkpoint=keep, **options
            )
            history += [row for row in result.history if first < row["pass"] <= end]
        if until in kept:
            self.states[(run_id, until)] = kept[until]
        return history, runner.engine_tags(result)

    def _check_source(self, event, state) -> None:
        """The stored copy equals its source's state at that pass, replayed from the source's own lineage."""
        import torch

        key = (event.source_run, event.pass_number)
        if key not in self.states:
            self.member(event.source_run, until=event.pass_number)
        source = self.states[key].members[0]
        mine = state.members[0]
        for part in ("params", "optim"):
            theirs, ours = getattr(source, part), getattr(mine, part)
            if theirs.keys() != ours.keys() or not all(torch.equal(theirs[n], ours[n]) for n in theirs):
                raise ReproduceError(
                    f"the copy at pass {event.pass_number} is not run {event.source_run}'s state there ({part} differ)"
                )
        self.log(
            f"  copy at pass {event.pass_number}: equals run {event.source_run[:8]} replayed to that pass, bit for bit"
        )


def same_arithmetic(before: dict[str, str], now: dict[str, str]) -> bool:
    """Whether two runs did the same float operations: the same backend and kernel build (the
    kernel's numbers do not depend on the CPU); for torch ops, also the same CPU."""
    keys = ["zipnet.backend", "zipnet.kernel_build"]
    if before.get("zipnet.backend") != "c":
        keys.append("zipnet.cpu")
    return all(before.get(k) == now.get(k) for k in keys)


def compare(stored: Stored, history: list[dict], exact: bool = True) -> list[tuple[str, bool, str]]:
    """(metric, matches, detail) for every compared metric, pass by pass: exactly, or where
    another backend or CPU trained the rerun, within TOLERANCE (misses and errors still exactly)."""
    import math

    out = []
    for key in COMPARED:
        old = stored.history[key]
        new = [(int(row["pass"]), float(row[key])) for row in history]
        if stored.status == "pruned":  # the rerun trains every pass; the run stopped early
            new = new[: len(old)]
        if old == new:
            out.append((key, True, f"match ({len(old)} passes)"))
            continue
        if len(old) != len(new):
            out.append((key, False, f"MISMATCH: {len(old)} passes stored, {len(new)} rerun"))
            continue
        if (
            not exact
            and key not in EXACT_ACROSS_BACKENDS
            and all(
                math.isclose(a, b, rel_tol=TOLERANCE["rel"], abs_tol=TOLERANCE["abs"])
                for (_, a), (_, b) in zip(old, new)
            )
        ):
            worst = max(abs(a - b) / max(abs(a), 1e-30) for (_, a), (_, b) in zip(old, new))
            out.append((key, True, f"within tolerance ({len(old)} passes, largest relative difference {worst:.1e})"))
            continue
        (step, a), (_, b) = next((o, n) for o, n in zip(old, new) if o != n)
        out.append((key, False, f"MISMATCH from pass {step}: stored {a!r}, rerun {b!r}"))
    return out


def find_best(client, name: str, experiment: str) -> str:
    """The best finished run of study `name`, else of experiment `name`."""
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        parents = client.search_runs(
            [exp.experiment_id], filter_string=tracking.where(tags={"zipnet.study": name, "zipnet.role": "study"})
        )
        if parents:
            params = parents[0].data.params
            metric, direction = params.get("sweep.metric", "test/error"), params.get("sweep.direction", "minimize")
            order = "ASC" if direction == "minimize" else "DESC"
            trials = tracking.where(tags={"zipnet.study": name, "zipnet.role": "trial", "zipnet.status": "finished"})
            runs = client.search_runs(
                [exp.experiment_id], filter_string=trials, order_by=[f"metrics.`{metric}` {order}"], max_results=1
            )
            if not runs:
                raise ReproduceError(f"study {name!r} has no finished trial")
            return runs[0].info.run_id
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise ReproduceError(f"no study {name!r} in experiment {experiment!r}, and no experiment {name!r}")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=tracking.where(tags={"zipnet.status": "finished"}),
        order_by=["metrics.`test/error` ASC"],
        max_results=1,
    )
    if not runs:
        raise ReproduceError(f"experiment {name!r} has no finished run")
    return runs[0].info.run_id


def reproduce(
    run_id: str | None = None,
    best: str | None = None,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    single: bool = False,
    log=print,
) -> bool:
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking.resolve_uri(tracking_uri))
    if best is not None:
        run_id = find_best(client, best, experiment)
        log(f"best run of {best!r}: {run_id}")
    stored = load_stored(client, run_id)
    overrides = rebuild_overrides(stored.cfg, stored.overrides)
    log("command: " + " ".join(["zipnet-train", *map(shlex.quote, overrides)]))
    replayed = bool(int(tags_of(client, run_id).get(lineage.COUNT, "0") or 0)) and not single
    if replayed:
        log("a PBT member: each stretch between its copies replayed from its stored copy, each copy from its source")
        history, engine = Replay(client, log).member(run_id, stored=stored)
    elif stored.sizes[0] > 1 and not single:
        log(
            f"trained in a population (members per pass: {','.join(map(str, stored.sizes))}; its place: "
            f"{','.join(map(str, stored.positions))}): rerunning it among as many copies of itself"
        )
        history, engine = rerun_population(overrides, stored.sizes, stored.positions)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            history, engine = rerun_command(overrides, Path(tmp) / "run")
    same = same_arithmetic(stored.engine, engine)
    if replayed and same and stored.engine.get("zipnet.backend") != "c":  # torch ops: rounding follows K
        log("trained with torch ops in a population of several, replayed alone: compared within tolerance")
        same = False
    if not same:
        log(
            "another backend or CPU: "
            + "; ".join(
                f"{k.split('.')[-1]} {stored.engine.get(k, '?')} -> {engine.get(k, '?')}"
                for k in sorted(set(stored.engine) | set(engine))
                if stored.engine.get(k) != engine.get(k)
            )
            + f"; comparing losses within rel {TOLERANCE['rel']:g} (misses and errors exactly)"
        )
    rows = compare(stored, history, exact=same)
    width = max(len(k) for k in COMPARED)
    for key, _, detail in rows:
        log(f"  {key:<{width}}  {detail}")
    matched = all(ok for _, ok, _ in rows)
    exact = matched and all(detail.startswith("match") for _, _, detail in rows)
    if exact:
        verdict = "reproduced exactly"
    elif matched:
        backends = f"{stored.engine.get('zipnet.backend', '?')} -> {engine.get('zipnet.backend', '?')}"
        verdict = f"reproduced within tolerance (backend {backends})"
    else:
        verdict = "NOT reproduced"
    log(f"run {run_id}: {verdict}")
    return matched


def reproduce_and_register(
    name: str,
    run_id: str | None = None,
    best: str | None = None,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    single: bool = False,
    log=print,
) -> bool:
    """`reproduce`, then, only if it reproduced, register the run's MLflow model as a new version
    of `name`, tagged with the study, the trial, the run and the reproduction's verdict."""
    from mlflow import MlflowClient

    uri = tracking.resolve_uri(tracking_uri)
    if best is not None:
        run_id = find_best(MlflowClient(tracking_uri=uri), best, experiment)
        log(f"best run of {best!r}: {run_id}")
    lines: list[str] = []
    ok = reproduce(run_id, None, experiment, uri, single, log=lambda line: (lines.append(line), log(line)))
    if not ok:
        log(f"not registered: run {run_id} did not reproduce")
        return False
    tags = MlflowClient(tracking_uri=uri).get_run(run_id).data.tags
    try:
        version = tracking.register(
            uri,
            run_id,
            name,
            {
                "zipnet.study": tags.get("zipnet.study", ""),
                "zipnet.trial": tags.get("zipnet.trial", ""),
                "zipnet.run_id": run_id,
                "zipnet.reproduction": lines[-1].split(": ", 1)[-1],
            },
        )
    except LookupError as err:
        raise ReproduceError(f"cannot register: {err}") from err
    log(f"registered: models:/{name}/{version.version} (run {run_id})")
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="zipnet-reproduce", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("run_id", nargs="?", help="an MLflow run id")
    which.add_argument("--best", metavar="STUDY_OR_EXPERIMENT", help="the best finished run of a study or experiment")
    parser.add_argument("--experiment", default=tracking.DEFAULT_EXPERIMENT, help="where --best looks for the study")
    parser.add_argument(
        "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)"
    )
    parser.add_argument("--single", action="store_true", help="rerun the plain command even for a population member")
    parser.add_argument(
        "--register", metavar="NAME", help="once reproduced, register the run's model in the Model Registry under NAME"
    )
    args = parser.parse_args(argv)
    try:
        if args.register:
            ok = reproduce_and_register(
                args.register, args.run_id, args.best, args.experiment, args.tracking_uri, args.single
            )
        else:
            ok = reproduce(args.run_id, args.best, args.experiment, args.tracking_uri, args.single)
    except ReproduceError as err:
        print(f"zipnet-reproduce: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
