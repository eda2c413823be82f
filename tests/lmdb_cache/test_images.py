"""Tests for lmdb_cache.images: orientation, the mode rule, size caps, decode errors, scanning.

Every expectation is computed independently of the module: by Pillow's own
``ImageOps.exif_transpose`` + ``convert("RGB")``, by numpy from the arrays the test generated,
or by hand.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from lmdb_cache.errors import ImageDecodeError
from lmdb_cache.images import capped_size, decode_file, scan_images

ORIENTATION = 0x0112


def _pillow_reference(path: Path) -> np.ndarray:
    """What Pillow itself makes of ``path``: upright by EXIF, then ``convert("RGB")``."""
    # Opened from bytes, as decode_file does. Opened by path, Pillow 13 memory-maps an
    # uncompressed L/P/CMYK TIFF using its already-transposed size and scrambles orientations
    # 5..8, so a path-opened reference would be wrong, not the module.
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def _assert_same_pixels(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == np.uint8
    assert got.shape == expected.shape
    differing = int(np.count_nonzero((got != expected).any(axis=-1)))
    assert differing == 0, f"{differing} of {got.shape[0] * got.shape[1]} pixels differ"


def _save(image: Image.Image, path: Path, orientation: int | None = None) -> Path:
    """Write ``image`` with an optional EXIF orientation and check Pillow reads the mode back."""
    if orientation is None:
        image.save(path)
    else:
        exif = image.getexif()
        exif[ORIENTATION] = orientation
        image.save(path, exif=exif)
    with Image.open(path) as written:
        if written.mode != image.mode:
            raise RuntimeError(f"test setup: {path.name} reads back as {written.mode}")
    return path


def _noise(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)


# --- EXIF orientation samples (shared data) ----------------------------------------------------

EXIF_SAMPLES = [
    pytest.param(kind, n, id=f"{kind}_{n}") for kind in ("Landscape", "Portrait") for n in range(9)
]
UPRIGHT_SIZE = {"Landscape": (1800, 1200), "Portrait": (1200, 1800)}

# Mean absolute difference (0..255 scale) allowed between a decoded sample and its
# orientation-1 sibling. The 18 samples were JPEG-encoded separately, so they never match
# exactly: correctly oriented decodes measured 0.0 to 3.7 (worst: Landscape_6). Wrong transforms
# of the same shape (flip left-right, flip top-bottom, rotate 180) measured 43 to 88 (Portrait
# flip left-right the lowest); transposing ones change the shape and fail the size test.
# 8 is twice the worst correct result and over five times below the best wrong one;
# test_orientation_tolerance_rejects_wrong_transforms keeps the second half of that true.
ORIENTATION_TOLERANCE = 8.0


@functools.cache
def _orientation_1_sample(exif_dir: Path, kind: str) -> np.ndarray:
    # Decoded plainly (no EXIF handling at all), as int16 so differences do not wrap.
    with Image.open(exif_dir / f"{kind}_1.jpg") as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


@pytest.mark.parametrize(("kind", "n"), EXIF_SAMPLES)
def test_exif_sample_decodes_to_upright_size(exif_dir: Path, kind: str, n: int) -> None:
    width, height = UPRIGHT_SIZE[kind]
    pixels = decode_file(exif_dir / f"{kind}_{n}.jpg").pixels
    assert pixels.shape == (height, width, 3)


@pytest.mark.parametrize(("kind", "n"), EXIF_SAMPLES)
def test_exif_sample_matches_orientation_1_content(exif_dir: Path, kind: str, n: int) -> None:
    expected = _orientation_1_sample(exif_dir, kind)
    pixels = decode_file(exif_dir / f"{kind}_{n}.jpg").pixels
    assert pixels.shape == expected.shape
    mad = float(np.abs(pixels.astype(np.int16) - expected).mean())
    assert mad < ORIENTATION_TOLERANCE


WRONG_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "flip_left_right": lambda a: a[:, ::-1],
    "flip_top_bottom": lambda a: a[::-1, :],
    "rotate_180": lambda a: a[::-1, ::-1],
}


@pytest.mark.parametrize("transform", sorted(WRONG_TRANSFORMS))
@pytest.mark.parametrize("kind", ["Landscape", "Portrait"])
def test_orientation_tolerance_rejects_wrong_transforms(
    exif_dir: Path, kind: str, transform: str
) -> None:
    upright = _orientation_1_sample(exif_dir, kind)
    wrong = WRONG_TRANSFORMS[transform](upright)
    assert float(np.abs(wrong - upright).mean()) > ORIENTATION_TOLERANCE


# --- Real receipts (shared data) ---------------------------------------------------------------


def test_receipt_decodes_like_pillow(sroie_image_path: Path) -> None:
    # Parametrized per file (id = file name) by tests/conftest.py.
    expected = _pillow_reference(sroie_image_path)
    _assert_same_pixels(decode_file(sroie_image_path).pixels, expected)


# --- Generated images: modes Pillow converts losslessly ----------------------------------------

_W, _H = 13, 9  # not square and not symmetric, so every wrong transform shows


def _make_mode(mode: str) -> Image.Image:
    rgb = _noise(_H, _W, 3, seed=1)
    if mode == "RGB":
        return Image.fromarray(rgb)
    if mode == "L":
        return Image.fromarray(rgb[..., 0])
    if mode == "CMYK":
        return Image.frombytes("CMYK", (_W, _H), _noise(_H, _W, 4, seed=2).tobytes())
    if mode == "P":
        return Image.fromarray(rgb).quantize(colors=16)
    if mode == "1":
        return Image.fromarray(rgb[..., 0] > 127)
    raise ValueError(mode)


_MODE_FORMATS = [
    ("L", "png"), ("L", "jpg"), ("L", "tif"),
    ("RGB", "png"), ("RGB", "jpg"), ("RGB", "tif"),
    ("CMYK", "jpg"), ("CMYK", "tif"),
    ("P", "png"), ("P", "tif"), ("P", "bmp"),
    ("1", "png"), ("1", "tif"), ("1", "bmp"),
]  # fmt: skip


def _generated_cases() -> list[object]:
    cases: list[object] = []
    for mode, ext in _MODE_FORMATS:
        orientations: list[int | None] = [None] if ext == "bmp" else [None, 5, 7]
        if (mode, ext) in {("RGB", "png"), ("L", "tif")}:
            orientations = [None, *range(1, 9)]
        cases += [
            pytest.param(mode, ext, o, id=f"{mode}-{ext}-{'none' if o is None else f'o{o}'}")
            for o in orientations
        ]
    return cases


@pytest.mark.parametrize(("mode", "ext", "orientation"), _generated_cases())
def test_generated_image_decodes_like_pillow(
    tmp_path: Path, mode: str, ext: str, orientation: int | None
) -> None:
    path = _save(_make_mode(mode), tmp_path / f"img.{ext}", orientation)
    _assert_same_pixels(decode_file(path).pixels, _pillow_reference(path))


# --- Generated images: the documented rules where convert("RGB") loses information -------------


def _over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The documented composite, from the generated arrays: (c*a + 255*(255-a) + 127) // 255."""
    c = color.astype(np.int64)
    a = alpha.astype(np.int64)[..., None]
    return ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def _alpha_channel(seed: int) -> np.ndarray:
    alpha = _noise(_H, _W, 1, seed=seed)[..., 0]
    alpha[0, :4] = (0, 255, 1, 254)  # both extremes and their neighbours, always present
    return alpha


