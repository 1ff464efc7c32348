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


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(N,) total ink, y_mean, mu11 and mu02 of each image's ink (y upward)."""
    w = (x + 1) / 2
    total = w.sum(axis=(1, 2))
    h, wd = x.shape[1:]
    ys = -np.arange(h, dtype=np.float64)[None, :, None]  # upward
    xs = np.arange(wd, dtype=np.float64)[None, None, :]
    safe = np.where(total > 0, total, 1.0)
    y_mean = (w * ys).sum(axis=(1, 2)) / safe
    x_mean = (w * xs).sum(axis=(1, 2)) / safe
    dy = ys - y_mean[:, None, None]
    dx = xs - x_mean[:, None, None]
    return total, y_mean, (w * dx * dy).sum(axis=(1, 2)), (w * dy * dy).sum(axis=(1, 2))


def slant(images) -> np.ndarray:
    """(N,) mu11 / mu02 of each image's ink: the horizontal shift per unit of height, the
    shear that deslanting (x -> x - slant * (y - y_mean)) removes."""
    total, _, mu11, mu02 = _moments(_images(images))
    if not (total > 0).all():
        raise ValueError("images: an image has no ink; every image needs some pixel above -1")
    return mu11 / mu02


def deslant(images) -> np.ndarray:
    """(N, H, W) float32: each image sheared by x -> x - slant * (y - y_mean) about its ink's
    centre row, so that its mu11 (and its slant) is ~0. Each row moves as a whole by a
    fraction of a pixel, read by linear interpolation; what comes in from outside the frame is
    background (-1), and ink sheared past the frame is lost. An image with no ink, or with all
    its ink in one row (no height to lean over), is left as it is.

    The 1989 text does not deslant (it describes a linear transform that keeps the aspect
    ratio); the public USPS set is deslanted already (docs/usps_questions.md, part 3)."""
    x = _images(images)
    total, y_mean, mu11, mu02 = _moments(x)
    shear = np.where((total > 0) & (mu02 > 0), mu11 / np.where(mu02 > 0, mu02, 1.0), 0.0)
    n, h, wd = x.shape
    ys = -np.arange(h, dtype=np.float64)[None, :]  # upward, as in slant
    # the output pixel at column c reads the input at column c + shear * (y - y_mean)
    source = np.arange(wd, dtype=np.float64)[None, None, :] + (shear[:, None] * (ys - y_mean[:, None]))[:, :, None]
    left = np.floor(source)
    frac = source - left
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1)), constant_values=-1.0)  # background on both sides
    col = np.clip(left.astype(np.int64) + 1, 0, wd + 1)  # +1: the padding's offset
    nxt = np.clip(left.astype(np.int64) + 2, 0, wd + 1)
    rows = np.arange(n)[:, None, None], np.arange(h)[None, :, None]
    out = (1 - frac) * padded[rows[0], rows[1], col] + frac * padded[rows[0], rows[1], nxt]
    return out.astype(np.float32)


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
