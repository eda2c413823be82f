"""``CacheWriter``: records from files and arrays, ``extra`` maps, and what it refuses.

Expectations are independent of the writer: Pillow's own ``exif_transpose`` and ``resize``
for pixels, hand-written maps for ``extra``, the RGBA formula written out."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from lmdb_cache import (
    BuildLockedError,
    CacheWriter,
    ImageDecodeError,
    SettingsMismatchError,
    build_cache,
    open_cache,
    validate_cache,
)
from lmdb_cache.format.versions import EXTENDED_FORMAT_VERSION, FORMAT_VERSION


def _array(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_extra_round_trips_for_arrays_and_files(tiny_images, tmp_path):
    store = tmp_path / "w.lmdb"
    image = _array(30, 40, 1)
    extra = {"label": 3, "name": "café", "box": [1.5, 2, None], "nested": {"ok": True}, "b": b"\0"}
    with CacheWriter(store) as writer:
        writer.add("arr", image=image, extra=extra)
        writer.add("rot", path=tiny_images / "rotated.jpg", extra={"label": 7})
        writer.add("plain", image=image)
    with open_cache(store) as reader:
        assert reader["arr"].extra == extra
        assert reader["rot"].extra == {"label": 7}
        assert reader["plain"].extra == {}
        np.testing.assert_array_equal(reader["arr"].image, image)
        with Image.open(tiny_images / "rotated.jpg") as source:
            upright = np.asarray(ImageOps.exif_transpose(source).convert("RGB"))
        np.testing.assert_array_equal(reader["rot"].image, upright)
        assert reader["rot"].meta["orientation"] == 6
        assert reader.info["format_version"] == EXTENDED_FORMAT_VERSION
        assert reader.info["complete"] is True
        assert reader.source_root is None
    assert validate_cache(store).ok


def test_tuples_come_back_as_lists(tmp_path):
    with CacheWriter(tmp_path / "w.lmdb") as writer:
        writer.add("a", image=_array(4, 4, 0), extra={"pair": (1, 2)})
    with open_cache(tmp_path / "w.lmdb") as reader:
        assert reader["a"].extra == {"pair": [1, 2]}


def test_an_array_is_capped_like_pillow_resize(tmp_path):
    image = _array(100, 200, 2)
    with CacheWriter(tmp_path / "w.lmdb", max_side=50, resample="bilinear") as writer:
        writer.add("a", image=image)
    expected = np.asarray(Image.fromarray(image).resize((50, 25), Image.Resampling.BILINEAR))
    with open_cache(tmp_path / "w.lmdb") as reader:
        record = reader["a"]
    np.testing.assert_array_equal(record.image, expected)
    assert (record.meta["raw_width"], record.meta["raw_height"]) == (200, 100)
    assert record.raw_to_pixels[0, 0] == 0.25 and record.raw_to_pixels[1, 1] == 0.25


def test_grey_and_rgba_arrays(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = 100
    rgba[..., 3] = [[0, 255], [128, 51]]
    with CacheWriter(tmp_path / "w.lmdb") as writer:
        writer.add("grey", image=grey)
        writer.add("rgba", image=rgba)
    with open_cache(tmp_path / "w.lmdb") as reader:
        np.testing.assert_array_equal(reader["grey"].image, np.stack([grey] * 3, axis=-1))
        alpha = rgba[..., 3:4].astype(int)
        white = (100 * alpha + 255 * (255 - alpha) + 127) // 255
        np.testing.assert_array_equal(reader["rgba"].image, np.repeat(white, 3, axis=2))


def test_the_array_is_copied_when_added(tmp_path):
    image = _array(8, 8, 3)
    kept = image.copy()
    with CacheWriter(tmp_path / "w.lmdb", commit_images=1000) as writer:
        writer.add("a", image=image)
        image[:] = 0  # before the commit
    with open_cache(tmp_path / "w.lmdb") as reader:
        np.testing.assert_array_equal(reader["a"].image, kept)
    assert validate_cache(tmp_path / "w.lmdb").ok


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"key": 3, "image": np.zeros((2, 2, 3), np.uint8)}, TypeError, "must be a str"),
        ({"key": "", "image": np.zeros((2, 2, 3), np.uint8)}, ValueError, "cannot be empty"),
        ({"key": "k" * 600, "image": np.zeros((2, 2, 3), np.uint8)}, ValueError, "511"),
        ({"key": "a"}, TypeError, "exactly one of"),
        (
            {"key": "a", "path": "x.jpg", "image": np.zeros((2, 2, 3), np.uint8)},
            TypeError,
            "exactly one of",
        ),
        ({"key": "a", "image": np.zeros((2, 2, 3), np.float32)}, TypeError, "uint8"),
        ({"key": "a", "image": [[1, 2]]}, TypeError, "uint8 numpy array"),
        ({"key": "a", "image": np.zeros((2, 2, 2), np.uint8)}, ValueError, "shape"),
        ({"key": "a", "image": np.zeros((0, 2, 3), np.uint8)}, ValueError, "1.."),
        (
            {"key": "a", "image": np.zeros((2, 2, 3), np.uint8), "extra": {"n": np.int64(1)}},
            ValueError,
            "msgpack",
        ),
        (
            {"key": "a", "image": np.zeros((2, 2, 3), np.uint8), "extra": {1: "x"}},
            ValueError,
            "not a str",
        ),
        (
            {"key": "a", "image": np.zeros((2, 2, 3), np.uint8), "extra": ["x"]},
            ValueError,
            "expected a dict",
        ),
        (
            {"key": "a", "image": np.zeros((2, 2, 3), np.uint8), "extra": {"s": {1, 2}}},
            ValueError,
            "msgpack",
        ),
        (
            {"key": "a", "image": np.zeros((2, 2, 3), np.uint8), "extra": {"b": b"x" * 70000}},
            ValueError,
            "over the limit",
        ),
    ],  # fmt: skip
)
def test_bad_adds_raise_and_write_nothing(tmp_path, kwargs, error, match):
    store = tmp_path / "w.lmdb"
    with CacheWriter(store) as writer:
        writer.add("good", image=np.zeros((2, 2, 3), np.uint8))
        with pytest.raises(error, match=match):
            writer.add(kwargs.pop("key"), **kwargs)
    with open_cache(store) as reader:
        assert list(reader) == ["good"]
    assert validate_cache(store).ok


def test_an_undecodable_file_raises_by_default(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    store = tmp_path / "w.lmdb"
    with pytest.raises(ImageDecodeError, match="bad"):
        with CacheWriter(store) as writer:
            writer.add("bad", path=bad)
    with open_cache(store) as reader:  # nothing but the first manifest was committed
        assert len(reader) == 0 and reader.info["complete"] is False


def test_errors_record_lists_the_failure(tmp_path, tiny_images):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with CacheWriter(tmp_path / "w.lmdb", errors="record", workers=2) as writer:
        writer.add("bad", path=bad)
        writer.add("a", path=tiny_images / "a.jpg")
    assert [k for k, _ in writer.result.failures] == ["bad"]
    with open_cache(tmp_path / "w.lmdb") as reader:
        assert list(reader) == ["a"] and [k for k, _ in reader.failures()] == ["bad"]


def test_parallel_decoding_stores_what_one_process_stores(many_images, tmp_path):
    files = sorted(many_images.iterdir())
    for workers, name in ((1, "one.lmdb"), (2, "two.lmdb")):
        with CacheWriter(tmp_path / name, workers=workers, commit_images=5) as writer:
            for i, path in enumerate(files):
                writer.add(path.name, path=path, extra={"i": i})
    with open_cache(tmp_path / "one.lmdb") as one, open_cache(tmp_path / "two.lmdb") as two:
        assert list(one) == list(two) == [p.name for p in files]
        for i, key in enumerate(one):
            np.testing.assert_array_equal(one[key].image, two[key].image)
            assert two[key].extra == {"i": i}


def test_adding_a_key_again_replaces_it_in_add_order(many_images, tmp_path):
    path = sorted(many_images.iterdir())[0]
    with CacheWriter(tmp_path / "w.lmdb", workers=2) as writer:
        writer.add("k", path=path, extra={"v": 1})
        writer.add("k", image=_array(5, 6, 0), extra={"v": 2})
    with open_cache(tmp_path / "w.lmdb") as reader:
        assert reader["k"].extra == {"v": 2} and reader["k"].image.shape == (5, 6, 3)


def test_remove(tmp_path):
    with CacheWriter(tmp_path / "w.lmdb") as writer:
        writer.add("a", image=_array(3, 3, 0))
        writer.add("b", image=_array(3, 3, 1))
    with CacheWriter(tmp_path / "w.lmdb") as writer:
        assert writer.remove("a") is True and writer.remove("zz") is False
        assert "a" not in writer and "b" in writer
    with open_cache(tmp_path / "w.lmdb") as reader:
        assert list(reader) == ["b"] and reader.info["images"] == 1
    assert validate_cache(tmp_path / "w.lmdb").ok


def test_version_goes_back_to_2_once_no_record_needs_4(tiny_images, tmp_path):
    store = tmp_path / "w.lmdb"
    with CacheWriter(store) as writer:
        writer.add("a.jpg", path=tiny_images / "a.jpg")
        writer.add("arr", image=_array(3, 3, 0))
    with CacheWriter(store) as writer:
        writer.remove("arr")
    with open_cache(store) as reader:
        assert reader.info["format_version"] == FORMAT_VERSION


def test_other_settings_need_rebuild(tmp_path):
    store = tmp_path / "w.lmdb"
    with CacheWriter(store, max_side=64) as writer:
        writer.add("a", image=_array(100, 100, 0))
    with pytest.raises(SettingsMismatchError, match="--rebuild"):
        CacheWriter(store, max_side=32)
    with CacheWriter(store, max_side=32, rebuild=True) as writer:
        assert "a" not in writer  # a rebuild starts empty
        writer.add("b", image=_array(100, 100, 1))
    with open_cache(store) as reader:
        assert list(reader) == ["b"] and reader["b"].image.shape == (32, 32, 3)


def test_two_writers_at_once_are_refused(tmp_path):
    with CacheWriter(tmp_path / "w.lmdb") as writer:
        with pytest.raises(BuildLockedError):
            CacheWriter(tmp_path / "w.lmdb")
        writer.add("a", image=_array(3, 3, 0))
    with CacheWriter(tmp_path / "w.lmdb") as writer:  # released at close
        assert "a" in writer


def test_a_closed_writer_refuses_adds(tmp_path):
    writer = CacheWriter(tmp_path / "w.lmdb")
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.add("a", image=_array(3, 3, 0))


def test_build_cache_keeps_extra_of_unchanged_and_changed_sources(tiny_images, tmp_path):
    store = tmp_path / "val.lmdb"
    build_cache(tiny_images, store, workers=1)
    with CacheWriter(store) as writer:
        writer.add("a.jpg", path=tiny_images / "a.jpg", extra={"label": 1})
        writer.add("b.png", path=tiny_images / "b.png", extra={"label": 2})
        writer.add("not-a-file", image=_array(3, 3, 0))
    (tiny_images / "a.jpg").touch()  # same bytes, new mtime: a fingerprint refresh
    Image.fromarray(_array(20, 10, 9)).save(tiny_images / "b.png")  # new content: decoded
    result = build_cache(tiny_images, store, workers=1)
    assert (result.touched, result.updated, result.removed) == (1, 1, 1)
    with open_cache(store) as reader:
        assert reader["a.jpg"].extra == {"label": 1}
        assert reader["b.png"].extra == {"label": 2} and reader["b.png"].image.shape == (20, 10, 3)
        assert "not-a-file" not in reader
        assert reader.info["format_version"] == EXTENDED_FORMAT_VERSION
    assert validate_cache(store, source=tiny_images).ok


def test_validate_with_source_skips_records_written_from_arrays(tiny_images, tmp_path):
    store = tmp_path / "val.lmdb"
    build_cache(tiny_images, store, workers=1)
    with CacheWriter(store) as writer:
        writer.add("extra-array", image=_array(3, 3, 0))
    report = validate_cache(store, source=tiny_images)
    assert report.ok, report.problems
