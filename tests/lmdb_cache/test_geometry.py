"""``record.raw_to_pixels`` and ``lmdb_cache.geometry`` against Pillow's own ``exif_transpose``.

For each of the 18 standard EXIF test images, a synthetic image of the file's raw size is
filled with each pixel's raw index and given the file's orientation tag; Pillow's
``ImageOps.exif_transpose`` then says where every raw pixel lands upright. The cache's matrix
must send each raw pixel centre exactly there (full size), and the cap's exact per-axis scale
on top (capped)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from lmdb_cache import build_cache, open_cache
from lmdb_cache.geometry import (
    capped_size,
    longest_side_size,
    orientation_matrix,
    raw_points_to_pixels,
    raw_to_pixels,
    transform_points,
    upright_size,
)

EXIF_NAMES = [f"{kind}_{n}.jpg" for kind in ("Landscape", "Portrait") for n in range(9)]


@pytest.fixture(scope="module")
def exif_caches(exif_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("exif")
    full, capped = root / "full.lmdb", root / "capped.lmdb"
    build_cache(exif_dir, full, workers=1)
    build_cache(exif_dir, capped, workers=1, max_side=97)
    return full, capped


def _pillow_upright_positions(raw_w: int, raw_h: int, orientation: int) -> np.ndarray:
    """(H', W', 2): for each upright pixel, the raw (x, y) Pillow's exif_transpose put there."""
    index = np.arange(raw_w * raw_h, dtype=np.int32).reshape(raw_h, raw_w)
    image = Image.fromarray(index, "I")
    image.getexif()[0x0112] = orientation
    upright = np.asarray(ImageOps.exif_transpose(image)).astype(np.int64)
    return np.stack([upright % raw_w, upright // raw_w], axis=-1)


@pytest.mark.parametrize("name", EXIF_NAMES)
def test_raw_to_pixels_matches_pillow_exif_transpose(exif_caches, exif_dir, name):
    full, capped = exif_caches
    with Image.open(exif_dir / name) as source:
        raw_w, raw_h = source.size
        orientation = int(source.getexif().get(0x0112, 1))
    with open_cache(full) as reader:
        record = reader[name]
    assert (record.meta["raw_width"], record.meta["raw_height"]) == (raw_w, raw_h)
    raw_xy = _pillow_upright_positions(raw_w, raw_h, orientation)
    up_h, up_w = raw_xy.shape[:2]
    assert record.image.shape[:2] == (up_h, up_w)
    centres = raw_xy.reshape(-1, 2) + 0.5
    v, u = np.mgrid[0:up_h, 0:up_w]
    expected = np.stack([u, v], axis=-1).reshape(-1, 2) + 0.5
    np.testing.assert_array_equal(transform_points(record.raw_to_pixels, centres), expected)
    np.testing.assert_array_equal(raw_points_to_pixels(record.meta, centres), expected)

    with open_cache(capped) as reader:
        small = reader[name]
    sx, sy = small.meta["width"] / up_w, small.meta["height"] / up_h
    corners = np.array([[0, 0], [raw_w, 0], [0, raw_h], [raw_w, raw_h]], dtype=float)
    # The raw image's corners land on the stored image's corners, whatever the orientation.
    landed = {tuple(p) for p in transform_points(small.raw_to_pixels, corners).tolist()}
    assert landed == {(0, 0), (small.meta["width"], 0), (0, small.meta["height"]),
                      (small.meta["width"], small.meta["height"])}  # fmt: skip
    np.testing.assert_allclose(
        transform_points(small.raw_to_pixels, centres), expected * [sx, sy], rtol=0, atol=1e-9
    )


def test_orientations_5_to_8_swap_the_sides():
    for orientation in range(1, 9):
        swapped = orientation >= 5
        assert upright_size(orientation, 30, 20) == ((20, 30) if swapped else (30, 20))


def test_orientation_6_by_hand():
    # 90 degrees clockwise: the raw top-left corner goes to the top-right, (x, y) -> (H - y, x).
    matrix = orientation_matrix(6, 30, 20)
    assert transform_points(matrix, [[0, 0], [30, 0], [10, 5]]).tolist() == [
        [20, 0],
        [20, 30],
        [15, 10],
    ]


def test_raw_to_pixels_is_orientation_then_scale():
    meta = {"orientation": 8, "raw_width": 400, "raw_height": 100, "width": 25, "height": 100}
    # upright is 100 x 400, stored 25 x 100: a quarter on each axis.
    assert transform_points(raw_to_pixels(meta), [[400, 0]]).tolist() == [[0, 0]]
    assert transform_points(raw_to_pixels(meta), [[0, 0]]).tolist() == [[0, 100]]


def test_orientation_outside_1_to_8_is_refused():
    with pytest.raises(ValueError, match="1..8"):
        orientation_matrix(9, 10, 10)


@pytest.mark.parametrize(
    ("size", "side", "expected"),
    [
        ((200, 100), 50, (50, 25)),
        ((100, 200), 50, (25, 50)),
        ((3, 1000), 10, (1, 10)),
        ((10, 5), 40, (40, 20)),
    ],  # fmt: skip
)
def test_longest_side_size_by_hand(size, side, expected):
    assert longest_side_size(*size, side) == expected


def test_capped_size_never_upscales():
    assert capped_size(10, 5, 40) == (10, 5)
    assert capped_size(10, 5, None) == (10, 5)


def test_points_already_upright_are_told_by_the_swapped_size():
    from lmdb_cache.geometry import points_in_upright_frame

    # Raw 300 x 200 with orientation 6: upright is 200 x 300.
    only_upright = np.array([[10.0, 250.0], [150.0, 290.0]])  # y > 200: fits 200 x 300 only
    raw = np.array([[250.0, 10.0], [290.0, 150.0]])  # x > 200: fits 300 x 200 only
    both = np.array([[10.0, 10.0], [50.0, 50.0]])
    assert points_in_upright_frame(only_upright, 6, 300, 200) is True
    assert points_in_upright_frame(raw, 6, 300, 200) is False
    assert points_in_upright_frame(both, 6, 300, 200) is False  # raw, as the format says
    assert points_in_upright_frame(only_upright, 1, 300, 200) is False  # no swap: no way to tell
