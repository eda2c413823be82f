"""Records the store's own settings could not have produced are damage, found before anything
is allocated: forged sizes under a correct seal, a decompression bomb, swapped sides, a scale
that does not match. The reader, validate-cache, an update and copy all refuse them, and
memory stays far below what the forged sizes claim (measured in fresh processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from lmdb_cache import (
    CacheError,
    CacheWriter,
    CorruptRecordError,
    ImageDecodeError,
    SettingsMismatchError,
    StoreDamagedError,
    build_cache,
    copy_cache,
    open_cache,
    validate_cache,
)

from .crafting import bomb_frame, put_raw, sealed

ROOT = str(Path(__file__).resolve().parents[2])
BIN = Path(sys.executable).parent
GIB = 1 << 30
HUGE = 1 << 18  # 262144, the format's longest side
PILLOW_BOMB_LIMIT = 2 * 89_478_485  # Pillow refuses more pixels than this, written out


def _meta(store: Path, key: str) -> dict:
    with open_cache(store) as reader:
        return dict(reader.meta(key))


def _forge(store: Path, key: str, **fields: object) -> None:
    """Replace ``key``'s metadata with a correctly sealed copy carrying ``fields``."""
    meta = {**_meta(store, key), **fields}
    put_raw(store, b"meta", key.encode(), sealed(meta, key.encode()))


def _consistent(width: int, height: int) -> dict:
    """Sizes and scales of a full-size record that agree with each other."""
    return dict(
        width=width,
        height=height,
        raw_width=width,
        raw_height=height,
        orientation=1,
        nbytes=width * height * 3,
        scale=1.0,
        scale_x=1.0,
        scale_y=1.0,
    )


@pytest.fixture()
def zstd_cache(tiny_images: Path) -> Path:
    output = tiny_images.parent / "z.lmdb"
    assert build_cache(tiny_images, output, workers=1, codec="zstd").ok
    return output


def _bomb(store: Path, key: str, width: int, height: int) -> None:
    """``key`` becomes a ~100 KB frame declaring ``width x height`` pixels, under metadata
    that agrees with it in every field and is correctly sealed."""
    frame = bomb_frame(width * height * 3)
    put_raw(store, b"pixels", key.encode(), frame)
    pixels_crc = 0  # never reached: nothing may decompress it
    _forge(
        store,
        key,
        **_consistent(width, height),
        codec="zstd",
        level=5,
        stored_nbytes=len(frame),
        stored_checksum=zlib.crc32(frame),
        checksum=pixels_crc,
    )


def _peak_of(command: list[str]) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``command`` under a fresh Python; return it and its peak resident memory in bytes
    (the wrapper's children only: their memory before exec is the small wrapper's)."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(done.stderr)\n"
        "print(done.returncode)\nprint(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stdout.write(done.stdout)"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *map(str, command)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    code, peak_kib, rest = done.stdout.split("\n", 2)
    return subprocess.CompletedProcess(command, int(code), rest, done.stderr), int(peak_kib) * 1024


# The peak is read from /proc (VmHWM, this program's own address space): getrusage would also
# count the memory of the test process this one was forked from before its exec.
READ_ONE = """
import sys
from lmdb_cache import CacheError, open_cache
try:
    open_cache(sys.argv[1])[sys.argv[2]]
    print("read")
except CacheError as e:
    print(type(e).__name__, e)
with open("/proc/self/status") as status:
    print(next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM")))
"""


