"""Bad sources never stop a build: a FIFO, a name that is not UTF-8, a side the format cannot
hold are each a failure with a reason while every other image is stored; an orientation stored
as a RATIONAL is applied as Pillow applies it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from lmdb_cache import build_cache, open_cache, validate_cache

from .test_sources import RATIONAL, _jpeg_with_orientation

BIN = Path(sys.executable).parent


def _build(source: Path, output: Path) -> subprocess.CompletedProcess:
    """build-cache in its own process, with a deadline: a hang is a failure, not a stuck suite."""
    return subprocess.run(
        [BIN / "build-cache", source, "-o", output, "-j", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fifo_named_like_an_image_is_a_failure_and_the_build_finishes(tiny_images, tmp_path):
    os.mkfifo(tiny_images / "pipe.jpg")
    done = _build(tiny_images, tmp_path / "c.lmdb")
    assert done.returncode == 1
    assert "FAILED pipe.jpg: unreadable: not a regular file (a FIFO)" in done.stderr
    with open_cache(tmp_path / "c.lmdb") as reader:
        assert len(reader) == 6


@pytest.mark.parametrize("content", ["not-an-image", "image"])
def test_name_that_is_not_utf8_is_a_failure_that_never_stops_the_build(
    tiny_images, tmp_path, content
):
    name = os.fsencode(tiny_images) + b"/bad\xff.jpg"
    if content == "image":
        Image.new("RGB", (8, 8)).save(os.fsdecode(name), format="JPEG")
    else:
        with open(name, "wb") as f:
            f.write(b"\x00garbage")
    for _ in range(2):  # and every re-run the same
        done = _build(tiny_images, tmp_path / "c.lmdb")
        assert done.returncode == 1, done.stderr
        assert "FAILED bad\\xff.jpg: the file name is not valid UTF-8" in done.stderr
    report = validate_cache(tmp_path / "c.lmdb", source=tiny_images)
    assert report.ok and report.images == 6
    assert [w.key for w in report.warnings] == ["bad\\xff.jpg"]


def test_side_over_the_format_limit_is_refused_at_build_time(tiny_images, tmp_path):
    Image.new("L", (262_145, 1)).save(tiny_images / "strip.png")
    result = build_cache(tiny_images, tmp_path / "c.lmdb", workers=1)
    assert result.failures == [
        ("strip.png", "width 262145 exceeds the cache format's limit of 262144 pixels per side")
    ]
    assert validate_cache(tmp_path / "c.lmdb").ok


def test_orientation_stored_as_a_rational_is_applied_at_build_time(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    path = _jpeg_with_orientation(source / "r.jpg", RATIONAL, 1, (6).to_bytes(4, "little") * 1
                                  + (1).to_bytes(4, "little"))  # fmt: skip
    build_cache(source, tmp_path / "c.lmdb", workers=1)
    with Image.open(path) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    with open_cache(tmp_path / "c.lmdb") as reader:
        record = reader["r.jpg"]
    assert record.meta["orientation"] == 6
    np.testing.assert_array_equal(record.image, expected)
