"""estimate_store and size_warning: sizes from the headers alone (worked out by hand here), files
Pillow cannot open left out, a FIFO never blocks, and the thresholds of the warning."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from lmdb_cache.write.estimate import (
    MIN_DECODED_BYTES,
    MIN_RATIO,
    SizeEstimate,
    estimate_store,
    human_bytes,
    size_warning,
)

from .conftest import noisy_image, save_image


@pytest.fixture()
def two_images(tmp_path: Path) -> Path:
    """``wide.png`` 100 x 50 and ``sub/tall.jpg`` 30 x 200."""
    save_image(tmp_path / "src" / "wide.png", noisy_image(100, 50, seed=1))
    save_image(tmp_path / "src" / "sub" / "tall.jpg", noisy_image(30, 200, seed=2))
    return tmp_path / "src"


def _file_bytes(root: Path, *names: str) -> int:
    return sum((root / n).stat().st_size for n in names)


def test_full_size_bytes_are_width_times_height_times_3(two_images):
    estimate = estimate_store(two_images)
    assert estimate.decoded_bytes == (100 * 50 + 30 * 200) * 3


def test_suggested_side_caps_each_image(two_images):
    estimate = estimate_store(two_images, suggested_side=64)
    # 100 x 50 -> 64 x 32; 30 x 200 -> round(30 * 64 / 200) = round(9.6) = 10 x 64.
    assert estimate.suggested_bytes == (64 * 32 + 10 * 64) * 3


def test_max_side_caps_the_estimate(two_images):
    estimate = estimate_store(two_images, max_side=50)
    # 100 x 50 -> 50 x 25; 30 x 200 -> round(7.5) = 8 x 50.
    assert (estimate.max_side, estimate.decoded_bytes) == (50, (50 * 25 + 8 * 50) * 3)


def test_source_bytes_are_the_files_sizes(two_images):
    estimate = estimate_store(two_images)
    assert estimate.source_bytes == _file_bytes(two_images, "wide.png", "sub/tall.jpg")


def test_only_the_header_is_needed(tmp_path):
    # A PNG cut short after its header: undecodable, but its size is known.
    path = save_image(tmp_path / "src" / "big.png", noisy_image(400, 300, seed=3))
    path.write_bytes(path.read_bytes()[:64])
    estimate = estimate_store(tmp_path / "src")
    assert (estimate.unreadable, estimate.decoded_bytes) == (0, 400 * 300 * 3)


def test_files_pillow_cannot_open_are_left_out(two_images):
    (two_images / "notes.jpg").write_text("not an image")
    estimate = estimate_store(two_images)
    assert (estimate.files, estimate.unreadable) == (3, 1)
    assert estimate.source_bytes == _file_bytes(two_images, "wide.png", "sub/tall.jpg")
    assert estimate.decoded_bytes == (100 * 50 + 30 * 200) * 3


def test_a_fifo_is_left_out_without_blocking(two_images):
    os.mkfifo(two_images / "pipe.jpg")
    found: list[SizeEstimate] = []
    scan = threading.Thread(target=lambda: found.append(estimate_store(two_images)), daemon=True)
    scan.start()
    scan.join(timeout=10)
    assert not scan.is_alive(), "the header scan blocked on a FIFO"
    assert found[0].unreadable == 1


def test_large_folders_are_estimated_from_an_even_sample(tmp_path):
    for i in range(10):  # img_i.png is (10 + i) x 10
        Image.new("RGB", (10 + i, 10), (i, i, i)).save(tmp_path / f"img_{i}.png")
    estimate = estimate_store(tmp_path, limit=4)
    # 4 of 10 sorted keys: positions 0, 2, 5, 7 (i * 10 // 4), scaled by 10 / 4.
    sampled = [0, 2, 5, 7]
    assert (estimate.files, estimate.read) == (10, 4)
    assert estimate.decoded_bytes == round(sum((10 + i) * 10 * 3 for i in sampled) * 10 / 4)
    files = [f"img_{i}.png" for i in sampled]
    assert estimate.source_bytes == round(_file_bytes(tmp_path, *files) * 10 / 4)


def test_given_keys_are_used_instead_of_a_scan(two_images):
    estimate = estimate_store(two_images, ["wide.png"])
    assert (estimate.files, estimate.decoded_bytes) == (1, 100 * 50 * 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"limit": 0}, "limit"), ({"max_side": 0}, "max_side"), ({"suggested_side": 0}, "suggested")],
    ids=["limit", "max_side", "suggested_side"],
)
def test_bad_arguments_raise_value_error(two_images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        estimate_store(two_images, **kwargs)


# --- the warning ------------------------------------------------------------------------------


def _estimate(decoded: int, source: int, suggested: int, max_side: int | None = None):
    return SizeEstimate(
        files=1, read=1, unreadable=0, source_bytes=source, decoded_bytes=decoded,
        suggested_bytes=suggested, max_side=max_side, suggested_side=640,
    )  # fmt: skip


def test_warning_names_both_sizes_the_ratio_and_the_cap():
    message = size_warning(_estimate(6_400_000_000, 211_000_000, 420_000_000))
    assert message == (
        "the decoded store will be about 6.4 GB from 211.0 MB of sources (30x); to train at 640 px "
        "(the ocr configs' transform size) build it with --max-side 640: about 420.0 MB. "
        "Continuing at full size."
    )


BIG = MIN_DECODED_BYTES * 4


@pytest.mark.parametrize(
    ("estimate", "warns"),
    [
        (_estimate(BIG, int(BIG / MIN_RATIO), BIG // 10), False),  # exactly 8x
        (_estimate(BIG, int(BIG / MIN_RATIO) - 1, BIG // 10), True),  # just over 8x
        (_estimate(MIN_DECODED_BYTES, 1000, 1000), False),  # exactly 256 MiB
        (_estimate(MIN_DECODED_BYTES + 1, 1000, 1000), True),  # one byte more
        (_estimate(BIG, 1000, BIG // 2 + 1), False),  # the cap would not halve it
        (_estimate(BIG, 1000, BIG // 2), True),  # it would
        (_estimate(BIG, 1000, BIG // 10, max_side=1024), False),  # already capped
    ],
    ids=[
        "ratio-8x",
        "ratio-over-8x",
        "256MiB",
        "over-256MiB",
        "cap-saves-little",
        "cap-halves",
        "capped",
    ],  # fmt: skip
)
def test_warning_thresholds(estimate, warns):
    assert (size_warning(estimate) is not None) == warns


def test_thresholds_can_be_given():
    estimate = _estimate(10_000_000, 100_000, 1_000_000)
    assert size_warning(estimate) is None
    assert size_warning(estimate, min_bytes=1_000_000, min_ratio=50) is not None


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [(512, "512 B"), (1500, "1.5 KB"), (211_300_000, "211.3 MB"), (6_400_000_000, "6.4 GB")],
    ids=["bytes", "kilobytes", "megabytes", "gigabytes"],
)
def test_human_bytes(nbytes, text):
    assert human_bytes(nbytes) == text
