"""An Optuna study's own views, logged onto the sweep's parent run: the optimisation history,
the parameter importances (plot and table), slice and parallel-coordinate plots (Optuna's
matplotlib visualisations) and trials.csv. The same storage opens in optuna-dashboard
(`make dashboard`).
"""

from __future__ import annotations

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
    for name, function in VIEWS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # the matplotlib views are marked experimental
            try:
                axes = getattr(views, function)(study)
            except (ValueError, RuntimeError) as err:
                skipped[name] = str(err)
                continue
        figure = np.ravel(axes)[0].figure
        figure.savefig(out / name, dpi=100, bbox_inches="tight")
        plt.close(figure)
    return skipped


def log_study(tracker, parent_run_id: str, study) -> dict[str, str]:
    """Log the study's views and trials.csv onto the parent run; returns the views skipped."""
    with tempfile.TemporaryDirectory() as tmp:
        skipped = write(study, Path(tmp))
        tracker.client.log_artifacts(parent_run_id, tmp)
    return skipped
