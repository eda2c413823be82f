"""Mode conversion against Pillow or an independent computation; update and failure handling."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from lmdb_cache import build_cache, open_cache
from lmdb_cache.write import store as store_module

RNG = np.random.default_rng(42)
RGB = RNG.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, size=(37, 53), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, size=(37, 53), dtype=np.uint8)


def _pillow(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def _cached(tmp_path, name, image, **save):
    folder = tmp_path / "img"
    folder.mkdir(exist_ok=True)
    image.save(folder / name, **save)
    result = build_cache(folder, tmp_path / "c.lmdb", workers=1)
    assert result.ok, result.failures
    with open_cache(tmp_path / "c.lmdb") as reader:
        return reader[name].image, folder / name


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


PILLOW_CASES = {
    "L-png": ("a.png", lambda: Image.fromarray(GREY, "L"), {}),
    "RGB-png-orientation5": ("a.png", lambda: Image.fromarray(RGB), {"exif": _exif(5)}),
    "RGB-jpeg-orientation7": ("a.jpg", lambda: Image.fromarray(RGB), {"exif": _exif(7)}),
    "L-jpeg-orientation8": ("a.jpg", lambda: Image.fromarray(GREY, "L"), {"exif": _exif(8)}),
    "CMYK-jpeg": ("a.jpg", lambda: Image.fromarray(RGB).convert("CMYK"), {}),
    "CMYK-tiff": ("a.tif", lambda: Image.fromarray(RGB).convert("CMYK"), {}),
    "P-png": ("a.png", lambda: Image.fromarray(RGB).quantize(64), {}),
    "1-bmp": ("a.bmp", lambda: Image.fromarray(GREY > 128), {}),
    "RGB-webp-lossless": ("a.webp", lambda: Image.fromarray(RGB), {"lossless": True}),
}


@pytest.mark.parametrize("case", PILLOW_CASES, ids=str)
def test_mode_matches_pillow_exif_transpose_convert(tmp_path, case):
    name, make, save = PILLOW_CASES[case]
    stored, path = _cached(tmp_path, name, make(), **save)
    np.testing.assert_array_equal(stored, _pillow(path))


def _over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return np.floor(color.astype(np.float64) * a + 255 * (1 - a) + 0.5).astype(np.uint8)


def test_rgba_is_composited_over_white(tmp_path):
    stored, _ = _cached(tmp_path, "a.png", Image.fromarray(np.dstack([RGB, ALPHA]), "RGBA"))
    np.testing.assert_array_equal(stored, _over_white(RGB, ALPHA))


def test_la_is_composited_over_white(tmp_path):
    stored, _ = _cached(tmp_path, "a.png", Image.fromarray(np.dstack([GREY, ALPHA]), "LA"))
    grey3 = np.repeat(GREY[..., None], 3, axis=2)
    np.testing.assert_array_equal(stored, _over_white(grey3, ALPHA))


def test_palette_transparency_is_composited_over_white(tmp_path):
    palette_image = Image.fromarray(RGB).quantize(16)
    palette_image.info["transparency"] = 3
    indices = np.asarray(palette_image)
    colors = np.array(palette_image.getpalette()[: 16 * 3], dtype=np.uint8).reshape(16, 3)
    alpha = np.where(indices == 3, 0, 255).astype(np.uint8)
    stored, _ = _cached(tmp_path, "a.png", palette_image, transparency=3)
    np.testing.assert_array_equal(stored, _over_white(colors[indices], alpha))


def test_sixteen_bit_grey_is_scaled_to_eight_bits(tmp_path):
    values = RNG.integers(0, 65536, size=(37, 53), dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    stored, _ = _cached(tmp_path, "a.png", image)
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(stored, np.repeat(expected[..., None], 3, axis=2))


def test_float_grey_is_rounded_and_clipped(tmp_path):
    values = RNG.uniform(-20, 280, size=(37, 53)).astype(np.float32)
    stored, _ = _cached(tmp_path, "a.tif", Image.fromarray(values, "F"))
    expected = np.clip(np.round(values.astype(np.float64)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(stored, np.repeat(expected[..., None], 3, axis=2))


@pytest.mark.parametrize(
    ("size", "cap", "expected"),
    [((4000, 3000), 1024, (1024, 768)), ((300, 400), 100, (75, 100)), ((90, 60), 100, (90, 60))],
    ids=["landscape", "portrait", "never-upscaled"],
)
def test_max_side_stores_the_hand_computed_size_and_scale(tmp_path, size, cap, expected):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", size, (10, 20, 30)).save(folder / "a.png")
    build_cache(folder, tmp_path / "c.lmdb", max_side=cap, workers=1)
    with open_cache(tmp_path / "c.lmdb") as reader:
        record = reader["a.png"]
    assert (record.meta["width"], record.meta["height"]) == expected
    assert record.meta["scale"] == pytest.approx(max(expected) / max(size))


def _folder(tmp_path, count=4):
    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(count):
        Image.fromarray(RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_rerun_updates_only_what_changed(tmp_path):
    folder = _folder(tmp_path)
    build_cache(folder, tmp_path / "c.lmdb", workers=1)
    Image.new("RGB", (5, 5)).save(folder / "0.png")  # changed
    (folder / "1.png").unlink()  # removed
    Image.new("RGB", (6, 6)).save(folder / "new.png")  # added
    stat = os.stat(folder / "2.png")
    os.utime(folder / "2.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched only
    r = build_cache(folder, tmp_path / "c.lmdb", workers=1)
    assert (r.updated, r.removed, r.added, r.touched, r.unchanged) == (1, 1, 1, 1, 1)


def test_failures_are_reported_and_good_images_stored(tmp_path):
    folder = _folder(tmp_path, count=2)
    (folder / "text.jpg").write_text("hello")
    good = (folder / "0.png").read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    os.symlink(folder / "gone.png", folder / "dangling.png")
    r = build_cache(folder, tmp_path / "c.lmdb", workers=2)
    reasons = dict(r.failures)
    assert sorted(reasons) == ["cut.png", "dangling.png", "text.jpg"]
    assert "unreadable" in reasons["dangling.png"]
    with open_cache(tmp_path / "c.lmdb") as reader:
        assert sorted(reader) == ["0.png", "1.png"]
        assert reader.manifest["failed"] == 3
        assert [k for k, _ in reader.failures()] == ["cut.png", "dangling.png", "text.jpg"]


def test_decompression_bomb_is_a_failure_not_a_crash(tmp_path, monkeypatch):
    folder = _folder(tmp_path, count=1)
    Image.new("RGB", (200, 200)).save(folder / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 // 2)
    r = build_cache(folder, tmp_path / "c.lmdb", workers=1)
    assert [k for k, _ in r.failures] == ["big.png"]
    assert "decompression-bomb" in r.failures[0][1]


def test_map_grows_by_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "MIN_MAP_SIZE", 1 << 20)
    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(RNG.integers(0, 256, (400, 500, 3), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )
    r = build_cache(folder, tmp_path / "c.lmdb", workers=1, commit_images=3)
    assert r.ok and r.total_bytes == 6 * 400 * 500 * 3 > 1 << 20
    with open_cache(tmp_path / "c.lmdb") as reader:
        assert len(reader) == 6


@pytest.mark.parametrize("orientation", [3, 6, 8], ids=lambda o: f"orientation{o}")
def test_tiff_orientation_is_recorded_like_a_jpeg(tmp_path, orientation):
    """Pillow's TIFF loader turns the image upright itself; the record must still say how."""
    raw = Image.fromarray(RGB)  # 53 x 37
    stored_tiff, _ = _cached(tmp_path, "a.tif", raw, exif=_exif(orientation))
    with open_cache(tmp_path / "c.lmdb") as reader:
        meta = reader.meta("a.tif")
    expected = np.asarray(
        raw.transpose(
            {
                3: Image.Transpose.ROTATE_180,
                6: Image.Transpose.ROTATE_270,
                8: Image.Transpose.ROTATE_90,
            }[orientation]
        )
    )
    np.testing.assert_array_equal(stored_tiff, expected)
    assert (meta["raw_width"], meta["raw_height"], meta["orientation"]) == (53, 37, orientation)


def test_link_back_to_a_parent_is_scanned_once(tmp_path):
    folder = _folder(tmp_path, count=1)
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "up")
    r = build_cache(folder, tmp_path / "c.lmdb", workers=1)
    assert r.images == 1


def test_sixteen_bit_grey_with_a_colour_key_is_still_scaled(tmp_path):
    values = np.array([[0, 32767, 65535, 300]], dtype=np.uint16)
    stored, _ = _cached(tmp_path, "a.png", Image.fromarray(values), transparency=300)
    np.testing.assert_array_equal(stored[0, :, 0], [0, 127, 255, 1])
