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


def hydra_args(path: str | Path, overrides: list[str], folder: Path, n_trials=None, batch=None, storage=None,
               study=None) -> list[str]:
    """The `zipnet-train` arguments that run this study file, its preset written into `folder`."""
    path = Path(path)
    raw = load_file(path)
    name = f"file_{path.stem}"
    target = folder / "sweeps" / f"{name}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    fixed: list[str] = []
    if is_legacy(raw):
        spec = from_legacy(path, raw)  # checks the file as it always did, naming file and key
        sweeper = {k: v for k, v in raw.items() if k not in ("study", "overrides", "space")}
        sweeper.update(study_name=spec.study_name, params=raw["space"])
        preset = OmegaConf.create({"defaults": [{"override /hydra/sweeper": "zipnet_optuna"},
                                                {"override /hydra/launcher": "population"}],
                                   "hydra": {"sweeper": sweeper}})
        target.write_text("# @package _global_\n" + OmegaConf.to_yaml(preset))
        fixed = spec.fixed
    else:
        target.write_text(path.read_text())
    settings = {"n_trials": n_trials, "batch": batch, "storage": storage, "study_name": study}
    extra = [checks.override(f"hydra.sweeper.{k}", v) for k, v in settings.items() if v is not None]
    if study is None and not is_legacy(raw) and OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.study_name") is None:
        extra.append(checks.override("hydra.sweeper.study_name", path.stem))
    return ["--config-dir", str(folder), "-m", f"sweeps={name}", *fixed, *overrides, *extra]


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
            argv_train = hydra_args(args.study_file, args.overrides, Path(tmp), args.n_trials, args.batch,
                                    args.storage, args.study)
        except SweepError as err:
            print(f"zipnet-sweep: error: {err}", file=sys.stderr)
            sys.exit(2)
        sys.argv = ["zipnet-train", *argv_train]
        train.main()


if __name__ == "__main__":
    main()