def _rgba_case(path: Path) -> np.ndarray:
    color, alpha = _noise(_H, _W, 3, seed=3), _alpha_channel(4)
    _save(Image.fromarray(np.dstack([color, alpha])), path)
    return _over_white(color, alpha)


def _la_case(path: Path) -> np.ndarray:
    grey, alpha = _noise(_H, _W, 1, seed=5)[..., 0], _alpha_channel(6)
    _save(Image.fromarray(np.dstack([grey, alpha])), path)
    return _over_white(_grey_to_rgb(grey), alpha)


def _p_transparency_case(path: Path) -> np.ndarray:
    index = np.arange(_H * _W, dtype=np.uint8).reshape(_H, _W) % 16
    palette = _noise(16, 1, 3, seed=7)[:, 0, :]
    alpha = np.array([0, 255, 1, 254, 128, 64, 200, 3, 90, 255, 0, 17, 33, 250, 127, 180], np.uint8)
    image = Image.frombytes("P", (_W, _H), index.tobytes())
    image.putpalette(palette.tobytes())
    image.info["transparency"] = alpha.tobytes()
    _save(image, path)
    return _over_white(palette[index], alpha[index])


def _l_transparency_key_case(path: Path) -> np.ndarray:
    grey = _noise(_H, _W, 1, seed=8)[..., 0]
    key = int(grey[0, 0])
    image = Image.fromarray(grey)
    image.info["transparency"] = key
    _save(image, path)
    return _over_white(_grey_to_rgb(grey), np.where(grey == key, 0, 255))


ALPHA_CASES: dict[str, Callable[[Path], np.ndarray]] = {
    "RGBA": _rgba_case,
    "LA": _la_case,
    "P-transparency": _p_transparency_case,
    "L-transparency-key": _l_transparency_key_case,
}


