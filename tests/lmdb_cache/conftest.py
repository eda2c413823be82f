"""Fixtures for the cache tests: a tiny folder of generated images and a cache built from it.

``tiny_images`` is ``<tmp>/data/val`` and holds six images, each with its own random content:

=====================  ======  ==========================  ============================
key                    format  size as stored in the file  notes
=====================  ======  ==========================  ============================
``a.jpg``              JPEG    120 x 80                    RGB
``b.png``              PNG     60 x 150                    RGB
``rotated.jpg``        JPEG    160 x 100                   EXIF orientation 6 (upright
                                                           it is 100 wide, 160 high)
``sub/c.png``          PNG     96 x 72                     greyscale (mode L)
``sub/d.jpg``          JPEG    200 x 90                    RGB
``sub/deeper/e.png``   PNG     64 x 100                    RGB
=====================  ======  ==========================  ============================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from lmdb_cache import CacheWriter, build_cache
from lmdb_cache.cli import build_command

ORIENTATION_TAG = 0x0112

# key -> (width, height as stored in the file, Pillow mode, EXIF orientation or None)
TINY_SPEC: dict[str, tuple[int, int, str, int | None]] = {
    "a.jpg": (120, 80, "RGB", None),
    "b.png": (60, 150, "RGB", None),
    "rotated.jpg": (160, 100, "RGB", 6),
    "sub/c.png": (96, 72, "L", None),
    "sub/d.jpg": (200, 90, "RGB", None),
    "sub/deeper/e.png": (64, 100, "RGB", None),
}


def noisy_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A gradient with random noise on top: every seed gives different bytes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    gradient = (xx * 200 // max(width - 1, 1) + yy * 55 // max(height - 1, 1)).astype(np.int16)
    channels = 3 if mode == "RGB" else 1
    noise = rng.integers(-60, 61, size=(height, width, channels), dtype=np.int16)
    pixels = np.clip(gradient[..., None] + noise, 0, 255).astype(np.uint8)
    if mode == "L":
        return Image.fromarray(pixels[..., 0], "L")
    return Image.fromarray(pixels, "RGB")


def save_image(path: Path, image: Image.Image, orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    options: dict = {}
    if path.suffix.lower() in (".jpg", ".jpeg"):
        options["quality"] = 90
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = orientation
        options["exif"] = exif
    image.save(path, **options)
    return path


def random_arrays(count: int = 6, seed: int = 7) -> dict[str, np.ndarray]:
    """``count`` small random RGB arrays of different sizes, keyed ``img_0``, ``img_1``..."""
    rng = np.random.default_rng(seed)
    return {
        f"img_{i}": rng.integers(0, 256, size=(8 + i, 11 + 2 * i, 3), dtype=np.uint8)
        for i in range(count)
    }


def write_arrays(path: Path, images: dict[str, np.ndarray]) -> Path:
    """A store of ``images`` written with CacheWriter in the dict's order; each record's extra
    is ``{"label": KEY}`` (the key upper-cased)."""
    with CacheWriter(path) as writer:
        for key, image in images.items():
            writer.add(key, image=image, extra={"label": key.upper()})
    return path


@pytest.fixture()
def tiny_images(tmp_path: Path) -> Path:
    """``<tmp>/data/val`` with the six images of :data:`TINY_SPEC` (see the module docstring)."""
    root = tmp_path / "data" / "val"
    for seed, (key, (width, height, mode, orientation)) in enumerate(TINY_SPEC.items()):
        save_image(root / key, noisy_image(width, height, seed, mode), orientation)
    return root


@pytest.fixture()
def tiny_cache(tiny_images: Path) -> Path:
    """A full-size cache of ``tiny_images`` at its default path, ``<tmp>/data/val.lmdb``."""
    output = tiny_images.parent / "val.lmdb"
    result = build_cache(tiny_images, output, workers=1)
    assert result.ok, result.failures
    return output


@pytest.fixture()
def build_cli() -> Callable[..., Result]:
    """Run ``build-cache`` through click's CliRunner; arguments are stringified, ``-j 1`` added."""

    def run(*args: object) -> Result:
        return CliRunner().invoke(build_command, [*map(str, args), "-j", "1"])

    return run


@pytest.fixture()
def many_images(tmp_path: Path) -> Path:
    """``<tmp>/data/many``: 48 small noisy PNGs (``img_00.png``...), enough records that the
    store's databases have branch pages (tests damage those)."""
    root = tmp_path / "data" / "many"
    for i in range(48):
        save_image(root / f"img_{i:02d}.png", noisy_image(40, 30, seed=100 + i))
    return root


@pytest.fixture()
def many_cache(many_images: Path) -> Path:
    """A cache of ``many_images`` capped at 32 pixels (so a capped store's rules apply)."""
    output = many_images.parent / "many.lmdb"
    result = build_cache(many_images, output, max_side=32, workers=1)
    assert result.ok, result.failures
    return output
