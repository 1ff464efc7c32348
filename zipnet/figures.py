"""The pictures a run leaves behind: learning curve, misclassified digits, confusion matrix,
rejection curve; and a report's effect plot per factor.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global figure
state), small and fast, because a sweep draws them for every trial: each thread builds a
figure's axes, ticks and texts once and redraws them with the next run's data (building them
costs about as much as drawing). A redrawn figure is pixel for pixel the one drawn afresh.
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from zipnet import rejection

_TEMPLATES = threading.local()  # per thread: key -> (figure, its parts)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _template(key: tuple, build: Callable[[], dict]) -> dict:
    """The figure `build()` makes, made once per thread and key."""
    cache = _TEMPLATES.__dict__.setdefault("figures", {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _learning_template() -> dict:
    fig = _figure(5.0, 3.5)
    ax = fig.add_subplot()
    lines = {
        split: ax.plot([], [], style, markersize=3, label=f"{split} error")[0]
        for split, style in (("train", "o-"), ("test", "s-"))
    }
    ax.set_xlabel("pass")
    ax.set_ylabel("error (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.14, top=0.86)  # fixed: tight_layout costs a draw
    return {"fig": fig, "ax": ax, "lines": lines, "title": ax.set_title("", fontsize=8)}


def warm_templates(rows: int = 10) -> None:
    """The confusion matrix's, the rejection curve's and a `rows`-row misclassified grid's figures,
    built for this thread ahead of their first use (a redrawn figure is the one drawn afresh)."""
    _template(("confusion",), _confusion_template)
    _template(("rejection_curve", 1.0), lambda: _rejection_template(1.0))
    _template(("misclassified", rows), lambda: _misclassified_template(rows))


def _percent(value: float, _position=None) -> str:
    return f"{value:g}%"


def learning_curve(history: list[dict], path: Path, title: str = "") -> Path:
    """Train and test error (%) per pass, the paper's figure 3 plotted the same way."""
    t = _template(("learning_curve",), _learning_template)
    ax = t["ax"]
    passes = [row["pass"] for row in history]
    for split, line in t["lines"].items():
        line.set_data(passes, [row[f"{split}/error"] for row in history])
    log = all(row[f"{s}/error"] > 0 for row in history for s in ("train", "test"))
    ax.set_yscale("log" if log else "linear")
    if log:  # ticks at 1, 2, 5 of each decade, written as plain percentages (not 6x10^0)
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(_percent))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        from matplotlib.ticker import FuncFormatter

        ax.yaxis.set_major_formatter(FuncFormatter(_percent))
    ax.grid(True, alpha=0.3)  # a new scale brings new gridlines
    ax.relim()
    ax.autoscale_view()
    t["title"].set_text(title)
    t["fig"].savefig(path)
    return path


def confusion(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(10, 10) counts: row = true digit, column = predicted digit."""
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def confusion_csv(matrix: np.ndarray, path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["true\\predicted", *range(10)])
        for digit, row in enumerate(matrix):
            out.writerow([digit, *row.tolist()])
    return path


def _confusion_template() -> dict:
    fig = _figure(4.2, 3.8)
    ax = fig.add_subplot()
    image = ax.imshow(np.zeros((10, 10)), cmap="Blues")
    texts = [
        [ax.text(j, i, "", ha="center", va="center", fontsize=6, visible=False) for j in range(10)] for i in range(10)
    ]
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.12, top=0.92)
    return {"fig": fig, "image": image, "texts": texts, "title": ax.set_title("", fontsize=9)}


def confusion_png(matrix: np.ndarray, path: Path) -> Path:
    t = _template(("confusion",), _confusion_template)
    t["image"].set_data(matrix)
    t["image"].set_clim(matrix.min(), matrix.max())  # as imshow scales fresh data
    top = matrix.max() or 1
    for i in range(10):
        for j in range(10):
            text, count = t["texts"][i][j], int(matrix[i, j])
            text.set_visible(count != 0)
            text.set_text(str(count))
            text.set_color("white" if count > top / 2 else "black")
    t["title"].set_text(f"test: {int(matrix.sum() - np.trace(matrix))} misses of {int(matrix.sum())}")
    t["fig"].savefig(path)
    return path


def rejection_csv(reject_rate: np.ndarray, error: np.ndarray, path: Path) -> Path:
    """The curve of zipnet.rejection, one row per rejection count; floats written exactly."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["reject_rate", "error"])
        for rate, err in zip(np.asarray(reject_rate).tolist(), np.asarray(error).tolist()):
            out.writerow([repr(rate), repr(err)])
    return path


def _rejection_template(mark_error: float | None) -> dict:
    fig = _figure(5.0, 3.5)
    ax = fig.add_subplot()
    curve = ax.plot([], [], "-", label="test error on the accepted digits")[0]
    mark = paper = None
    if mark_error is not None:
        ax.axhline(mark_error, linestyle=":", color="gray", linewidth=1)
        mark = ax.plot([], [], "o")[0]
        if mark_error == 1.0:
            paper = ax.plot(
                [rejection.PAPER_REJECT_AT_1PCT],
                [1.0],
                "*",
                markersize=9,
                label=f"paper: {rejection.PAPER_REJECT_AT_1PCT}% for 1%",
            )[0]
    ax.set_xlabel("rejected (%), smallest top-two margin first")
    ax.set_ylabel("test error on the rest (%)")
    ax.grid(True, alpha=0.3)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.9)  # fixed, as learning_curve
    return {"fig": fig, "ax": ax, "curve": curve, "mark": mark, "paper": paper, "title": ax.set_title("", fontsize=9)}