@pytest.mark.parametrize("case", sorted(ALPHA_CASES))
def test_transparency_is_composited_over_white(tmp_path: Path, case: str) -> None:
    path = tmp_path / "alpha.png"
    expected = ALPHA_CASES[case](path)
    _assert_same_pixels(decode_file(path).pixels, expected)


# Both ends, both sides of each rounding step near them, and the middle.
_WIDE_VALUES = [0, 1, 128, 129, 255, 256, 257, 32767, 32768, 65278, 65279, 65406, 65534, 65535]


def _wide_grey(values: list[int], dtype: type) -> np.ndarray:
    filler = np.linspace(0, 65535, _H * _W - len(values)).astype(np.int64)
    return np.concatenate([np.array(values), filler]).reshape(_H, _W).astype(dtype)


def _scaled_16(values: np.ndarray) -> np.ndarray:
    v = np.clip(values.astype(np.int64), 0, 65535)
    return _grey_to_rgb((v * 255 + 32767) // 65535)


def _i16_case(path: Path) -> np.ndarray:
    grey = _wide_grey(_WIDE_VALUES, np.uint16)
    _save(Image.fromarray(grey), path)  # mode I;16
    return _scaled_16(grey)


def _i32_case(path: Path) -> np.ndarray:
    grey = _wide_grey([-70000, -1, *_WIDE_VALUES, 65536, 70000, 2**31 - 1], np.int32)
    _save(Image.fromarray(grey), path)  # mode I
    return _scaled_16(grey)


def _float_case(path: Path) -> np.ndarray:
    # No exact .5 values: the rule says "rounded" without naming a tie-break.
    values = [-1e9, -3.2, -0.4, 0.0, 0.4, 0.6, 1.49, 1.51, 127.4, 127.6, 254.4, 254.6, 255.4, 1e9]
    rng = np.random.default_rng(9)
    filler = rng.uniform(-20.0, 280.0, _H * _W - len(values))
    grey = np.concatenate([values, filler]).reshape(_H, _W).astype(np.float32)
    _save(Image.fromarray(grey), path)  # mode F
    rounded = np.floor(grey.astype(np.float64) + 0.5)
    return _grey_to_rgb(np.clip(rounded, 0, 255))


WIDE_CASES: dict[str, tuple[str, Callable[[Path], np.ndarray]]] = {
    "I;16-png": (".png", _i16_case),
    "I;16-tif": (".tif", _i16_case),
    "I-tif": (".tif", _i32_case),
    "F-tif": (".tif", _float_case),
}


@pytest.mark.parametrize("case", sorted(WIDE_CASES))
def test_wide_greyscale_is_scaled_not_clipped(tmp_path: Path, case: str) -> None:
    ext, build = WIDE_CASES[case]
    path = tmp_path / f"grey{ext}"
    expected = build(path)
    _assert_same_pixels(decode_file(path).pixels, expected)


# --- Longest-side cap --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        pytest.param((4000, 3000), 1024, (1024, 768), id="landscape"),
        pytest.param((3000, 4000), 1024, (768, 1024), id="portrait"),
        pytest.param((2048, 2048), 1024, (1024, 1024), id="square"),
        pytest.param((300, 200), 100, (100, 67), id="rounds-66.7-up"),
        pytest.param((1000, 500), 1024, (1000, 500), id="smaller-never-upscaled"),
        pytest.param((1024, 700), 1024, (1024, 700), id="exactly-max-side"),
        pytest.param((700, 1024), 1024, (700, 1024), id="exactly-max-side-portrait"),
        pytest.param((1025, 700), 1024, (1024, 699), id="one-over-max-side"),
        pytest.param((1, 10000), 100, (1, 100), id="thin-keeps-1"),
        pytest.param((10000, 1), 100, (100, 1), id="flat-keeps-1"),
        pytest.param((640, 480), None, (640, 480), id="no-cap"),
    ],
)
def test_capped_size(
    size: tuple[int, int], max_side: int | None, expected: tuple[int, int]
) -> None:
    assert capped_size(*size, max_side) == expected


@pytest.mark.parametrize("max_side", [0, -1])
def test_capped_size_rejects_non_positive_cap(max_side: int) -> None:
    with pytest.raises(ValueError, match="max_side must be a positive integer"):
        capped_size(10, 10, max_side)


