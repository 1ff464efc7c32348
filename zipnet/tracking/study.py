"""An Optuna study's own views, logged onto the sweep's parent run: the optimisation history,
the parameter importances (plot and table), slice and parallel-coordinate plots (Optuna's
matplotlib visualisations) and trials.csv. The same storage opens in optuna-dashboard
(`make dashboard`).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

VIEWS = {  # artifact -> optuna.visualization.matplotlib function
    "optimization_history.png": "plot_optimization_history",
    "param_importances.png": "plot_param_importances",
    "slice.png": "plot_slice",
    "parallel_coordinate.png": "plot_parallel_coordinate",
}


def importances(study) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA) over the study's complete trials."""
    import optuna

    return dict(optuna.importance.get_param_importances(study))


def write(study, out: Path) -> dict[str, str]:
    """trials.csv, param_importances.csv and the VIEWS into `out`; returns the views that
    could not be drawn (too few complete trials, one parameter) with the reason."""
    import numpy as np
    from matplotlib import pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as views

    study.trials_dataframe().to_csv(out / "trials.csv", index=False)
    skipped = {}
    try:
        table = importances(study)
        lines = ["param,importance", *(f"{name},{value!r}" for name, value in table.items())]
        (out / "param_importances.csv").write_text("\n".join(lines) + "\n")
    except (ValueError, RuntimeError) as err:
        skipped["param_importances.csv"] = str(err)
    band = _useful_band(study)
    # a categorical axis of numbers-as-text makes matplotlib log a line per panel, which Hydra prints
    category = logging.getLogger("matplotlib.category")
    level, category.level = category.level, logging.WARNING
    try:
        for name, function in VIEWS.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)  # the matplotlib views are marked experimental
                try:
                    axes = getattr(views, function)(study)
                except (ValueError, RuntimeError) as err:
                    skipped[name] = str(err)
                    continue
            panels = list(np.ravel(axes))
            if name in ("optimization_history.png", "slice.png"):
                _readable(panels, band)
            figure = panels[0].figure
            figure.savefig(out / name, dpi=100, bbox_inches="tight")
            plt.close(figure)
    finally:
        category.setLevel(level)
    return skipped


def _useful_band(study) -> tuple[float, float] | None:
    """The objective's range that holds the better 80% of complete trials, with a margin: a few
    diverged trials at 80-90% error would otherwise squeeze every useful one into a line."""
    import numpy as np
    from optuna.trial import TrialState

    if len(study.directions) != 1:
        return None
    values = np.array([t.value for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.value is not None])
    values = values[np.isfinite(values)]
    if len(values) < 5:
        return None
    minimize = study.direction.name == "MINIMIZE"
    best, edge = (values.min(), np.quantile(values, 0.8)) if minimize else (values.max(), np.quantile(values, 0.2))
    margin = 0.1 * abs(edge - best) or 0.05 * abs(best) or 1.0
    lo, hi = (best - margin, edge + margin) if minimize else (edge - margin, best + margin)
    return (lo, hi) if values.min() < lo or values.max() > hi else None


def _readable(panels, band: tuple[float, float] | None) -> None:
    """The objective axis held to `band` (said in its label), and category labels that do not
    run into each other."""
    from matplotlib.category import UnitData

    for ax in panels:
        if band is not None:
            ax.set_ylim(*band)
            if ax.get_ylabel():
                ax.set_ylabel(f"{ax.get_ylabel()} (worst 20% off the axis)")
        if isinstance(ax.xaxis.get_units(), UnitData):  # a categorical parameter's panel
            for label in ax.get_xticklabels():
                label.set_rotation(30)
                label.set_horizontalalignment("right")


def log_study(tracker, parent_run_id: str, study) -> dict[str, str]:
    """Log the study's views and trials.csv onto the parent run; returns the views skipped."""
    with tempfile.TemporaryDirectory() as tmp:
        skipped = write(study, Path(tmp))
        try:
            tracker.client.log_artifacts(parent_run_id, tmp)
        except OSError as err:  # a full or read-only disk stops the worker in one line
            if not tracker.stopped_by(parent_run_id, err):
                raise
    return skipped