def rejection_curve(
    reject_rate: np.ndarray, error: np.ndarray, path: Path, title: str = "", mark_error: float | None = 1.0
) -> Path:
    """Test error (%) on the accepted digits against the rejection rate (%), with the rate
    that reaches `mark_error` % marked (and, at 1%, the paper's 12.1%).

    The view stops where half the test set is rejected (further if the mark lies beyond):
    past that the few digits left make the error noisy and say nothing about the paper's point.
    """
    reject_rate, error = np.asarray(reject_rate, dtype=np.float64), np.asarray(error, dtype=np.float64)
    t = _template(("rejection_curve", mark_error), lambda: _rejection_template(mark_error))
    ax = t["ax"]
    t["curve"].set_data(reject_rate, error)
    right = 50.0
    if mark_error is not None:
        rate = rejection.rate_on_curve(reject_rate, error, mark_error)
        right = max(right, rate + 10.0)
        t["mark"].set_data([rate], [mark_error])
        t["mark"].set_label(f"{rate:.1f}% rejected for {mark_error:g}% error")
    right = min(right, 100.0)
    shown = error[reject_rate <= right]
    ax.set_xlim(0, right)
    ax.set_ylim(0, max(float(shown.max()) if len(shown) else 0.0, 1.5 * (mark_error or 0.0), 0.1) * 1.08)
    ax.legend(fontsize=8)  # its labels hold this run's rate
    t["title"].set_text(title)
    t["fig"].savefig(path)
    return path


CELL = 20  # a misclassified digit's cell: 16 pixels and a 4-pixel gutter for the caption
COLUMNS = 10


def _misclassified_template(rows: int) -> dict:
    fig = _figure(5.0, 0.55 * rows + 0.4)
    ax = fig.add_axes((0, 0, 1, 1 - 0.3 / (0.55 * rows + 0.4)))
    image = ax.imshow(
        np.full((rows * CELL, COLUMNS * CELL), np.nan, dtype=np.float32),
        cmap="gray_r",
        vmin=-1,
        vmax=1,
        interpolation="nearest",
    )
    captions = []
    for n in range(rows * COLUMNS):
        r, c = divmod(n, COLUMNS)
        captions.append(
            ax.text(
                c * CELL + 10, r * CELL + 2, "", ha="center", va="center", fontsize=6, color="crimson", visible=False
            )
        )
    ax.set_axis_off()
    return {"fig": fig, "image": image, "captions": captions, "title": fig.suptitle("", fontsize=8, y=0.995)}


def misclassified_grid(
    images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, path: Path, limit: int = 100
) -> Path:
    """The misclassified test digits (up to `limit`), each captioned `true->predicted`.

    One mosaic image plus one caption per cell keeps this to a single Axes.
    """
    wrong = np.flatnonzero(labels != predicted)[:limit]
    rows = max(1, -(-len(wrong) // COLUMNS))
    t = _template(("misclassified", rows), lambda: _misclassified_template(rows))
    mosaic = np.full((rows * CELL, COLUMNS * CELL), np.nan, dtype=np.float32)
    for n, index in enumerate(wrong):
        r, c = divmod(n, COLUMNS)
        mosaic[r * CELL + 4 : r * CELL + 20, c * CELL + 2 : c * CELL + 18] = images[index].reshape(16, 16)
    t["image"].set_data(mosaic)
    for n, caption in enumerate(t["captions"]):
        caption.set_visible(n < len(wrong))
        if n < len(wrong):
            caption.set_text(f"{labels[wrong[n]]}->{predicted[wrong[n]]}")
    t["title"].set_text(f"misclassified test digits (true->predicted), {len(wrong)} shown")
    t["fig"].savefig(path)
    return path


def effect_plot(factor: str, levels: list[str], values: list[np.ndarray], metric: str, path: Path) -> Path:
    """The final `metric` per level of a factor: a box per level (median, quartiles, whiskers
    to 1.5 IQR, outliers as dots) with the mean as a diamond and the run count under each level.
    A log scale where the values span more than a decade, so that stuck runs do not flatten the rest."""
    fig = _figure(max(4.0, 1.0 + 0.8 * len(levels)), 3.5)
    ax = fig.add_subplot()
    positions = np.arange(1, len(levels) + 1)
    ax.boxplot(
        values,
        positions=positions,
        widths=0.5,
        showmeans=True,
        meanprops={"marker": "D", "markersize": 4, "markerfacecolor": "white"},
    )
    ax.set_xticks(positions, [f"{name}\n({len(v)} runs)" for name, v in zip(levels, values)], fontsize=8)
    every = np.concatenate(values) if values else np.zeros(0)
    if len(every) and every.min() > 0 and every.max() / every.min() > 10:
        ax.set_yscale("log")
    ax.set_xlabel(factor)
    ax.set_ylabel(f"final {metric}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"{metric} by {factor}: median, quartiles; diamond = mean", fontsize=9)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.2, top=0.9)
    fig.savefig(path)
    return path
