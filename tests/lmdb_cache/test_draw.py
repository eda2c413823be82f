"""draw_polygons: outlines where the geometry says, in a new array, dashed on request, and clear
errors for bad input. Expected pixels are worked out by hand from the pixel-corner frame."""

from __future__ import annotations

import numpy as np
import pytest

from lmdb_cache.draw import draw_polygons

RED = (255, 0, 0)
# A rectangle in pixel-corner coordinates: its edges are the lines x = 10, x = 40, y = 8, y = 28.
RECT = np.array([[10, 8], [40, 8], [40, 28], [10, 28]], dtype=np.float64)


def _blank(height: int = 40, width: int = 60) -> np.ndarray:
    return np.full((height, width, 3), 200, dtype=np.uint8)


def _drawn(out: np.ndarray, colour=RED) -> np.ndarray:
    return np.all(out == np.array(colour, dtype=np.uint8), axis=2)


def _near_rect_edges(mask: np.ndarray, x0, y0, x1, y1, tol: float) -> np.ndarray:
    """Which pixels of ``mask``'s grid have their centre within ``tol`` of the rectangle's
    outline (by hand: distance to the nearest side, within the side's extent)."""
    ii, jj = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    cx, cy = jj + 0.5, ii + 0.5
    along_y = (cy >= y0 - tol) & (cy <= y1 + tol)
    along_x = (cx >= x0 - tol) & (cx <= x1 + tol)
    vertical = (np.minimum(abs(cx - x0), abs(cx - x1)) <= tol) & along_y
    horizontal = (np.minimum(abs(cy - y0), abs(cy - y1)) <= tol) & along_x
    return vertical | horizontal


def test_outline_lies_on_the_polygon_edges():
    mask = _drawn(draw_polygons(_blank(), [RECT], RED, width=2))
    # Width 2 centred on an edge covers the pixels whose centre is within 1 of it; Pillow's
    # whole-pixel rounding may move it by one more.
    assert not np.any(mask & ~_near_rect_edges(mask, 10, 8, 40, 28, tol=1.5))


def test_outline_covers_every_side_along_its_length():
    mask = _drawn(draw_polygons(_blank(), [RECT], RED, width=1))
    # Every row between y = 8 and y = 28 has a drawn pixel at column 9 or 10 (the left edge
    # x = 10) and at 39 or 40 (the right edge); every column between has one on rows 7-8 and
    # 27-28.
    rows = slice(9, 27)
    cols = slice(11, 39)
    assert mask[rows, 9:11].any(axis=1).all() and mask[rows, 39:41].any(axis=1).all()
    assert mask[7:9, cols].any(axis=0).all() and mask[27:29, cols].any(axis=0).all()


def test_inside_and_outside_are_untouched():
    image = _blank()
    out = draw_polygons(image, [RECT], RED, width=2)
    changed = np.any(out != image, axis=2)
    assert not changed[12:24, 14:36].any()  # well inside
    assert not changed[:5].any() and not changed[32:].any() and not changed[:, 45:].any()


def test_input_is_not_modified_and_output_is_a_new_rgb_array():
    image = _blank()
    before = image.copy()
    out = draw_polygons(image, [RECT])
    assert np.array_equal(image, before)
    assert out.shape == image.shape and out.dtype == np.uint8 and out.flags.writeable
    assert not np.shares_memory(out, image)


def test_greyscale_input_gives_rgb():
    grey = np.full((40, 60), 90, dtype=np.uint8)
    out = draw_polygons(grey, [RECT], (0, 255, 0))
    assert out.shape == (40, 60, 3)
    assert np.array_equal(out[2, 2], [90, 90, 90]) and _drawn(out, (0, 255, 0)).any()


def test_colour_is_the_one_asked_for():
    out = draw_polygons(_blank(), [RECT], (12, 34, 56), width=1)
    changed = np.any(out != _blank(), axis=2)
    assert changed.any() and np.all(out[changed] == [12, 34, 56])


def test_dashed_outline_has_gaps_along_each_side():
    mask = _drawn(draw_polygons(_blank(), [RECT], RED, width=1, dashed=True))
    top = mask[7:9, 11:39].any(axis=0)  # the 28 columns along the top edge
    # Dashes of 4 pixels and gaps of 3 at width 1: both drawn and undrawn runs along a side.
    assert 0.3 < top.mean() < 0.8
    assert not np.any(mask & ~_near_rect_edges(mask, 10, 8, 40, 28, tol=1.5))


def test_polygon_partly_outside_is_clipped():
    outside = np.array([[-20, -20], [30, -20], [30, 20], [-20, 20]], dtype=np.float64)
    mask = _drawn(draw_polygons(_blank(), [outside], RED, width=1))
    assert mask[:19, 29:31].any(axis=1).all()  # the visible part of the edge x = 30


def test_no_polygons_gives_an_equal_copy():
    image = _blank()
    out = draw_polygons(image, [])
    assert np.array_equal(out, image) and not np.shares_memory(out, image)


@pytest.mark.parametrize(
    ("image", "polygons", "kwargs", "match"),
    [
        (np.zeros((4, 4, 4), np.uint8), [RECT], {}, "image must be"),
        (np.zeros((4, 4, 3), np.float32), [RECT], {}, "image must be"),
        (np.zeros((4, 4, 3), np.uint8), [np.zeros((4, 3))], {}, "polygon 0 must be"),
        (np.zeros((4, 4, 3), np.uint8), [RECT, [[1, 1]]], {}, "polygon 1 must be"),
        (np.zeros((4, 4, 3), np.uint8), [[[0, 0], [np.nan, 1]]], {}, "not a finite number"),
        (np.zeros((4, 4, 3), np.uint8), [RECT], {"colour": (0, 0, 256)}, "colour must be"),
        (np.zeros((4, 4, 3), np.uint8), [RECT], {"colour": "red"}, "colour must be"),
        (np.zeros((4, 4, 3), np.uint8), [RECT], {"width": 0}, "width must be"),
    ],
    ids=[
        "4-channels",
        "float",
        "3-columns",
        "one-point",
        "nan",
        "colour-range",
        "colour-name",
        "width-0",
    ],  # fmt: skip
)
def test_bad_arguments_raise_value_error(image, polygons, kwargs, match):
    with pytest.raises(ValueError, match=match):
        draw_polygons(image, polygons, **kwargs)
