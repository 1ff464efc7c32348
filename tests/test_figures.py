"""The run figures reuse their axes within a thread: a redrawn figure must be pixel for pixel the
figure drawn afresh (in a new thread), whatever was drawn before it."""

import io
import threading

import numpy as np
import pytest
from PIL import Image

from zipnet import figures, rejection


def _run(seed: int, n: int = 300, passes: int = 3, perfect_train: bool = False):
    """A synthetic run: a history and (n, 10) test outputs whose accuracy grows with the seed."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    outputs = rng.normal(size=(n, 10)).astype(np.float32)
    outputs[np.arange(n), labels] += 1.0 + seed
    history = [
        {"pass": p, "train/error": 0.0 if perfect_train else 40.0 / p + seed, "test/error": 50.0 / p + seed}
        for p in range(1, passes + 1)
    ]
    images = rng.uniform(-1, 1, (n, 1, 16, 16)).astype(np.float32)
    return history, outputs, labels, images


def _draw(kind: str, run) -> np.ndarray:
    history, outputs, labels, images = run
    predicted = outputs.argmax(axis=1)
    out = io.BytesIO()
    if kind == "learning_curve":
        figures.learning_curve(history, out, title=f"{len(history)} passes")
    elif kind == "confusion":
        figures.confusion_png(figures.confusion(labels, predicted), out)
    elif kind == "misclassified":
        figures.misclassified_grid(images, labels, predicted, out)
    else:
        rates, errors = rejection.curve(outputs, labels)
        figures.rejection_curve(rates, errors, out, title="run", mark_error=1.0 if kind == "rejection" else 2.0)
    return np.asarray(Image.open(io.BytesIO(out.getvalue())))


def _fresh(kind: str, run) -> np.ndarray:
    """Drawn in a thread of its own, so from a figure built for it."""
    got = {}
    thread = threading.Thread(target=lambda: got.setdefault("pixels", _draw(kind, run)))
    thread.start()
    thread.join()
    return got["pixels"]


@pytest.mark.parametrize("kind", ["learning_curve", "confusion", "misclassified", "rejection", "rejection at 2%"])
def test_a_redrawn_figure_equals_the_figure_drawn_afresh(kind):
    runs = [_run(0, passes=2), _run(3, passes=5, perfect_train=True), _run(1, n=120, passes=1), _run(0, passes=2)]
    for run in runs:  # each after whatever the previous run left in the figure
        redrawn, fresh = _draw(kind, run), _fresh(kind, run)
        assert redrawn.shape == fresh.shape and np.array_equal(redrawn, fresh)
    assert not np.array_equal(_draw(kind, runs[0]), _draw(kind, runs[1]))  # the data reaches the picture


@pytest.mark.parametrize("kind", ["confusion", "misclassified", "rejection"])
def test_a_figure_built_ahead_by_warm_templates_draws_as_one_built_at_its_first_use(kind):
    run = _run(0)
    wrong = int((run[1].argmax(axis=1) != run[2]).sum())
    got = {}

    def warmed():
        figures.warm_templates(rows=-(-min(wrong, 100) // figures.COLUMNS))  # the rows this run's grid takes
        got["pixels"] = _draw(kind, run)

    thread = threading.Thread(target=warmed)
    thread.start()
    thread.join()
    assert np.array_equal(got["pixels"], _fresh(kind, run))


def test_a_learning_curve_reads_in_percent_on_either_scale():
    """Error ticks are plain percentages (1%, 2%, 5% on the log scale), never 6x10^0."""
    from matplotlib.ticker import LogLocator

    falling = [{"pass": p, "train/error": 10.0 / p, "test/error": 12.0 / p} for p in range(1, 24)]
    figures.learning_curve(falling, io.BytesIO(), title="one")
    ax = figures._TEMPLATES.figures[("learning_curve",)]["ax"]
    assert ax.get_yscale() == "log" and isinstance(ax.yaxis.get_major_locator(), LogLocator)
    shown = {ax.yaxis.get_major_formatter()(v, 0) for v in (0.5, 1.0, 2.0, 5.0, 10.0)}
    assert shown == {"0.5%", "1%", "2%", "5%", "10%"}
    assert ax.yaxis.get_minor_formatter()(6.0, 0) == ""
    perfect = [{**row, "train/error": 0.0} for row in falling]  # a zero: linear, still in percent
    figures.learning_curve(perfect, io.BytesIO(), title="two")
    assert ax.get_yscale() == "linear" and ax.yaxis.get_major_formatter()(3.0, 0) == "3%"


def test_a_figure_title_names_the_run_and_its_own_overrides():
    from zipnet.tracking.runs import figure_title

    overrides = ["model.init=linear", "tracking.uri=sqlite:///x.db", "trial.number=3", "hydra.job.chdir=false"]
    assert figure_title("study #3", overrides) == "study #3  model.init=linear"
    long = figure_title("study #3", [f"optim.lr_by_pass=[{','.join(['0.01'] * 40)}]"])
    assert len(long.splitlines()) == 2 and long.endswith("...")


def test_study_views_hold_the_useful_band_and_log_no_category_lines(tmp_path, caplog):
    """A few diverged trials do not set the objective axis; numbers-as-text categories draw
    without matplotlib's log line per panel."""
    import logging

    import optuna

    from zipnet.tracking import study as views

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(30):
        trial = study.ask()
        gain = trial.suggest_categorical("model.init_gain", ["2.4", "1.0"])
        study.tell(trial, 85.0 if i % 10 == 0 else 4.0 + i / 10 + (gain == "1.0"))
    lo, hi = views._useful_band(study)
    useful = [t.value for t in study.trials if t.value < 80]
    assert lo < min(useful) and max(useful) - 1 < hi < 80  # the better 80% in view, 85% off it
    with caplog.at_level(logging.INFO):
        assert views.write(study, tmp_path) == {}
    assert not [r for r in caplog.records if r.name.startswith("matplotlib")]
    assert (tmp_path / "slice.png").stat().st_size > 0