def _read_in_child(store: Path, key: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", READ_ONE, str(store), key],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcome, peak = done.stdout.rstrip("\n").rsplit("\n", 1)
    return outcome, int(peak)


# --- the adversary's four cases --------------------------------------------------------------


def test_sealed_forged_size_is_refused_by_the_reader(zstd_cache):
    _forge(zstd_cache, "a.jpg", width=HUGE, height=HUGE, nbytes=HUGE * HUGE * 3)
    with pytest.raises(CorruptRecordError, match="does not follow from raw size 120x80"):
        open_cache(zstd_cache)["a.jpg"]


def test_consistent_forged_size_is_over_the_pixel_ceiling(zstd_cache):
    _forge(zstd_cache, "a.jpg", **_consistent(HUGE, HUGE))
    with pytest.raises(CorruptRecordError, match="over the store's ceiling of 178956970"):
        open_cache(zstd_cache)["a.jpg"]


def test_forged_size_reader_stays_under_1_gib_in_a_fresh_process(zstd_cache):
    _forge(zstd_cache, "a.jpg", **_consistent(HUGE, HUGE))
    outcome, peak = _read_in_child(zstd_cache, "a.jpg")
    assert outcome.startswith("CorruptRecordError") and peak < GIB


def test_forged_size_validate_cache_exits_1_under_1_gib(zstd_cache):
    _forge(zstd_cache, "a.jpg", width=HUGE, height=HUGE, nbytes=HUGE * HUGE * 3)
    done, peak = _peak_of([BIN / "validate-cache", zstd_cache, "--json"])
    assert done.returncode == 1 and "Traceback" not in done.stderr and peak < GIB
    found = {(p["kind"], p["key"]) for p in json.loads(done.stdout)["problems"]}
    assert ("corrupt-meta", "a.jpg") in found


def test_decompression_bomb_is_refused_before_decompressing(zstd_cache):
    _bomb(zstd_cache, "a.jpg", 65536, 16384)  # 3.2 GB declared by a 98 KB frame
    outcome, peak = _read_in_child(zstd_cache, "a.jpg")
    assert outcome.startswith("CorruptRecordError") and "over the store's ceiling" in outcome
    assert peak < GIB


def test_decompression_bomb_validate_cache_exits_1_under_1_gib(zstd_cache):
    _bomb(zstd_cache, "a.jpg", 65536, 16384)
    done, peak = _peak_of([BIN / "validate-cache", zstd_cache, "--json"])
    assert done.returncode == 1 and "Traceback" not in done.stderr and peak < GIB
    assert ("corrupt-meta", "a.jpg") in {
        (p["kind"], p["key"]) for p in json.loads(done.stdout)["problems"]
    }


def test_bomb_in_a_capped_store_is_over_its_cap(many_cache):
    _bomb(many_cache, "img_00.png", 4096, 4096)
    with pytest.raises(CorruptRecordError, match="side over the store's cap of 32"):
        open_cache(many_cache)["img_00.png"]


def test_swapped_width_and_height_are_refused(tiny_cache):
    meta = _meta(tiny_cache, "a.jpg")  # 120 x 80
    _forge(tiny_cache, "a.jpg", width=meta["height"], height=meta["width"])
    with pytest.raises(CorruptRecordError, match=r"size 80x120 does not follow .* \(120x80\)"):
        open_cache(tiny_cache)["a.jpg"]


def test_swapped_sides_of_a_rotated_record_are_refused(tiny_cache):
    # rotated.jpg is 160 x 100 in the file, orientation 6: upright 100 x 160.
    _forge(tiny_cache, "rotated.jpg", width=160, height=100)
    with pytest.raises(CorruptRecordError, match="orientation 6"):
        open_cache(tiny_cache)["rotated.jpg"]


def test_tiny_scale_is_refused(tiny_cache):
    _forge(tiny_cache, "a.jpg", scale_x=1e-300)
    with pytest.raises(CorruptRecordError, match="scale_x=1e-300 does not match"):
        open_cache(tiny_cache)["a.jpg"]


def test_scale_of_a_capped_record_must_match_its_cap(many_cache):
    # 40 x 30 capped at 32: 32 x 24, scale 0.8 on both axes.
    _forge(many_cache, "img_03.png", scale=1.0)
    with pytest.raises(CorruptRecordError, match="scale=1.0 does not match its sizes"):
        open_cache(many_cache)["img_03.png"]


def test_size_that_is_not_the_caps_rounding_is_refused(many_cache):
    # 40 x 30 at a cap of 32 rounds to 32 x 24; 32 x 23 is one row short.
    _forge(many_cache, "img_03.png", height=23, nbytes=32 * 23 * 3, scale_y=23 / 30)
    with pytest.raises(CorruptRecordError, match=r"cap 32 \(32x24\)"):
        open_cache(many_cache)["img_03.png"]


def test_validate_reports_each_forged_record_as_corrupt_meta(tiny_cache):
    _forge(tiny_cache, "a.jpg", width=80, height=120)
    _forge(tiny_cache, "b.png", scale_y=1e-300)
    found = {(p.kind, p.key) for p in validate_cache(tiny_cache).problems}
    assert {("corrupt-meta", "a.jpg"), ("corrupt-meta", "b.png")} <= found


def test_copy_refuses_a_store_with_a_forged_record(tiny_cache, tmp_path):
    _forge(tiny_cache, "a.jpg", **_consistent(HUGE, HUGE))
    with pytest.raises(StoreDamagedError, match="failed validation.*over the store's ceiling"):
        copy_cache(tiny_cache, tmp_path / "copy.lmdb")
    assert not (tmp_path / "copy.lmdb").exists()


def test_update_decodes_a_forged_record_again(tiny_images, tiny_cache):
    _forge(tiny_cache, "a.jpg", **_consistent(HUGE, HUGE))
    result = build_cache(tiny_images, tiny_cache, workers=1)
    assert result.updated + result.added == 1 and result.images == 6
    assert result.total_bytes < 200_000 and any("damaged" in w for w in result.warnings)
    with open_cache(tiny_cache) as reader:
        assert reader["a.jpg"].image.shape == (80, 120, 3)
    assert validate_cache(tiny_cache).ok


# --- the ceiling: recorded, boundary, refused at write ---------------------------------------


def test_a_new_store_records_pillows_bomb_limit_as_its_ceiling(tiny_cache):
    with open_cache(tiny_cache) as reader:
        assert reader.settings["max_pixels"] == PILLOW_BOMB_LIMIT


def test_a_store_without_a_recorded_ceiling_reads_with_pillows(tiny_cache):
    from lmdb_cache.format.settings import DEFAULT_MAX_PIXELS, pixel_ceiling

    assert pixel_ceiling({"max_side": None}) == DEFAULT_MAX_PIXELS == PILLOW_BOMB_LIMIT


def test_an_image_at_the_ceiling_is_stored_one_pixel_more_is_not(tmp_path):
    with CacheWriter(tmp_path / "c.lmdb", max_pixels=120 * 80) as writer:
        writer.add("at", image=np.zeros((80, 120, 3), np.uint8))
        with pytest.raises(ValueError, match="9601 pixels, over the store's ceiling of 9600"):
            writer.add("over", image=np.zeros((1, 9601, 3), np.uint8))
    with open_cache(tmp_path / "c.lmdb") as reader:
        assert reader.keys() == ["at"] and reader.settings["max_pixels"] == 9600


def test_a_file_over_the_ceiling_fails_with_the_reason(tiny_images, tmp_path):
    with pytest.raises(ImageDecodeError, match="120x80 is 9600 pixels, over .* of 9599"):
        with CacheWriter(tmp_path / "c.lmdb", max_pixels=9599) as writer:
            writer.add("a.jpg", path=tiny_images / "a.jpg")


def test_records_over_a_lowered_ceiling_are_refused_by_readers(tiny_cache):
    # A manifest whose ceiling is below a record's size: the record is damage to a reader.
    with open_cache(tiny_cache) as reader:
        manifest = reader.info
    manifest["settings"]["max_pixels"] = 100
    put_raw(tiny_cache, b"manifest", b"manifest", sealed(manifest, b"manifest"))
    with pytest.raises(CorruptRecordError, match="over the store's ceiling of 100"):
        open_cache(tiny_cache)["a.jpg"]


@pytest.mark.parametrize("value", [0, (1 << 30) + 1, "many", 2.5], ids=str)
def test_a_manifest_ceiling_outside_the_format_is_damage(tiny_cache, value):
    with open_cache(tiny_cache) as reader:
        manifest = reader.info
    manifest["settings"]["max_pixels"] = value
    put_raw(tiny_cache, b"manifest", b"manifest", sealed(manifest, b"manifest"))
    with pytest.raises(StoreDamagedError, match="max_pixels"):
        open_cache(tiny_cache)


def test_another_ceiling_needs_rebuild(tiny_cache):
    with pytest.raises(SettingsMismatchError, match="max_pixels=178956970.*rebuild"):
        CacheWriter(tiny_cache, max_pixels=10_000)
    with CacheWriter(tiny_cache, max_pixels=10_000, rebuild=True) as writer:
        writer.add("x", image=np.zeros((10, 10, 3), np.uint8))
    with open_cache(tiny_cache) as reader:
        assert reader.settings["max_pixels"] == 10_000


@pytest.mark.parametrize("value", [0, -1, (1 << 30) + 1, 1.5, True], ids=str)
def test_a_ceiling_outside_1_to_2_30_is_a_value_error(tmp_path, value):
    with pytest.raises(ValueError, match="max_pixels must be an integer"):
        CacheWriter(tmp_path / "c.lmdb", max_pixels=value)


def test_cache_errors_are_what_a_caller_catches(zstd_cache):
    _forge(zstd_cache, "a.jpg", scale=0.5)
    with pytest.raises(CacheError):
        open_cache(zstd_cache).view("a.jpg")
