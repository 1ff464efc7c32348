"""The shape of a digit's ink: its slant from second moments, and its bounding box.

The 1989 text: each digit is "normalized" by a linear transform into 16x16 "while preserving
the aspect ratio"; it says nothing of deslanting. A linear transform that keeps the aspect
ratio leaves one side of the box short of 16 pixels; a deslanted set has slants near 0.

Images are (N, H, W) in [-1, 1] with ink at +1 (zipnet.data's scale); a pixel's weight is its
ink, (x + 1) / 2. x runs to the right along a row, y upward (against the row index), so a
digit leaning right (its top to the right) has a positive slant.
"""

from __future__ import annotations

import numpy as np

INK = 0.0  # a pixel is in the bounding box when it is darker than mid-grey: x > 0


def _images(images) -> np.ndarray:
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1] < 2 or x.shape[2] < 2:
        raise ValueError(f"images: shape {x.shape} is not allowed; give (N, H, W) or (H, W) with H, W >= 2")
    return x


def slant(images) -> np.ndarray:
    """(N,) mu11 / mu02 of each image's ink: the horizontal shift per unit of height, the
    shear that deslanting (x -> x - slant * (y - y_mean)) removes."""
    x = _images(images)
    w = (x + 1) / 2
    total = w.sum(axis=(1, 2))
    if not (total > 0).all():
        raise ValueError("images: an image has no ink; every image needs some pixel above -1")
    h, wd = x.shape[1:]
    ys = -np.arange(h, dtype=np.float64)[None, :, None]  # upward
    xs = np.arange(wd, dtype=np.float64)[None, None, :]
    y_mean = (w * ys).sum(axis=(1, 2)) / total
    x_mean = (w * xs).sum(axis=(1, 2)) / total
    dy = ys - y_mean[:, None, None]
    dx = xs - x_mean[:, None, None]
    mu11 = (w * dx * dy).sum(axis=(1, 2))
    mu02 = (w * dy * dy).sum(axis=(1, 2))
    return mu11 / mu02


def box(images, threshold: float = INK) -> tuple[np.ndarray, np.ndarray]:
    """(N,) widths and (N,) heights in pixels of the box around each image's pixels above `threshold`."""
    x = _images(images)
    on = x > threshold
    if not on.any(axis=(1, 2)).all():
        raise ValueError(f"images: an image has no pixel above {threshold}; lower the threshold")
    cols, rows = on.any(axis=1), on.any(axis=2)
    width = x.shape[2] - np.argmax(cols, axis=1) - np.argmax(cols[:, ::-1], axis=1)
    height = x.shape[1] - np.argmax(rows, axis=1) - np.argmax(rows[:, ::-1], axis=1)
    return width, height
