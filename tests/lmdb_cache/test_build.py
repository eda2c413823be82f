"""build_cache: stored pixels and metadata against Pillow and hashlib, the longest-side cap,
incremental updates, bad sources, settings, map growth, worker parity and a killed build."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from PIL import Image, ImageOps

from lmdb_cache import CacheError, SettingsMismatchError, build_cache, open_cache, validate_cache
from lmdb_cache.write import decoding as decoding_module
from lmdb_cache.write import store as store_module

from .conftest import noisy_image, save_image

TINY_KEYS = ["a.jpg", "b.png", "rotated.jpg", "sub/c.png", "sub/d.jpg", "sub/deeper/e.png"]


def pillow_rgb(path: Path) -> np.ndarray:
    """The independent expectation: Pillow's own EXIF transpose and RGB conversion."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def records(path: Path) -> dict[str, tuple[np.ndarray, dict]]:
    with open_cache(path) as reader:
        return {key: (reader[key].image, reader[key].meta) for key in reader.keys()}


def counts(result) -> dict[str, int]:
    return {
        "added": result.added,
        "updated": result.updated,
        "touched": result.touched,
        "unchanged": result.unchanged,
        "removed": result.removed,
        "failed": len(result.failures),
    }


# --- pixels and metadata -------------------------------------------------------------------


def test_keys_are_sorted_posix_paths_relative_to_the_source(tiny_cache):
    with open_cache(tiny_cache) as reader:
        assert reader.keys() == TINY_KEYS


@pytest.mark.parametrize("key", TINY_KEYS, ids=str)
def test_stored_pixels_equal_pillow_exif_transpose(tiny_images, tiny_cache, key):
    with open_cache(tiny_cache) as reader:
        stored = reader[key].image
    expected = pillow_rgb(tiny_images / key)
    assert stored.dtype == np.uint8 and stored.shape == expected.shape
    np.testing.assert_array_equal(stored, expected)


def test_exif_orientation_6_is_stored_upright(tiny_cache):
    with open_cache(tiny_cache) as reader:
        # 160 wide x 100 high in the file; orientation 6 turns it to 100 wide x 160 high.
        assert reader["rotated.jpg"].image.shape == (160, 100, 3)


def _file_size(path: Path):
    return path.stat().st_size