@pytest.mark.parametrize(
    ("mode", "ext", "orientation", "max_side", "expected_size"),
    [
        # Raw 300x200 in every case; sizes are (width, height) computed by hand.
        pytest.param("RGB", "png", None, 100, (100, 67), id="rgb-png"),
        pytest.param("RGB", "png", 6, 64, (43, 64), id="rgb-png-o6"),  # 200x300 upright
        pytest.param("L", "jpg", 8, 150, (100, 150), id="l-jpg-o8"),
        pytest.param("CMYK", "tif", 5, 120, (80, 120), id="cmyk-tif-o5"),
        pytest.param("RGB", "jpg", 3, 299, (299, 199), id="rgb-jpg-o3"),  # 199.33 -> 199
        pytest.param("RGB", "png", 6, 1000, (200, 300), id="cap-above-size"),
    ],
)
def test_decode_with_max_side_matches_pillow_resize(
    tmp_path: Path,
    mode: str,
    ext: str,
    orientation: int | None,
    max_side: int,
    expected_size: tuple[int, int],
) -> None:
    source = Image.fromarray(_noise(200, 300, 3, seed=10)).convert(mode)
    path = _save(source, tmp_path / f"big.{ext}", orientation)
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
        expected = np.asarray(upright.resize(expected_size, Image.Resampling.BILINEAR))
    _assert_same_pixels(decode_file(path, max_side=max_side).pixels, expected)


# --- Bad inputs --------------------------------------------------------------------------------


def _names(path: Path) -> str:
    return re.escape(f"cannot decode '{path}'")


def test_truncated_jpeg_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The global must be at its default for a truncated file to be an error at all.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    whole = io.BytesIO()
    Image.fromarray(_noise(128, 128, 3, seed=11)).save(whole, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match=_names(path) + ".*truncated"):
        decode_file(path)


def test_text_file_named_jpg_raises(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("total: 12.50\n")
    with pytest.raises(ImageDecodeError, match=_names(path) + ": not an image Pillow can identify"):
        decode_file(path)


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_unreadable_path_raises(tmp_path: Path, what: str) -> None:
    path = tmp_path / "receipt.jpg"
    if what == "directory":
        path.mkdir()
    with pytest.raises(ImageDecodeError, match=_names(path) + ": unreadable"):
        decode_file(path)


def test_decompression_bomb_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("RGB", (3, 667)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses over 2 x 1000 = 2000
    with pytest.raises(ImageDecodeError, match=_names(path) + ".*decompression-bomb limit"):
        decode_file(path)  # 2001 pixels


def test_image_at_twice_pixel_limit_decodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(Image.new("RGB", (40, 50)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.warns(Image.DecompressionBombWarning):
        pixels = decode_file(path).pixels  # 2000 pixels: Pillow only warns
    assert pixels.shape == (50, 40, 3)


# --- Scanning a folder -------------------------------------------------------------------------


def _touch(root: Path, *keys: str) -> None:
    for key in keys:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # scan_images looks at names only


@pytest.mark.parametrize(
    "name",
    ["a.jpg", "a.JPG", "a.jpeg", "a.JPEG", "a.png", "a.PNG", "a.bmp", "a.Bmp", "a.tif", "a.TIF",
     "a.tiff", "a.TiFf", "a.webp", "a.WEBP"],
)  # fmt: skip
def test_scan_images_finds_image_suffix_in_any_case(tmp_path: Path, name: str) -> None:
    _touch(tmp_path, f"sub/{name}")
    assert scan_images(tmp_path) == [f"sub/{name}"]


@pytest.mark.parametrize(
    "name", ["a.gif", "a.txt", "a.json", "a.jpg.bak", "a_jpg", "jpg", "a.csv", "a.lmdb"]
)
def test_scan_images_ignores_other_files(tmp_path: Path, name: str) -> None:
    _touch(tmp_path, name)
    assert scan_images(tmp_path) == []


def test_scan_images_returns_sorted_relative_posix_keys(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "sub/f.TIFF", "b.jpeg", "sub/deeper/e.tif", "Z.Png", "a.JPG", "sub/d.BMP",
        "g.webp", "album.png/x.png", "c.png", "sub/readme.md",
    )  # fmt: skip
    assert scan_images(tmp_path) == [
        "Z.Png", "a.JPG", "album.png/x.png", "b.jpeg", "c.png", "g.webp",
        "sub/d.BMP", "sub/deeper/e.tif", "sub/f.TIFF",
    ]  # fmt: skip


def test_scan_images_skips_exclude_folder(tmp_path: Path) -> None:
    _touch(tmp_path, "a.jpg", "cache.lmdb/b.jpg", "cache.lmdb/inner/c.png", "sub/cache.lmdb/d.jpg")
    keys = scan_images(tmp_path, exclude=tmp_path / "cache.lmdb")
    assert keys == ["a.jpg", "sub/cache.lmdb/d.jpg"]


def test_scan_images_rejects_a_file_as_root(tmp_path: Path) -> None:
    _touch(tmp_path, "a.jpg")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        scan_images(tmp_path / "a.jpg")
