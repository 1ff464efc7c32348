"""The paper's published results at 23 passes, and how far a run's pass is from them.

"After 23 passes, the mean squared error was 2.5e-3 and 1.8e-2 on the training and test
set respectively ... the percentage of misclassified patterns was 0.14% on the training set
(10 mistakes) and 5.0% on the test set (102 mistakes)."
"""

from __future__ import annotations

import math

FIGURES = {"train/error": 0.14, "train/loss": 2.5e-3, "test/error": 5.0, "test/loss": 1.8e-2}
GAP = "paper/gap"


def gap(row: dict[str, float], n_train: int, n_test: int) -> float:
    """The mean over the four figures of |ln(run / paper)|: 0 on the paper, ln 2 when each is 2x off.

    An error of 0 misses counts as half a miss, so a perfect pass is a finite distance away.
    """
    floor = {"train/error": 50.0 / n_train, "test/error": 50.0 / n_test}
    total = 0.0
    for key, paper in FIGURES.items():
        value = row[key]
        if not math.isfinite(value):
            return math.inf
        value = max(value, floor.get(key, 0.0))
        if value <= 0:
            return math.inf
        total += abs(math.log(value / paper))
    return total / len(FIGURES)
