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
