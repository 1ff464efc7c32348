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

from zipnet import paper, tracking

COMPARED = tuple(m for m in tracking.METRICS if m not in ("seconds", paper.GAP))  # the gap follows from the rest


class ReproduceError(RuntimeError):
    pass


def _training_keys(flat: dict) -> dict:
    return {k: v for k, v in flat.items() if not k.startswith(tracking.NOT_TRAINING)}


def rebuild_overrides(stored_cfg: dict, stored_overrides: list[str]) -> list[str]:
    """The zipnet-train overrides that compose to `stored_cfg` with today's conf/."""
    from zipnet.sweep import Composer, override_value

    overrides = [o for o in stored_overrides if not o.lstrip("+~").startswith(("tracking.", "hydra.", "trainer.progress"))]
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
        set_keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
        for key in sorted(want):
            if have[key] != want[key] or type(have[key]) is not type(want[key]):
                if key in set_keys:
                    overrides = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
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
    return Stored(run_id, cfg, overrides, history, tags.get("zipnet.status", "finished"), sizes, positions)


def rerun_command(overrides: list[str], workdir: Path) -> list[dict]:
    """`zipnet-train OVERRIDES` in a fresh process, untracked; its per-pass history."""
    cmd = [sys.executable, "-m", "zipnet.train", *overrides, "tracking.enabled=false", "trainer.progress=off",
           f"hydra.run.dir={workdir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReproduceError(f"the rerun failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads((workdir / "metrics.json").read_text())["history"]


def rerun_population(overrides: list[str], sizes: list[int], positions: list[int]) -> list[dict]:
    """The member retrained among copies of itself: as many per pass as trained together
    then, with the member at the same place.

    A member's arithmetic does not depend on its partners' values, only on how many there
    are (the engine picks its path and kernel block from K) and on its place (alignment in
    the batched evaluation), so copies stand in for the partners.
    """
    import dataclasses

    import torch

    from zipnet import config as checks
    from zipnet.data import load_digits
    from zipnet.engine import train
    from zipnet.sweep import Composer

    with Composer() as composer:
        cfg = composer.compose(overrides)
    member, opts = checks.member(cfg), checks.trainer(cfg)
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    copies = [dataclasses.replace(member) for _ in range(sizes[0])]
    index = {id(m): k for k, m in enumerate(copies)}
    target = positions[0]

    def follow(pass_number: int, live) -> set[int]:
        """Drop copies around the target so the next pass matches the original's size and place."""
        if pass_number >= len(sizes):
            return set()
        alive = sorted(index[id(r.member)] for r in live)
        if target not in alive:
            return set()
        at = alive.index(target)
        before, after = alive[:at], alive[at + 1:]
        want_before = positions[pass_number]
        want_after = sizes[pass_number] - want_before - 1
        return set(before[: len(before) - want_before]) | set(after[max(0, want_after):])

    results = train(copies, load_digits(cfg.data), log=None, on_pass=follow, **checks.engine_options(opts))
    return results[target].history


def compare(stored: Stored, history: list[dict]) -> list[tuple[str, bool, str]]:
    """(metric, matches, detail) for every compared metric, pass by pass, exactly."""
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
        (step, a), (_, b) = next((o, n) for o, n in zip(old, new) if o != n)
        out.append((key, False, f"MISMATCH from pass {step}: stored {a!r}, rerun {b!r}"))
    return out


def find_best(client, name: str, experiment: str) -> str:
    """The best finished run of study `name`, else of experiment `name`."""
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        parents = client.search_runs([exp.experiment_id],
                                     filter_string=tracking.where(tags={"zipnet.study": name, "zipnet.role": "study"}))
        if parents:
            params = parents[0].data.params
            metric, direction = params.get("sweep.metric", "test/error"), params.get("sweep.direction", "minimize")
            order = "ASC" if direction == "minimize" else "DESC"
            trials = tracking.where(tags={"zipnet.study": name, "zipnet.role": "trial", "zipnet.status": "finished"})
            runs = client.search_runs([exp.experiment_id], filter_string=trials,
                                      order_by=[f"metrics.`{metric}` {order}"], max_results=1)
            if not runs:
                raise ReproduceError(f"study {name!r} has no finished trial")
            return runs[0].info.run_id
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise ReproduceError(f"no study {name!r} in experiment {experiment!r}, and no experiment {name!r}")
    runs = client.search_runs([exp.experiment_id], filter_string=tracking.where(tags={"zipnet.status": "finished"}),
                              order_by=["metrics.`test/error` ASC"], max_results=1)
    if not runs:
        raise ReproduceError(f"experiment {name!r} has no finished run")
    return runs[0].info.run_id


def reproduce(run_id: str | None = None, best: str | None = None, experiment: str = tracking.DEFAULT_EXPERIMENT,
              tracking_uri: str | None = None, single: bool = False, log=print) -> bool:
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
    if stored.sizes[0] > 1 and not single:
        log(f"trained in a population (members per pass: {','.join(map(str, stored.sizes))}; its place: "
            f"{','.join(map(str, stored.positions))}): rerunning it among as many copies of itself")
        history = rerun_population(overrides, stored.sizes, stored.positions)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            history = rerun_command(overrides, Path(tmp) / "run")
    rows = compare(stored, history)
    width = max(len(k) for k in COMPARED)
    for key, ok, detail in rows:
        log(f"  {key:<{width}}  {detail}")
    matched = all(ok for _, ok, _ in rows)
    log(f"run {run_id}: " + ("reproduced exactly" if matched else "NOT reproduced"))
    return matched


def reproduce_and_register(name: str, run_id: str | None = None, best: str | None = None,
                           experiment: str = tracking.DEFAULT_EXPERIMENT, tracking_uri: str | None = None,
                           single: bool = False, log=print) -> bool:
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
        version = tracking.register(uri, run_id, name, {
            "zipnet.study": tags.get("zipnet.study", ""), "zipnet.trial": tags.get("zipnet.trial", ""),
            "zipnet.run_id": run_id, "zipnet.reproduction": lines[-1].split(": ", 1)[-1]})
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
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--single", action="store_true", help="rerun the plain command even for a population member")
    parser.add_argument("--register", metavar="NAME",
                        help="once reproduced, register the run's model in the Model Registry under NAME")
    args = parser.parse_args(argv)
    try:
        if args.register:
            ok = reproduce_and_register(args.register, args.run_id, args.best, args.experiment, args.tracking_uri,
                                        args.single)
        else:
            ok = reproduce(args.run_id, args.best, args.experiment, args.tracking_uri, args.single)
    except ReproduceError as err:
        print(f"zipnet-reproduce: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
