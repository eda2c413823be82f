"""reader.read_into: the image copied into the caller's array, checked before any pixel."""

from __future__ import annotations

import numpy as np
import pytest

from lmdb_cache import MissingImageError, open_cache


def test_fills_the_array_with_the_owned_read(tiny_cache):
    with open_cache(tiny_cache) as reader:
        for key in reader.keys():
            expected = reader[key].image
            out = np.full(expected.shape, 7, dtype=np.uint8)
            meta = reader.read_into(key, out)
            np.testing.assert_array_equal(out, expected)
            assert meta == reader.meta(key)


def test_fills_a_slot_of_a_larger_batch(tiny_cache):
    with open_cache(tiny_cache) as reader:
        key = reader.keys()[0]
        h, w, _ = reader[key].image.shape
        batch = np.zeros((3, h + 5, w + 7, 3), dtype=np.uint8)
        reader.read_into(key, batch[1, :h, :w])  # a strided view
        np.testing.assert_array_equal(batch[1, :h, :w], reader[key].image)
        assert not batch[0].any() and not batch[2].any() and not batch[1, h:].any()


def test_a_wrong_shape_names_both_shapes(tiny_cache):
    with open_cache(tiny_cache) as reader:
        key = reader.keys()[0]
        h, w, _ = reader[key].image.shape
        with pytest.raises(ValueError, match=rf"\({h + 1}, {w}, 3\).*\({h}, {w}, 3\)"):
            reader.read_into(key, np.zeros((h + 1, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "out",
    [np.zeros((2, 2, 3), dtype=np.float32), [[0]], np.zeros((2, 2, 3), dtype=np.uint8)[::1]],
    ids=["float32", "list", "read-only"],
)
def test_an_unusable_array_is_a_type_error(tiny_cache, out):
    if isinstance(out, np.ndarray) and out.dtype == np.uint8:
        out.flags.writeable = False
    with open_cache(tiny_cache) as reader:
        with pytest.raises(TypeError, match="out"):
            reader.read_into(reader.keys()[0], out)


def test_a_missing_key_is_a_missing_image(tiny_cache):
    with open_cache(tiny_cache) as reader:
        with pytest.raises(MissingImageError):
            reader.read_into("nope.png", np.zeros((1, 1, 3), dtype=np.uint8))
