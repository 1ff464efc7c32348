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


@pytest.mark.parametrize("s", [-0.4, -0.15, 0.2, 0.5])
def test_deslant_makes_a_slanted_stroke_upright(s):
    image = stroke(s)
    assert ink.slant(image)[0] == pytest.approx(s, abs=0.01)  # the stroke leans as built
    upright = ink.deslant(image)
    assert upright.shape == (1, 64, 64) and upright.dtype == np.float32
    assert abs(ink.slant(upright)[0]) < 0.005
    assert ink.deslant(image[None])[0] == pytest.approx(upright[0])  # (H, W) or (N, H, W) alike
    ink_before, ink_after = (image + 1).sum(), (upright + 1).sum()
    assert ink_after == pytest.approx(ink_before, rel=1e-3)  # sheared within the frame: no ink lost
    assert upright.min() >= -1 and upright.max() <= 1


def test_deslant_leaves_a_vertical_stroke_unchanged():
    image = -np.ones((16, 16))
    image[2:14, 6:9] = 1.0  # a bar 3 columns wide, 12 rows high
    image[4:10, 7] = 0.2  # grey inside, symmetric about the bar's centre column
    assert ink.slant(image)[0] == pytest.approx(0.0, abs=1e-12)
    assert np.array_equal(ink.deslant(image)[0], image.astype(np.float32))


def test_deslant_shears_each_image_by_its_own_slant_and_keeps_blank_ones():
    images = np.stack([stroke(0.3, size=32, half_height=10, half_width=2), stroke(-0.3, size=32, half_height=10)])
    blank = -np.ones((1, 32, 32))
    flat = -np.ones((1, 32, 32))
    flat[0, 16, 4:28] = 1.0  # one row of ink: no height to lean over
    out = ink.deslant(np.concatenate([images, blank, flat]))
    assert np.abs(ink.slant(out[:2])).max() < 0.005
    assert np.array_equal(out[2], blank[0]) and np.array_equal(out[3], flat[0])
