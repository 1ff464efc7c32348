"""Rejection by output margin: how many test digits to set aside for 1% error on the rest.

The paper (section 5) measures the net this way as well as by raw error:

    "In a realistic application, the user usually is interested in the number of
    rejections necessary to reach a given level of accuracy rather than in the raw
    error rate. We measured the percentage of test patterns that must be rejected in
    order to get a 1% error rate on the remaining test patterns. Our main rejection
    criterion was that the difference between the activity levels of the two most
    active units should exceed a given threshold. The percentage rejection was then
    12.1% for 1% classification error on the remaining (nonrejected) test patterns.
    It should be emphasized that the rejection thresholds were obtained using
    performance measures on the test set."

So the margin of a digit is its top output minus its second output, a digit is
rejected when its margin is below the threshold, and the threshold is swept over the
test set itself. Raising the threshold rejects the digits in order of increasing
margin; `curve` lists the error on the accepted rest after each one.

Ties. Digits with equal margins cannot be told apart by any threshold; the paper is
silent on them. Our choice: they are rejected in the order they stand in the test
set (a stable sort on the margin, i.e. by margin and then by index), so the curve
has a point for every rejection count 0..N and the same outputs always give the same
curve. At a count that splits a group of tied margins the point is that of the
threshold plus this tie-break, not of a threshold alone.
"""

from __future__ import annotations

import numpy as np

PAPER_REJECT_AT_1PCT = 12.1  # "The percentage rejection was then 12.1% for 1% classification error"


def margins(outputs: np.ndarray) -> np.ndarray:
    """(N,) top output minus second output of each row of `outputs` (N, classes)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        raise ValueError(f"outputs: shape {outputs.shape} is not allowed; give (N, classes) with 2 or more classes")
    if not np.isfinite(outputs).all():
        raise ValueError("outputs: not all finite; a diverged net has no rejection curve")
    top2 = np.sort(outputs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def curve(outputs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reject_rate %, error %), each of length N + 1: after rejecting the k digits of
    smallest margin (ties: lower index first), k = 0..N, the error on the N - k accepted.

    A digit counts as an error when its top output (the first, if two are equal) is not
    its label. With all N rejected nothing is accepted and the error is 0.
    """
    margin = margins(outputs)
    labels = np.asarray(labels)
    if labels.shape != margin.shape:
        raise ValueError(f"labels: shape {labels.shape} is not allowed; give ({len(margin)},), one per row of outputs")
    n = len(margin)
    if n == 0:
        raise ValueError("outputs: no digits; a rejection curve needs at least one")
    wrong = np.argmax(np.asarray(outputs), axis=1) != labels
    order = np.argsort(margin, kind="stable")  # rejected first to last; stable: tied margins by index
    # misses among the accepted after rejecting k = misses in order[k:], a suffix sum
    misses = np.concatenate([np.cumsum(wrong[order][::-1])[::-1], [0]])
    accepted = n - np.arange(n + 1)
    error = 100.0 * misses / np.maximum(accepted, 1)
    reject_rate = 100.0 * np.arange(n + 1) / n
    return reject_rate, error


def rate_on_curve(reject_rate: np.ndarray, error: np.ndarray, target: float = 1.0) -> float:
    """The smallest rejection rate on a `curve` whose error is at most `target` %."""
    if not target >= 0:
        raise ValueError(f"target: {target!r} is not allowed; give an error rate (%) of 0 or more")
    within = np.flatnonzero(np.asarray(error) <= target)
    if len(within) == 0:  # only for a curve `curve` did not make: its last point is always 0
        raise ValueError(f"error: no point of the curve is at or below {target}%")
    return float(np.asarray(reject_rate)[within[0]])


def reject_rate_at(outputs: np.ndarray, labels: np.ndarray, error: float = 1.0) -> float:
    """The percentage of digits to reject, smallest margins first, for at most `error` %
    error on the rest (the paper: 12.1% for 1%)."""
    if not error >= 0:
        raise ValueError(f"error: {error!r} is not allowed; give an error rate (%) of 0 or more")
    return rate_on_curve(*curve(outputs, labels), target=error)
