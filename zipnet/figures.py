"""The pictures a run leaves behind: learning curve, misclassified digits, confusion matrix,
rejection curve; and a report's effect plot per factor.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global figure
state), small and fast, because a sweep draws them for every trial.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from zipnet import rejection


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def learning_curve(history: list[dict], path: Path, title: str = "") -> Path:
    """Train and test error (%) per pass, the paper's figure 3 plotted the same way."""
    fig = _figure(5.0, 3.5)
    ax = fig.add_subplot()
    passes = [row["pass"] for row in history]
    for split, style in (("train", "o-"), ("test", "s-")):
        values = [row[f"{split}/error"] for row in history]
        ax.plot(passes, values, style, markersize=3, label=f"{split} error")
    ax.set_xlabel("pass")
    ax.set_ylabel("error (%)")
    if all(row[f"{s}/error"] > 0 for row in history for s in ("train", "test")):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.9)  # fixed: tight_layout costs a draw
    fig.savefig(path)
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


def confusion_png(matrix: np.ndarray, path: Path) -> Path:
    fig = _figure(4.2, 3.8)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    top = matrix.max() or 1
    for i in range(10):
        for j in range(10):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if matrix[i, j] > top / 2 else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test: {int(matrix.sum() - np.trace(matrix))} misses of {int(matrix.sum())}", fontsize=9)
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.12, top=0.92)
    fig.savefig(path)
    return path


def rejection_csv(reject_rate: np.ndarray, error: np.ndarray, path: Path) -> Path:
    """The curve of zipnet.rejection, one row per rejection count; floats written exactly."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["reject_rate", "error"])
        for rate, err in zip(np.asarray(reject_rate).tolist(), np.asarray(error).tolist()):
            out.writerow([repr(rate), repr(err)])
    return path


def rejection_curve(reject_rate: np.ndarray, error: np.ndarray, path: Path, title: str = "",
                    mark_error: float | None = 1.0) -> Path:
    """Test error (%) on the accepted digits against the rejection rate (%), with the rate
    that reaches `mark_error` % marked (and, at 1%, the paper's 12.1%).

    The view stops where half the test set is rejected (further if the mark lies beyond):
    past that the few digits left make the error noisy and say nothing about the paper's point.
    """
    reject_rate, error = np.asarray(reject_rate, dtype=np.float64), np.asarray(error, dtype=np.float64)
    fig = _figure(5.0, 3.5)
    ax = fig.add_subplot()
    ax.plot(reject_rate, error, "-", label="test error on the accepted digits")
    right = 50.0
    if mark_error is not None:
        rate = rejection.rate_on_curve(reject_rate, error, mark_error)
        right = max(right, rate + 10.0)
        ax.axhline(mark_error, linestyle=":", color="gray", linewidth=1)
        ax.plot([rate], [mark_error], "o", label=f"{rate:.1f}% rejected for {mark_error:g}% error")
        if mark_error == 1.0:
            ax.plot([rejection.PAPER_REJECT_AT_1PCT], [1.0], "*", markersize=9,
                    label=f"paper: {rejection.PAPER_REJECT_AT_1PCT}% for 1%")
    right = min(right, 100.0)
    shown = error[reject_rate <= right]
    ax.set_xlim(0, right)
    ax.set_ylim(0, max(float(shown.max()) if len(shown) else 0.0, 1.5 * (mark_error or 0.0), 0.1) * 1.08)
    ax.set_xlabel("rejected (%), smallest top-two margin first")
    ax.set_ylabel("test error on the rest (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.9)  # fixed, as learning_curve
    fig.savefig(path)
    return path


def misclassified_grid(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, path: Path,
                       limit: int = 100) -> Path:
    """The misclassified test digits (up to `limit`), each captioned `true->predicted`.

    One mosaic image plus one caption per cell keeps this to a single Axes.
    """
    wrong = np.flatnonzero(labels != predicted)[:limit]
    cols = 10
    rows = max(1, -(-len(wrong) // cols))
    cell = 20  # 16 pixels and a 4-pixel gutter for the caption
    mosaic = np.full((rows * cell, cols * cell), np.nan, dtype=np.float32)
    for n, index in enumerate(wrong):
        r, c = divmod(n, cols)
        mosaic[r * cell + 4 : r * cell + 20, c * cell + 2 : c * cell + 18] = images[index].reshape(16, 16)
    fig = _figure(5.0, 0.55 * rows + 0.4)
    ax = fig.add_axes((0, 0, 1, 1 - 0.3 / (0.55 * rows + 0.4)))
    ax.imshow(mosaic, cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    for n, index in enumerate(wrong):
        r, c = divmod(n, cols)
        ax.text(c * cell + 10, r * cell + 2, f"{labels[index]}->{predicted[index]}", ha="center", va="center",
                fontsize=6, color="crimson")
    ax.set_axis_off()
    fig.suptitle(f"misclassified test digits (true->predicted), {len(wrong)} shown", fontsize=8, y=0.995)
    fig.savefig(path)
    return path


def effect_plot(factor: str, levels: list[str], values: list[np.ndarray], metric: str, path: Path) -> Path:
    """The final `metric` per level of a factor: a box per level (median, quartiles, whiskers
    to 1.5 IQR, outliers as dots) with the mean as a diamond and the run count under each level.
    A log scale where the values span more than a decade, so that stuck runs do not flatten the rest."""
    fig = _figure(max(4.0, 1.0 + 0.8 * len(levels)), 3.5)
    ax = fig.add_subplot()
    positions = np.arange(1, len(levels) + 1)
    ax.boxplot(values, positions=positions, widths=0.5, showmeans=True,
               meanprops={"marker": "D", "markersize": 4, "markerfacecolor": "white"})
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
