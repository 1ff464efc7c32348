"""zipnet-sweep: run a study file; a thin front end over `zipnet-train -m sweeps=NAME`.

    zipnet-sweep sweeps/paper_open_choices.yaml
    zipnet-sweep sweeps/paper_open_choices.yaml data.n_train=1000 trainer.passes=5 --n-trials 20 --study quick
    zipnet-sweep --convert old_study.yaml > sweeps/old_study.yaml   # then: zipnet-train -m sweeps=old_study

A study file is a preset of the `sweeps` config group (hydra/sweeper=zipnet_optuna, see
sweeps/), or a file in zipnet-sweep's first schema (`study`, `space`, `overrides`, ...),
which is still read as it always was, with a warning that names the command converting it.
Either way the same sweeper runs it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

from omegaconf import OmegaConf

from zipnet import config as checks
from zipnet import resources
from zipnet.errors import first_line
from zipnet.sweeps.study import SweepError, from_legacy, is_legacy, load_file


def study_file(path: str | Path) -> Path:
    """A study file by path, or a shipped study by name (`paper_open_choices`, or
    `sweeps/paper_open_choices.yaml` where the package has no sweeps/ folder of its own)."""
    path = Path(path)
    if path.is_file():
        return path
    shipped = resources.sweeps_dir() / f"{path.stem}.yaml"
    return shipped if shipped.is_file() else path


def legacy_warning(path: Path) -> str:
    return (
        f"{path} is in zipnet-sweep's first study-file schema; it still runs, but convert it once to a "
        f"sweeps preset: zipnet-sweep --convert {path} > sweeps/{path.stem}.yaml (then zipnet-train -m "
        f"sweeps={path.stem})"
    )


def preset_text(path: Path, raw: dict, spec, with_overrides: bool = True) -> str:
    """A first-schema study file in the Hydra form: a `sweeps` preset for hydra/sweeper=zipnet_optuna.
    With its `overrides` folded in (a config group chosen in the defaults list, a value set), the
    preset alone runs the study as `zipnet-train -m sweeps=NAME`."""
    sweeper = {k: v for k, v in raw.items() if k not in ("study", "overrides", "space")}
    sweeper.update(study_name=spec.study_name, params=raw["space"])
    defaults: list = [{"override /hydra/sweeper": "zipnet_optuna"}, {"override /hydra/launcher": "population"}]
    values = OmegaConf.create({})
    for item in spec.fixed if with_overrides else []:
        key, value = item.split("=", 1)
        if "." not in key and (resources.conf_dir() / key).is_dir():  # a config group: chosen in the defaults
            defaults.append({f"override /{key}": value})
        else:
            values = OmegaConf.merge(values, OmegaConf.from_dotlist([item]))
    preset = OmegaConf.merge({"defaults": defaults}, values, {"hydra": {"sweeper": sweeper}})
    header = f"# @package _global_\n# zipnet-train -m sweeps={path.stem}  (converted from {path.name})\n"
    return header + OmegaConf.to_yaml(preset)


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
        target.write_text(preset_text(path, raw, spec, with_overrides=False))
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
            warnings.warn(legacy_warning(path), FutureWarning, stacklevel=2)
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
    from zipnet import runner
    from zipnet.cli import train
    from zipnet.errors import ConfigError, DataError
    from zipnet.sweeps import trial as trials

    def launch(jobs: list[list[str]], first: int, refill=None) -> list[str | None]:
        """`refill` (refill: true): free lanes -> more jobs' overrides; their reasons follow the batch's."""
        reasons: list[str | None] = []
        built: dict[int, runner.Job] = {}

        def build(overrides: list[str]) -> runner.Job | None:
            i = len(reasons)
            reasons.append(None)
            cfg = composer.compose(overrides)
            try:
                built[i] = train.job_for(cfg, overrides, grid=True, num=first + i)
            except (ConfigError, DataError) as err:
                reasons[i] = str(err)
                trials.refuse(cfg, str(err))
            return built.get(i)

        for overrides in jobs:
            build(overrides)

        def more(free: int) -> list[runner.Job]:
            return [job for job in map(build, refill(free)) if job is not None]

        runner.run(list(built.values()), log=log, more=more if refill is not None else None)
        for i, job in built.items():
            if job.error is not None:
                reasons[i] = f"{type(job.error).__name__}: {first_line(job.error)}"
        return reasons

    return launch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="zipnet-sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("study_file", help="a study definition, e.g. sweeps/paper_open_choices.yaml")
    parser.add_argument(
        "--convert", action="store_true", help="print a first-schema study file as a sweeps preset, and run nothing"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides for every trial, e.g. trainer.passes=5")
    parser.add_argument("--n-trials", type=int, help="target number of trials (overrides the file)")
    parser.add_argument("--batch", type=int, help="trials trained together as one population (overrides the file)")
    parser.add_argument(
        "--storage",
        help="Optuna storage URL, journal:PATH, or grpc://HOST:PORT (a zipnet-storage-proxy; overrides the file)",
    )
    parser.add_argument("--study", help="study name (overrides the file)")
    args = parser.parse_intermixed_args(argv)
    from zipnet.cli import train

    try:
        path = study_file(args.study_file)
        raw = load_file(path)
        if args.convert:
            if not is_legacy(raw):
                raise SweepError(f"{path}: is a sweeps preset already; run it with zipnet-train -m sweeps={path.stem}")
            print(preset_text(path, raw, from_legacy(path, raw)), end="")
            return
    except SweepError as err:
        print(f"zipnet-sweep: error: {err}", file=sys.stderr)
        sys.exit(2)
    if is_legacy(raw):
        print(f"zipnet-sweep: warning: {legacy_warning(path)}", file=sys.stderr)

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
