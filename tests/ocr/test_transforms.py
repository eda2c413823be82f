"""The one-pass train transform and the validation transform against hand-computed pixels."""

from __future__ import annotations

import numpy as np
import pytest

from ocr.data.sample import PolygonSet
from ocr.data.transforms import TrainTransform, ValTransform

NO_POLYGONS = PolygonSet.from_list([])


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_whole_page_at_twice_its_size_repeats_each_pixel():
    # s = 640 / 320 = 2: the whole 320 x 160 page becomes 640 x 320, padded below.
    image = _image(160, 320)
    transform = TrainTransform(640, resample="nearest", scale_range=(1, 1), flip_prob=0)
    result = transform(image, NO_POLYGONS, np.random.default_rng(0))
    expected = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(result.image[:320], expected)
    assert not result.image[320:].any()
    np.testing.assert_array_equal(result.matrix, np.diag([2.0, 2.0, 1.0]))


@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed{s}")
def test_crop_is_the_window_the_matrix_names(seed):
    # s = 2 on a 640 page: a 320-pixel window at a drawn offset becomes the 640 sample.
    image = _image(640, 640, seed)
    transform = TrainTransform(640, resample="nearest", scale_range=(2, 2), flip_prob=0)
    result = transform(image, NO_POLYGONS, np.random.default_rng(seed))
    x0, y0 = -result.matrix[0, 2] / 2, -result.matrix[1, 2] / 2
    assert x0 == int(x0) and y0 == int(y0) and 0 <= x0 <= 320 and 0 <= y0 <= 320
    window = image[int(y0) : int(y0) + 320, int(x0) : int(x0) + 320]
    np.testing.assert_array_equal(result.image, np.repeat(np.repeat(window, 2, axis=0), 2, axis=1))


def test_offsets_are_drawn_not_fixed():
    transform = TrainTransform(640, scale_range=(2, 2), flip_prob=0)
    offsets = {
        transform(_image(640, 640), NO_POLYGONS, np.random.default_rng(s)).matrix[0, 2]
        for s in range(8)
    }
    assert len(offsets) > 4


def test_flip_mirrors_the_same_sample():
    image = _image(300, 500)
    kept = TrainTransform(640, scale_range=(0.9, 1.5), flip_prob=0)
    flipped = TrainTransform(640, scale_range=(0.9, 1.5), flip_prob=1)
    a = kept(image, NO_POLYGONS, np.random.default_rng(5))
    b = flipped(image, NO_POLYGONS, np.random.default_rng(5))
    np.testing.assert_array_equal(b.image, a.image[:, ::-1])
    mirror = np.array([[-1, 0, 640], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    np.testing.assert_allclose(b.matrix, mirror @ a.matrix)


def test_strong_downscale_averages_instead_of_aliasing():
    # A 1-pixel checkerboard shrunk 3x: each output pixel is the mean of its 3 x 3 block
    # (5/9 or 4/9 white), where point sampling would give pure black and white.
    yy, xx = np.mgrid[0:1920, 0:1920]
    board = np.repeat((((xx + yy) % 2) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    transform = TrainTransform(640, scale_range=(1, 1), flip_prob=0)
    result = transform(board, NO_POLYGONS, np.random.default_rng(0))
    block_means = board.reshape(640, 3, 640, 3, 3).mean(axis=(1, 3))
    assert np.abs(result.image - block_means).max() <= 1


def test_polygons_move_with_the_matrix_and_half_lost_ones_are_invalid():
    # s = 1 on a 100 x 100 page: the identity. Box A keeps 20 of its 40 pixels of width
    # inside (half: still valid), box B keeps 10 of 40 (invalid); both are clipped.
    boxes = PolygonSet.from_list(
        [
            [[80, 0], [120, 0], [120, 10], [80, 10]],
            [[90, 20], [130, 20], [130, 30], [90, 30]],
        ]
    )
    transform = TrainTransform(100, scale_range=(1, 1), flip_prob=0)
    result = transform(_image(100, 100), boxes, np.random.default_rng(0))
    np.testing.assert_array_equal(result.matrix, np.eye(3))
    assert result.valid.tolist() == [True, False]
    np.testing.assert_array_equal(result.polygons[0], [[80, 0], [100, 0], [100, 10], [80, 10]])


def test_train_transform_refuses_a_filter_opencv_lacks():
    with pytest.raises(ValueError, match="no 'hamming' filter"):
        TrainTransform(640, resample="hamming")


@pytest.mark.parametrize("transform", [ValTransform(64), TrainTransform(64)], ids=["val", "train"])
def test_the_given_slot_is_filled_and_its_padding_zeroed(transform):
    slot = np.full((64, 64, 3), 7, dtype=np.uint8)
    image = np.full((20, 40, 3), 200, dtype=np.uint8)
    result = transform(image, NO_POLYGONS, np.random.default_rng(0), out=slot)
    assert result.image is slot
    assert set(np.unique(slot).tolist()) <= {0, 200} | set(range(1, 200))  # no stale 7s left
    assert (slot == 7).sum() == 0


def test_val_transform_pads_right_and_below():
    image = _image(32, 64)
    result = ValTransform(64)(image, NO_POLYGONS)
    np.testing.assert_array_equal(result.image[:32], image)
    assert not result.image[32:].any()
