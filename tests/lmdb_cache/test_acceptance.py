"""The cache's promises on real data: upright EXIF images, pixels equal to Pillow's, corruption
and staleness reported, a killed build that resumes to a valid, complete store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from lmdb_cache import build_cache, open_cache, validate_cache

SHARED = Path(
    os.environ.get(
        "LMDB_CACHE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"
    )
)
EXIF_DIR = SHARED / "exif-orientation"
SROIE_DIR = SHARED / "sroie-dev" / "img"
needs_exif = pytest.mark.skipif(
    not EXIF_DIR.is_dir(), reason=f"shared test data not found at {EXIF_DIR}"
)
needs_sroie = pytest.mark.skipif(
    not SROIE_DIR.is_dir(), reason=f"shared test data not found at {SROIE_DIR}"
)
EXIF_NAMES = [f"{kind}_{n}.jpg" for kind in ("Landscape", "Portrait") for n in range(9)]
SROIE_NAMES = sorted(p.name for p in SROIE_DIR.glob("*.jpg")) if SROIE_DIR.is_dir() else []


def _pillow_reference(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.fixture(scope="module")
def exif_cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("exif") / "exif.lmdb"
    assert build_cache(EXIF_DIR, out, workers=2).ok
    with open_cache(out) as reader:
        yield reader


@pytest.fixture(scope="module")
def sroie_cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("sroie") / "val.lmdb"
    assert build_cache(SROIE_DIR, out, workers=2).ok
    with open_cache(out) as reader:
        yield reader


@needs_exif
@pytest.mark.parametrize("name", EXIF_NAMES, ids=str)
def test_exif_image_is_stored_upright(exif_cache, name):
    record = exif_cache[name]
    expected_size = (1200, 1800) if name.startswith("Landscape") else (1800, 1200)
    assert record.image.shape[:2] == expected_size
    with Image.open(EXIF_DIR / f"{name.split('_')[0]}_1.jpg") as upright:
        reference = np.asarray(upright.convert("RGB"), dtype=np.int16)
    # The 18 files were re-encoded separately: compare with a JPEG tolerance. A wrong
    # rotation or flip of these pictures differs by far more than this on average.
    assert np.abs(record.image.astype(np.int16) - reference).mean() < 10


@needs_exif
def test_a_wrong_orientation_would_fail_the_tolerance(exif_cache):
    flipped = exif_cache["Landscape_1.jpg"].image[:, ::-1].astype(np.int16)
    with Image.open(EXIF_DIR / "Landscape_1.jpg") as upright:
        reference = np.asarray(upright.convert("RGB"), dtype=np.int16)
    assert np.abs(flipped - reference).mean() > 10


@needs_sroie
@pytest.mark.parametrize("name", SROIE_NAMES, ids=str)
def test_receipt_equals_pillow_exif_transpose(sroie_cache, name):
    np.testing.assert_array_equal(sroie_cache.view(name).image, _pillow_reference(SROIE_DIR / name))


def _noise_images(folder: Path, count: int, side: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(side, side + i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:03d}.png", compress_level=1)


def test_flipped_pixel_byte_is_reported(tmp_path):
    _noise_images(tmp_path / "img", 3, 40)
    build_cache(tmp_path / "img", tmp_path / "c.lmdb", workers=1)
    with open_cache(tmp_path / "c.lmdb") as reader:
        needle = reader["img_001.png"].image.tobytes()[:64]
    data_file = tmp_path / "c.lmdb" / "data.mdb"
    data = bytearray(data_file.read_bytes())
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0
    data[at + 10] ^= 0xFF
    data_file.write_bytes(bytes(data))
    report = validate_cache(tmp_path / "c.lmdb")
    assert [(p.kind, p.key) for p in report.problems] == [("checksum", "img_001.png")]


def test_modified_source_is_reported_stale(tmp_path):
    _noise_images(tmp_path / "img", 3, 40)
    build_cache(tmp_path / "img", tmp_path / "c.lmdb", workers=1)
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "img" / "img_002.png")
    report = validate_cache(tmp_path / "c.lmdb", source=tmp_path / "img")
    assert [(p.kind, p.key) for p in report.problems] == [("stale-changed", "img_002.png")]


_CHILD = (
    "import sys; from lmdb_cache import build_cache; "
    "build_cache(sys.argv[1], sys.argv[2], workers=1, commit_images=2)"
)


def test_killed_build_resumes_to_a_valid_complete_store(tmp_path):
    _noise_images(tmp_path / "img", 40, 500)
    out = tmp_path / "c.lmdb"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "img"), str(out)])
    try:
        deadline = time.monotonic() + 60
        stored = 0
        while time.monotonic() < deadline and child.poll() is None:
            if (out / "data.mdb").exists():
                try:
                    with open_cache(out) as reader:
                        stored = len(reader)
                except Exception:
                    stored = 0
                if stored >= 4:
                    break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert 4 <= stored < 40, "the build should have been killed part-way"
    interrupted = validate_cache(out)
    assert [p.kind for p in interrupted.problems] == ["incomplete"]

    result = build_cache(tmp_path / "img", out, workers=1)
    assert result.ok and result.unchanged >= 4
    report = validate_cache(out, source=tmp_path / "img")
    assert report.ok, report.problems
    with open_cache(out) as reader:
        assert len(reader) == 40 and reader.manifest["complete"]
        for i in (0, 39):
            key = f"img_{i:03d}.png"
            np.testing.assert_array_equal(
                reader[key].image, _pillow_reference(tmp_path / "img" / key)
            )
