"""zipnet.ink on synthetic strokes whose slant and box are known."""

import numpy as np
import pytest

from zipnet import ink


def stroke(s: float, size: int = 64, half_height: int = 20, half_width: float = 3.0) -> np.ndarray:
    """A bar of ink sheared by s: its centre line is x = centre + s * y (y upward)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    y = (size - 1) / 2 - rows
    centre = (size - 1) / 2 + s * y
    on = (np.abs(cols - centre) <= half_width) & (np.abs(y) <= half_height)
    return np.where(on, 1.0, -1.0)


@pytest.mark.parametrize("s", [-0.5, -0.2, 0.0, 0.15, 0.4])
def test_slant_of_a_sheared_stroke(s):
    assert ink.slant(stroke(s))[0] == pytest.approx(s, abs=0.01)


def test_slant_is_positive_when_the_top_leans_right():
    image = -np.ones((16, 16))
    for r in range(16):  # top row at the right, bottom row at the left
        image[r, 15 - r // 2] = 1.0
    assert ink.slant(image)[0] == pytest.approx(0.5, abs=0.02)


def test_grey_ink_weighs_by_its_ink():
    image = stroke(0.3, size=32, half_height=10, half_width=2)
    grey = np.where(image > 0, 0.0, -1.0)  # half the ink everywhere: the same moments
    assert ink.slant(grey)[0] == pytest.approx(ink.slant(image)[0], rel=1e-12)


def test_box_of_a_rectangle():
    image = -np.ones((2, 16, 16))
    image[0, 3:13, 5:9] = 1.0  # 10 rows, 4 columns
    image[1, :, :] = 1.0
    width, height = ink.box(image)
    assert width.tolist() == [4, 16] and height.tolist() == [10, 16]


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="images: shape"):
        ink.slant(np.zeros(5))
    with pytest.raises(ValueError, match="images: an image has no ink"):
        ink.slant(-np.ones((1, 8, 8)))
    with pytest.raises(ValueError, match="images: an image has no pixel above"):
        ink.box(-np.ones((1, 8, 8)))
