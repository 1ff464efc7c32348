"""zipnet-sweep: run a study file; a thin front end over `zipnet-train -m sweeps=NAME`.

    zipnet-sweep sweeps/paper_open_choices.yaml
    zipnet-sweep sweeps/paper_open_choices.yaml data.n_train=1000 trainer.passes=5 --n-trials 20 --study quick

A study file is a preset of the `sweeps` config group (hydra/sweeper=zipnet_optuna, see
sweeps/), or a file in zipnet-sweep's first schema (`study`, `space`, `overrides`, ...),
which is read as it always was. Either way the same sweeper runs it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from zipnet import config as checks
from zipnet.sweeps.study import SweepError, from_legacy, is_legacy, load_file


def study_file(path: str | Path) -> Path:
    """A study file by path, or a shipped study by name (`paper_open_choices`, or
    `sweeps/paper_open_choices.yaml` where the package has no sweeps/ folder of its own)."""
    from zipnet import resources

    path = Path(path)
    if path.is_file():
        return path
    shipped = resources.sweeps_dir() / f"{path.stem}.yaml"
    return shipped if shipped.is_file() else path


def hydra_args(
    path: str | Path, overrides: list[str], folder: Path, n_trials=None, batch=None, storage=None, study=None
) -> list[str]:
    """The `zipnet-train` arguments that run this study file, its preset written into `folder`."""
    path = study_file(path)
    raw = load_file(path)
    name = f"file_{path.stem}"
    target = folder / "sweeps" / f"{name}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    fixed: list[str] = []
    if is_legacy(raw):
        spec = from_legacy(path, raw)  # checks the file as it always did, naming file and key
        sweeper = {k: v for k, v in raw.items() if k not in ("study", "overrides", "space")}
        sweeper.update(study_name=spec.study_name, params=raw["space"])
        preset = OmegaConf.create(
            {
                "defaults": [{"override /hydra/sweeper": "zipnet_optuna"}, {"override /hydra/launcher": "population"}],
                "hydra": {"sweeper": sweeper},
            }
        )
        target.write_text("# @package _global_\n" + OmegaConf.to_yaml(preset))
        fixed = spec.fixed
    else:
        target.write_text(path.read_text())
    settings = {"n_trials": n_trials, "batch": batch, "storage": storage, "study_name": study}
    extra = [checks.override(f"hydra.sweeper.{k}", v) for k, v in settings.items() if v is not None]
    if (
        study is None
        and not is_legacy(raw)
        and OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.study_name") is None
    ):
        extra.append(checks.override("hydra.sweeper.study_name", path.stem))
    return ["--config-dir", str(folder), "-m", f"sweeps={name}", *fixed, *overrides, *extra]


def run_sweep(path: str | Path, overrides: list[str] = (), log=print, **settings):
    """Run a study in this process, its batches trained as populations (no Hydra launcher):
    a file in the first schema, or a preset of sweeps/ by path. Returns the final tally.
    `settings` (n_trials, batch, storage, study_name, ...) override the study's."""
    from zipnet.sweeps.study import from_sweeper
    from zipnet.sweeps.sweep import Sweep

    path = study_file(path)
    raw = load_file(path)
    with checks.Composer() as composer:
        if is_legacy(raw):
            spec = from_legacy(
                path,
                {**raw, **{("study" if k == "study_name" else k): v for k, v in settings.items() if v is not None}},
            )
            spec.fixed += list(overrides)
        else:
            preset = [f"sweeps={path.stem}"]
            cfg = composer.compose_hydra(preset + list(overrides))
            sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
            sweeper.update({k: v for k, v in settings.items() if v is not None})
            sweeper.setdefault("study_name", path.stem)
            if sweeper.get("study_name") is None:
                sweeper["study_name"] = path.stem
            spec = from_sweeper(sweeper, preset + list(overrides), where=str(path))
        return Sweep(spec, local_launch(composer, log), composer, log=log).run()


def local_launch(composer, log=print):
    """A batch's jobs composed here and trained as populations in this process."""
    from zipnet import runner, train
    from zipnet.errors import ConfigError, DataError
    from zipnet.sweeps import trial as trials

    def launch(jobs: list[list[str]], first: int) -> list[str | None]:
        reasons: list[str | None] = [None] * len(jobs)
        built: dict[int, runner.Job] = {}
        for i, overrides in enumerate(jobs):
            cfg = composer.compose(overrides)
            try:
                built[i] = train.job_for(cfg, overrides, grid=True, num=first + i)
            except (ConfigError, DataError) as err:
                reasons[i] = str(err)
                trials.refuse(cfg, str(err))
        runner.run(list(built.values()), log=log)
        for i, job in built.items():
            if job.error is not None:
                reasons[i] = f"{type(job.error).__name__}: {str(job.error).strip().splitlines()[0]}"
        return reasons

    return launch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="zipnet-sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("study_file", help="a study definition, e.g. sweeps/paper_open_choices.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides for every trial, e.g. trainer.passes=5")
    parser.add_argument("--n-trials", type=int, help="target number of trials (overrides the file)")
    parser.add_argument("--batch", type=int, help="trials trained together as one population (overrides the file)")
    parser.add_argument("--storage", help="Optuna storage URL, or journal:PATH (overrides the file)")
    parser.add_argument("--study", help="study name (overrides the file)")
    args = parser.parse_intermixed_args(argv)
    from zipnet import train

    with tempfile.TemporaryDirectory(prefix="zipnet-sweep-") as tmp:
        try:
            argv_train = hydra_args(
                args.study_file, args.overrides, Path(tmp), args.n_trials, args.batch, args.storage, args.study
            )
        except SweepError as err:
            print(f"zipnet-sweep: error: {err}", file=sys.stderr)
            sys.exit(2)
        sys.argv = ["zipnet-train", *argv_train]
        train.main()


if __name__ == "__main__":
    main()
