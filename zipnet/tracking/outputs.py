"""The files a finished run leaves in its artifacts: weights.pt, the learning curve, the
misclassified test digits (a grid PNG, and their indices in test_misses.json), the confusion
matrix (PNG and CSV) and the rejection curve (PNG and CSV). Drawn by the tracker's background
worker, off the training path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MISSES = "test_misses.json"  # what zipnet-report --paired reads for McNemar's test


def labels_digest(labels) -> str:
    """sha256 of the test labels in order (int64): two runs with equal digests were tested on
    the same digits in the same order, so their misses can be compared digit by digit."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def misses_json(labels, predicted, path: Path) -> Path:
    """The test digits a run gets wrong, by index into its test split, with the split's size
    and labels' digest: a few kilobytes, enough for McNemar's test between two runs."""
    import numpy as np

    wrong = np.flatnonzero(np.asarray(predicted) != np.asarray(labels))
    path.write_text(
        json.dumps({"n_test": len(labels), "labels_sha256": labels_digest(labels), "misses": wrong.tolist()})
    )
    return path


def write(
    out: Path, result, digits=None, figures: bool = True, weights: bool = True, tables: bool = True, title: str = ""
) -> float | None:
    """Write the run's files into `out` (figures: PNGs; tables: the confusion and rejection CSVs);
    returns the % of test digits to reject for 1% error on the rest (the paper's 12.1%), or
    None without finite test outputs."""
    import numpy as np
    import torch

    from zipnet import figures as draw
    from zipnet import rejection

    if weights and result.params is not None:
        torch.save({k: v.detach().cpu().contiguous() for k, v in result.params.items()}, out / "weights.pt")
    if figures and result.history:
        draw.learning_curve(result.history, out / "learning_curve.png", title=title)
    outputs = result.test_outputs
    if digits is None or outputs is None or not bool(torch.isfinite(outputs).all()):
        return None
    labels = digits.test_y.cpu().numpy().astype(np.int64)
    predicted = outputs.argmax(dim=1).cpu().numpy().astype(np.int64)
    matrix = draw.confusion(labels, predicted)
    reject_rate, error = rejection.curve(outputs.cpu().numpy(), labels)
    if tables:
        draw.confusion_csv(matrix, out / "confusion.csv")
        draw.rejection_csv(reject_rate, error, out / "rejection.csv")
        misses_json(labels, predicted, out / MISSES)
    if figures:
        draw.confusion_png(matrix, out / "confusion.png")
        draw.misclassified_grid(digits.test_x.cpu().numpy(), labels, predicted, out / "misclassified.png")
        draw.rejection_curve(reject_rate, error, out / "rejection_curve.png", title=title)
    return rejection.rate_on_curve(reject_rate, error, 1.0)


def warm() -> None:
    """Draw one small learning curve into memory (matplotlib's first figure in a process loads its
    fonts, a few tenths of a second), and build the other figures' axes and texts for this thread,
    as a run's end would (the misclassified grid's for 10 rows: a run with 91 test misses or more)."""
    import io

    from zipnet import figures as draw

    row = {"pass": 1, "train/error": 1.0, "test/error": 2.0}
    draw.learning_curve([row, {**row, "pass": 2}], io.BytesIO(), title="warm")
    draw.warm_templates()