def _file_sha256(path: Path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file_mtime_ns(path: Path):
    return path.stat().st_mtime_ns


def _pillow_attr(name: str):
    def get(path: Path):
        with Image.open(path) as image:
            return getattr(image, name)

    return get


def _raw_side(index: int):
    def get(path: Path):
        with Image.open(path) as image:
            return image.size[index]

    return get


def _upright_side(index: int):
    return lambda path: pillow_rgb(path).shape[index]


# field -> how to compute its expected value from the source file alone
META_EXPECTATIONS = {
    "width": _upright_side(1),
    "height": _upright_side(0),
    "channels": lambda path: 3,
    "nbytes": lambda path: pillow_rgb(path).nbytes,
    "raw_width": _raw_side(0),
    "raw_height": _raw_side(1),
    "orientation": lambda path: 6 if path.name == "rotated.jpg" else 1,
    "scale": lambda path: 1.0,
    "scale_x": lambda path: 1.0,
    "scale_y": lambda path: 1.0,
    "mode": _pillow_attr("mode"),
    "format": _pillow_attr("format"),
    "source_size": _file_size,
    "source_mtime_ns": _file_mtime_ns,
    "source_sha256": _file_sha256,
    "checksum": lambda path: zlib.crc32(pillow_rgb(path).tobytes()),
}


@pytest.mark.parametrize("field", META_EXPECTATIONS, ids=str)
def test_metadata_field_matches_an_independent_computation(tiny_images, tiny_cache, field):
    expect = META_EXPECTATIONS[field]
    with open_cache(tiny_cache) as reader:
        stored = {key: reader.meta(key)[field] for key in reader.keys()}
    assert stored == {key: expect(tiny_images / key) for key in TINY_KEYS}


def test_manifest_counts_images_and_pixel_bytes(tiny_images, tiny_cache):
    expected_bytes = sum(pillow_rgb(tiny_images / key).nbytes for key in TINY_KEYS)
    with open_cache(tiny_cache) as reader:
        manifest = reader.manifest
    assert (manifest["images"], manifest["total_bytes"], manifest["failed"]) == (
        6,
        expected_bytes,
        0,
    )
    assert manifest["complete"] is True


# --- the longest-side cap ------------------------------------------------------------------

# key -> (stored width, stored height, scale, scale_x, scale_y) under --max-side 64, by hand:
# sub/d.jpg 200x90: 64 / 200 = 0.32, 90 * 0.32 = 28.8 -> 29.
# rotated.jpg 160x100 raw, 100x160 upright: 64 / 160 = 0.4, 100 * 0.4 = 40.
# sub/c.png 96x72: 64 / 96 = 2/3, 72 * 2/3 = 48.
# sub/deeper/e.png 64x100: 64 / 100 = 0.64, 64 * 0.64 = 40.96 -> 41.
CAPPED = {
    "sub/d.jpg": (64, 29, 0.32, 0.32, 29 / 90),
    "rotated.jpg": (40, 64, 0.4, 0.4, 0.4),
    "sub/c.png": (64, 48, 64 / 96, 64 / 96, 48 / 72),
    "sub/deeper/e.png": (41, 64, 0.64, 41 / 64, 0.64),
}


@pytest.fixture()
def capped_cache(tiny_images):
    output = tiny_images.parent / "capped.lmdb"
    assert build_cache(tiny_images, output, max_side=64, workers=1).ok
    return output


@pytest.mark.parametrize("key", CAPPED, ids=str)
def test_max_side_stores_the_hand_computed_size_and_scale(capped_cache, key):
    with open_cache(capped_cache) as reader:
        meta = reader.meta(key)
        shape = reader[key].image.shape
    width, height, scale, scale_x, scale_y = CAPPED[key]
    assert shape == (height, width, 3)
    assert (meta["width"], meta["height"]) == (width, height)
    assert (meta["scale"], meta["scale_x"], meta["scale_y"]) == pytest.approx(
        (scale, scale_x, scale_y), rel=1e-12
    )


@pytest.mark.parametrize("key", ["sub/d.jpg", "rotated.jpg"], ids=str)
def test_max_side_pixels_equal_pillow_bilinear_resize(tiny_images, capped_cache, key):
    width, height = CAPPED[key][:2]
    upright = Image.fromarray(pillow_rgb(tiny_images / key))
    expected = np.asarray(upright.resize((width, height), Image.Resampling.BILINEAR))
    with open_cache(capped_cache) as reader:
        np.testing.assert_array_equal(reader[key].image, expected)


def test_max_side_never_upscales(tiny_images):
    output = tiny_images.parent / "big-cap.lmdb"
    build_cache(tiny_images, output, max_side=4096, workers=1)
    with open_cache(output) as reader:
        np.testing.assert_array_equal(reader["a.jpg"].image, pillow_rgb(tiny_images / "a.jpg"))
        assert reader.meta("a.jpg")["scale"] == 1.0


def test_max_side_equal_to_the_longest_side_keeps_the_image(tiny_images):
    output = tiny_images.parent / "exact-cap.lmdb"
    build_cache(tiny_images, output, max_side=200, workers=1)  # sub/d.jpg is 200 wide
    with open_cache(output) as reader:
        assert (reader.meta("sub/d.jpg")["width"], reader.meta("sub/d.jpg")["scale"]) == (200, 1)


# --- updates -------------------------------------------------------------------------------


def test_rerun_without_changes_decodes_nothing(tiny_images, tiny_cache, monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("an unchanged source was decoded again")

    monkeypatch.setattr(decoding_module, "decode_bytes", no_decode)
    result = build_cache(tiny_images, tiny_cache, workers=1)
    assert counts(result) == {
        "added": 0,
        "updated": 0,
        "touched": 0,
        "unchanged": 6,
        "removed": 0,
        "failed": 0,
    }


def _modify(root: Path) -> None:
    save_image(root / "sub/d.jpg", noisy_image(150, 110, seed=100))


def _remove(root: Path) -> None:
    (root / "b.png").unlink()


def _add(root: Path) -> None:
    save_image(root / "sub/new.png", noisy_image(70, 70, seed=101))


def _touch(root: Path) -> None:
    path = root / "a.jpg"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


UPDATES = {
    "modified": (_modify, {"updated": 1, "unchanged": 5}),
    "removed": (_remove, {"removed": 1, "unchanged": 5}),
    "added": (_add, {"added": 1, "unchanged": 6}),
    "touched": (_touch, {"touched": 1, "unchanged": 5}),
}


@pytest.mark.parametrize("change", UPDATES, ids=str)
def test_update_counts_each_kind_of_change(tiny_images, tiny_cache, change):
    apply, expected = UPDATES[change]
    apply(tiny_images)
    result = build_cache(tiny_images, tiny_cache, workers=1)
    zero = dict.fromkeys(["added", "updated", "touched", "unchanged", "removed", "failed"], 0)
    assert counts(result) == {**zero, **expected}


def test_modified_source_is_decoded_again(tiny_images, tiny_cache):
    _modify(tiny_images)
    build_cache(tiny_images, tiny_cache, workers=1)
    with open_cache(tiny_cache) as reader:
        record = reader["sub/d.jpg"]
    np.testing.assert_array_equal(record.image, pillow_rgb(tiny_images / "sub/d.jpg"))
    assert record.meta["source_sha256"] == _file_sha256(tiny_images / "sub/d.jpg")


def test_removed_source_is_removed_from_the_store(tiny_images, tiny_cache):
    _remove(tiny_images)
    build_cache(tiny_images, tiny_cache, workers=1)
    with open_cache(tiny_cache) as reader:
        assert reader.keys() == [k for k in TINY_KEYS if k != "b.png"]
        assert reader.manifest["images"] == 5


def test_added_source_is_stored(tiny_images, tiny_cache):
    _add(tiny_images)
    build_cache(tiny_images, tiny_cache, workers=1)
    with open_cache(tiny_cache) as reader:
        np.testing.assert_array_equal(
            reader["sub/new.png"].image, pillow_rgb(tiny_images / "sub/new.png")
        )


def test_touched_source_only_has_its_metadata_updated(tiny_images, tiny_cache, monkeypatch):
    _touch(tiny_images)

    def no_decode(*args, **kwargs):
        raise AssertionError("a touched but identical source was decoded again")

    monkeypatch.setattr(decoding_module, "decode_bytes", no_decode)
    build_cache(tiny_images, tiny_cache, workers=1)
    with open_cache(tiny_cache) as reader:
        meta = reader.meta("a.jpg")
        image = reader["a.jpg"].image
    assert meta["source_mtime_ns"] == _file_mtime_ns(tiny_images / "a.jpg")
    np.testing.assert_array_equal(image, pillow_rgb(tiny_images / "a.jpg"))


def test_touched_source_is_unchanged_on_the_next_run(tiny_images, tiny_cache):
    _touch(tiny_images)
    build_cache(tiny_images, tiny_cache, workers=1)
    assert build_cache(tiny_images, tiny_cache, workers=1).unchanged == 6


# --- bad sources ---------------------------------------------------------------------------

BAD_REASONS = {
    "bad/text.jpg": "not an image Pillow can identify",
    "bad/truncated.jpg": "truncated",
    "bad/huge.png": "decompression-bomb",
}
BOMB_LIMIT = 20_000  # Pillow refuses over 2x this: the good images have at most 18,000 pixels


def _write_bad_sources(root: Path) -> None:
    (root / "bad").mkdir()
    (root / "bad/text.jpg").write_text("this is a text file, not a JPEG\n")
    whole = save_image(root / "bad/whole.jpg", noisy_image(140, 140, seed=7)).read_bytes()
    (root / "bad/whole.jpg").unlink()
    (root / "bad/truncated.jpg").write_bytes(whole[: len(whole) // 2])
    save_image(root / "bad/huge.png", noisy_image(250, 250, seed=8))  # 62,500 pixels


@pytest.fixture()
def bad_build(tiny_images, monkeypatch):
    _write_bad_sources(tiny_images)
    # In-process decoding (workers=1), so the decoder sees the lowered limit.
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    output = tiny_images.parent / "val.lmdb"
    return build_cache(tiny_images, output, workers=1), output


@pytest.mark.parametrize("key", BAD_REASONS, ids=str)
def test_bad_source_is_reported_by_path_with_its_reason(bad_build, key):
    result, _ = bad_build
    reasons = dict(result.failures)
    assert key in reasons
    assert BAD_REASONS[key] in reasons[key]


def test_bad_sources_make_the_build_not_ok(bad_build):
    result, _ = bad_build
    assert (result.ok, sorted(k for k, _ in result.failures)) == (False, sorted(BAD_REASONS))


def test_bad_sources_are_listed_by_reader_failures(bad_build):
    _, output = bad_build
    with open_cache(output) as reader:
        assert [key for key, _ in reader.failures()] == sorted(BAD_REASONS)


def test_bad_sources_are_counted_in_the_manifest(bad_build):
    _, output = bad_build
    with open_cache(output) as reader:
        assert (reader.manifest["failed"], reader.manifest["images"]) == (3, 6)


def test_every_good_image_is_stored_despite_bad_sources(bad_build, tiny_images):
    _, output = bad_build
    with open_cache(output) as reader:
        assert reader.keys() == TINY_KEYS
        np.testing.assert_array_equal(
            reader["sub/d.jpg"].image, pillow_rgb(tiny_images / "sub/d.jpg")
        )


def test_fixed_source_leaves_the_failures(bad_build, tiny_images):
    _, output = bad_build
    save_image(tiny_images / "bad/text.jpg", noisy_image(60, 60, seed=9))
    result = build_cache(tiny_images, output, workers=1)
    with open_cache(output) as reader:
        failed = [key for key, _ in reader.failures()]
        manifest_failed = reader.manifest["failed"]
    assert result.added == 1
    assert (failed, manifest_failed) == (["bad/huge.png", "bad/truncated.jpg"], 2)


def test_deleted_bad_source_leaves_the_failures(bad_build, tiny_images):
    _, output = bad_build
    (tiny_images / "bad/text.jpg").unlink()
    build_cache(tiny_images, output, workers=1)
    with open_cache(output) as reader:
        assert [key for key, _ in reader.failures()] == ["bad/huge.png", "bad/truncated.jpg"]
        assert reader.manifest["failed"] == 2


def test_source_that_became_undecodable_loses_its_stale_record(tiny_images, tiny_cache):
    (tiny_images / "a.jpg").write_text("no longer an image")
    result = build_cache(tiny_images, tiny_cache, workers=1)
    with open_cache(tiny_cache) as reader:
        assert ("a.jpg" in reader, [key for key, _ in reader.failures()]) == (False, ["a.jpg"])
    assert dict(result.failures) == {"a.jpg": "not an image Pillow can identify"}


# --- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [{"max_side": 64}, {"resample": "lanczos"}],
    ids=["max-side", "resample"],
)
def test_other_settings_on_an_existing_store_raise(tiny_images, tiny_cache, settings):
    with pytest.raises(SettingsMismatchError, match="add --rebuild"):
        build_cache(tiny_images, tiny_cache, workers=1, **settings)


def test_rebuild_applies_new_settings(tiny_images, tiny_cache):
    result = build_cache(tiny_images, tiny_cache, max_side=64, rebuild=True, workers=1)
    with open_cache(tiny_cache) as reader:
        assert reader.settings["max_side"] == 64
        assert reader.meta("sub/d.jpg")["width"] == 64
    assert (result.added, result.unchanged) == (6, 0)


def test_builder_refuses_while_a_reader_of_the_store_is_open(tiny_images, tiny_cache):
    with open_cache(tiny_cache), pytest.raises(CacheError, match=r"reader\.close\(\)"):
        build_cache(tiny_images, tiny_cache, workers=1)


# --- map growth and worker parity ---------------------------------------------------------


def test_map_grows_past_its_initial_size(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "MIN_MAP_SIZE", 1 << 20)
    for i in range(4):  # 4 x 500 x 400 x 3 = 2.4 MB of pixels, over the 1 MiB map
        save_image(tmp_path / "img" / f"{i}.png", noisy_image(500, 400, seed=i))
    output = tmp_path / "img.lmdb"
    result = build_cache(tmp_path / "img", output, workers=1, commit_images=1)
    assert result.ok and result.total_bytes == 4 * 500 * 400 * 3
    assert (output / "data.mdb").stat().st_size > 1 << 20
    with open_cache(output) as reader:
        np.testing.assert_array_equal(reader["3.png"].image, pillow_rgb(tmp_path / "img/3.png"))


def test_two_worker_processes_store_the_same_records_as_one(tiny_images):
    one = build_cache(tiny_images, tiny_images.parent / "one.lmdb", workers=1)
    two = build_cache(tiny_images, tiny_images.parent / "two.lmdb", workers=2)
    assert one.ok and two.ok
    serial, parallel = (
        records(tiny_images.parent / "one.lmdb"),
        records(tiny_images.parent / "two.lmdb"),
    )
    assert list(parallel) == list(serial)
    assert [parallel[k][1] for k in serial] == [serial[k][1] for k in serial]
    assert all(np.array_equal(parallel[k][0], serial[k][0]) for k in serial)


# --- a build killed with SIGKILL ------------------------------------------------------------

KILL_IMAGES = 40
# commit_images is not a CLI flag: the child calls build_cache directly, committing every 2.
_CHILD = (
    "import sys\n"
    "from lmdb_cache import build_cache\n"
    "build_cache(sys.argv[1], sys.argv[2], workers=1, commit_images=2)\n"
)


def _committed(output: Path) -> int:
    """Records committed by an unfinished build; 0 before it is readable, -1 once complete."""
    if not (output / "data.mdb").exists():
        return 0
    try:
        with open_cache(output) as reader:  # closed again before the child is killed
            return -1 if reader.manifest["complete"] else len(reader)
    except CacheError:
        return 0


@pytest.fixture(scope="module")
def killed_build(tmp_path_factory):
    """A build of 40 noise PNGs killed with SIGKILL once it has committed some records.

    Returns the source folder, the store, the child's return code and the records it holds.
    """
    root = tmp_path_factory.mktemp("killed")
    source = root / "img"
    source.mkdir()
    for i in range(KILL_IMAGES):
        pixels = np.random.default_rng(i).integers(0, 256, (600, 800, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(source / f"img_{i:03d}.png", compress_level=1)
    output = root / "img.lmdb"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(source), str(output)])
    seen = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            seen = _committed(output)
            if seen != 0:
                break
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    if not 0 < seen < KILL_IMAGES:
        pytest.fail(f"the build was not killed part-way (saw {seen}, rc {child.returncode})")
    with open_cache(output) as reader:
        stored = len(reader)
    return source, output, child.returncode, stored


@pytest.fixture(scope="module")
def resumed_build(killed_build, tmp_path_factory):
    """A copy of the killed store, brought up to date by an in-process build."""
    source, killed, _, stored = killed_build
    output = tmp_path_factory.mktemp("resumed") / "img.lmdb"
    output.mkdir()
    shutil.copy2(killed / "data.mdb", output / "data.mdb")
    result = build_cache(source, output, workers=1)
    return source, output, result, stored


@pytest.mark.slow
def test_killed_build_was_killed_by_sigkill(killed_build):
    assert killed_build[2] == -signal.SIGKILL


@pytest.mark.slow
def test_killed_build_leaves_only_the_incomplete_problem(killed_build):
    _, output, _, _ = killed_build
    report = validate_cache(output)  # checksums every record present
    assert [(p.kind, p.key) for p in report.problems] == [("incomplete", None)]


@pytest.mark.slow
def test_killed_build_records_present_equal_pillow(killed_build):
    source, output, _, _ = killed_build
    with open_cache(output, verify=True) as reader:
        keys = reader.keys()
        wrong = [k for k in keys if not np.array_equal(reader[k].image, pillow_rgb(source / k))]
    assert (len(keys) > 0, wrong) == (True, [])


@pytest.mark.slow
def test_resumed_build_decodes_only_what_was_not_committed(resumed_build):
    _, _, result, stored = resumed_build
    assert (result.ok, result.unchanged, result.added) == (True, stored, KILL_IMAGES - stored)


@pytest.mark.slow
def test_resumed_build_validates_against_its_source(resumed_build):
    source, output, _, _ = resumed_build
    report = validate_cache(output, source=source)
    assert report.problems == []


@pytest.mark.slow
def test_resumed_build_is_complete(resumed_build):
    _, output, _, _ = resumed_build
    with open_cache(output) as reader:
        assert (len(reader), reader.manifest["complete"]) == (KILL_IMAGES, True)


@pytest.mark.slow
def test_resumed_build_pixels_equal_pillow(resumed_build):
    source, output, _, _ = resumed_build
    with open_cache(output) as reader:
        wrong = [
            k for k in reader.keys() if not np.array_equal(reader[k].image, pillow_rgb(source / k))
        ]
    assert wrong == []
