"""validate_cache: healthy stores, flipped bytes, stale entries, annotations, crafted records."""

from __future__ import annotations

import json
import os
import re
import tracemalloc
from pathlib import Path

import msgpack
import pytest

from lmdb_cache import (
    CacheNotFoundError,
    CorruptRecordError,
    FormatVersionError,
    build_cache,
    open_cache,
    validate_cache,
)

from .conftest import noisy_image, save_image
from .crafting import put_raw, sealed

MAX_SIDE = 1 << 18  # the format's bound on a side (schema.MAX_SIDE), written out


def problems(report) -> list[tuple[str, str | None]]:
    return [(p.kind, p.key) for p in report.problems]


def stored_meta(store: Path, key: str) -> dict:
    with open_cache(store) as reader:
        return dict(reader.meta(key))


# --- healthy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("with_source", [False, True], ids=["alone", "with-source"])
def test_healthy_cache_is_ok(tiny_images, tiny_cache, with_source):
    report = validate_cache(tiny_cache, source=tiny_images if with_source else None)
    assert (report.ok, problems(report), report.warnings) == (True, [], [])


def test_healthy_report_counts_images_and_checked_bytes(tiny_cache):
    with open_cache(tiny_cache) as reader:
        total = sum(reader[k].image.nbytes for k in reader.keys())
    report = validate_cache(tiny_cache)
    assert (report.images, report.checked_bytes) == (6, total)


def test_missing_cache_raises_not_found(tmp_path):
    with pytest.raises(CacheNotFoundError, match="does not exist; build it"):
        validate_cache(tmp_path / "nothing.lmdb")


def test_source_that_is_not_a_folder_raises(tiny_cache, tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        validate_cache(tiny_cache, source=tmp_path / "no-such-folder")


# --- corrupted pixels ------------------------------------------------------------------------


def _flip_pixel_byte(store: Path, key: str) -> None:
    """Flip one byte of ``key``'s pixels inside data.mdb, with the store closed."""
    with open_cache(store) as reader:
        pixels = reader[key].image.tobytes()
    needle = pixels[100:164]  # 64 bytes of noise: occur once in the file
    data_file = store / "data.mdb"
    data = bytearray(data_file.read_bytes())
    at = data.find(needle)
    if at < 0 or data.find(needle, at + 1) >= 0:
        raise RuntimeError("the pixel run is not unique in data.mdb; pick another")
    data[at + 7] ^= 0x01
    data_file.write_bytes(bytes(data))


def test_flipped_pixel_byte_is_a_checksum_problem_naming_the_key(tiny_cache):
    _flip_pixel_byte(tiny_cache, "sub/d.jpg")
    assert problems(validate_cache(tiny_cache)) == [("checksum", "sub/d.jpg")]


def test_flipped_pixel_byte_is_not_seen_without_checksums(tiny_cache):
    _flip_pixel_byte(tiny_cache, "sub/d.jpg")
    assert validate_cache(tiny_cache, checksums=False).ok


def test_flipped_pixel_byte_fails_a_verifying_reader(tiny_cache):
    _flip_pixel_byte(tiny_cache, "sub/d.jpg")
    with (
        open_cache(tiny_cache, verify=True) as reader,
        pytest.raises(CorruptRecordError, match="'sub/d.jpg'.*checksum mismatch"),
    ):
        reader["sub/d.jpg"]


# --- stale entries ---------------------------------------------------------------------------


def _change(root: Path) -> str:
    save_image(root / "sub/d.jpg", noisy_image(200, 90, seed=99))
    return "sub/d.jpg"


def _remove(root: Path) -> str:
    (root / "b.png").unlink()
    return "b.png"


def _add(root: Path) -> str:
    save_image(root / "sub/new.png", noisy_image(64, 64, seed=98))
    return "sub/new.png"


STALE = {"stale-changed": _change, "stale-missing": _remove, "stale-new": _add}


@pytest.mark.parametrize("kind", STALE, ids=str)
def test_stale_source_is_a_problem_naming_the_key(tiny_images, tiny_cache, kind):
    key = STALE[kind](tiny_images)
    assert problems(validate_cache(tiny_cache, source=tiny_images)) == [(kind, key)]


def test_stale_problem_is_not_reported_without_a_source(tiny_images, tiny_cache):
    _change(tiny_images)
    assert validate_cache(tiny_cache).ok


def test_touched_but_identical_source_is_not_stale(tiny_images, tiny_cache):
    path = tiny_images / "a.jpg"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert validate_cache(tiny_cache, source=tiny_images).ok


@pytest.fixture()
def cache_with_a_failure(tiny_images):
    (tiny_images / "broken.jpg").write_text("not a JPEG")
    output = tiny_images.parent / "val.lmdb"
    result = build_cache(tiny_images, output, workers=1)
    assert [key for key, _ in result.failures] == ["broken.jpg"]
    return output


def test_source_failed_at_build_is_not_a_problem(tiny_images, cache_with_a_failure):
    assert validate_cache(cache_with_a_failure, source=tiny_images).problems == []


def test_source_failed_at_build_is_a_warning(tiny_images, cache_with_a_failure):
    report = validate_cache(cache_with_a_failure, source=tiny_images)
    assert [(w.kind, w.key) for w in report.warnings] == [("build-failure", "broken.jpg")]
    assert "not an image Pillow can identify" in report.warnings[0].message


# --- annotations -----------------------------------------------------------------------------


def _annotations(tmp_path: Path, images: dict) -> Path:
    path = tmp_path / "val.json"
    path.write_text(json.dumps({"images": images}))
    return path


def test_annotated_image_missing_from_the_cache_is_not_cached(tiny_cache, tmp_path):
    words = {"words": {}}
    path = _annotations(tmp_path, {"a.jpg": words, "missing.jpg": words})
    assert problems(validate_cache(tiny_cache, annotations=path)) == [("not-cached", "missing.jpg")]


def test_annotated_images_all_cached_is_ok(tiny_cache, tmp_path):
    path = _annotations(tmp_path, {"a.jpg": {"words": {}}, "sub/c.png": {"words": {}}})
    assert validate_cache(tiny_cache, annotations=path).ok


def test_annotated_image_that_failed_at_build_says_why(cache_with_a_failure, tmp_path):
    path = _annotations(tmp_path, {"broken.jpg": {"words": {}}})
    report = validate_cache(cache_with_a_failure, annotations=path)
    assert problems(report) == [("not-cached", "broken.jpg")]
    assert "failed at build time" in report.problems[0].message


MALFORMED = {
    "not-json": "{oops",
    "no-images": '{"imgs": {}}',
    "images-is-a-list": '{"images": ["a.jpg"]}',
    "top-level-list": "[]",
}


@pytest.mark.parametrize("content", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_annotation_file_raises_naming_the_file(tiny_cache, tmp_path, content):
    path = tmp_path / "bad-annotations.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"'{path}'")):
        validate_cache(tiny_cache, annotations=path)


def test_missing_annotation_file_raises_naming_the_file(tiny_cache, tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(ValueError, match=re.escape(f"cannot read annotation file '{path}'")):
        validate_cache(tiny_cache, annotations=path)


# --- crafted stores --------------------------------------------------------------------------


def _with_side(meta: dict, side: int) -> dict:
    return {**meta, "width": side, "height": side, "nbytes": side * side * 3}


@pytest.mark.parametrize(
    ("side", "reason"),
    [
        (MAX_SIDE, "does not follow from raw size 120x80"),  # the schema's largest side
        (MAX_SIDE + 1, f"outside 1..{MAX_SIDE}"),
        (10**9, f"outside 1..{MAX_SIDE}"),
    ],
    ids=["largest-legal-side", "one-more", "absurd"],
)
def test_huge_size_in_metadata_is_reported(tiny_cache, side, reason):
    put_raw(
        tiny_cache,
        b"meta",
        b"a.jpg",
        sealed(_with_side(stored_meta(tiny_cache, "a.jpg"), side), b"a.jpg"),
    )
    report = validate_cache(tiny_cache)
    found = [(p.kind, p.key) for p in report.problems if p.key == "a.jpg"]
    assert found == [("corrupt-meta", "a.jpg")]
    assert reason in next(p.message for p in report.problems if p.key == "a.jpg")


def test_size_that_disagrees_with_the_bytes_is_reported_once(tiny_cache):
    meta = stored_meta(tiny_cache, "a.jpg")  # 120 x 80 in truth
    # A raw size that agrees with the forged size: the metadata alone is consistent.
    forged = {**meta, "width": 60, "raw_width": 60, "nbytes": 60 * 80 * 3}
    put_raw(tiny_cache, b"meta", b"a.jpg", sealed(forged, b"a.jpg"))
    assert problems(validate_cache(tiny_cache)) == [("size-mismatch", "a.jpg")]


@pytest.mark.parametrize("side", [MAX_SIDE, 10**9], ids=["largest-legal-side", "absurd"])
@pytest.mark.parametrize("access", ["view", "getitem"], ids=str)
def test_huge_size_in_metadata_raises_corrupt_record(tiny_cache, side, access):
    put_raw(
        tiny_cache,
        b"meta",
        b"a.jpg",
        sealed(_with_side(stored_meta(tiny_cache, "a.jpg"), side), b"a.jpg"),
    )
    with open_cache(tiny_cache) as reader, pytest.raises(CorruptRecordError, match="'a.jpg'"):
        reader.view("a.jpg") if access == "view" else reader["a.jpg"]


@pytest.mark.parametrize("side", [MAX_SIDE, 10**9], ids=["largest-legal-side", "absurd"])
def test_huge_size_in_metadata_allocates_nothing_large(tiny_cache, side):
    put_raw(
        tiny_cache,
        b"meta",
        b"a.jpg",
        sealed(_with_side(stored_meta(tiny_cache, "a.jpg"), side), b"a.jpg"),
    )
    tracemalloc.start()
    try:
        validate_cache(tiny_cache)
        with open_cache(tiny_cache) as reader, pytest.raises(CorruptRecordError):
            reader["a.jpg"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


NOT_PLAIN_MSGPACK = {
    "not-msgpack": b"\xc1\xc1 not msgpack",
    "ext-type": msgpack.packb(msgpack.ExtType(5, b"payload")),
    "pickle": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94.",
    "not-a-map": msgpack.packb([1, 2, 3]),
    "missing-field": msgpack.packb({"width": 10, "height": 10}),
    "truncated": msgpack.packb({"width": 10, "height": 10})[:5],
}


@pytest.mark.parametrize("value", NOT_PLAIN_MSGPACK.values(), ids=NOT_PLAIN_MSGPACK.keys())
def test_metadata_that_is_not_a_plain_record_is_corrupt_meta(tiny_cache, value):
    put_raw(tiny_cache, b"meta", b"a.jpg", value)
    assert problems(validate_cache(tiny_cache)) == [("corrupt-meta", "a.jpg")]


@pytest.mark.parametrize("value", NOT_PLAIN_MSGPACK.values(), ids=NOT_PLAIN_MSGPACK.keys())
def test_metadata_that_is_not_a_plain_record_fails_the_reader(tiny_cache, value):
    put_raw(tiny_cache, b"meta", b"a.jpg", value)
    with open_cache(tiny_cache) as reader, pytest.raises(CorruptRecordError, match="'a.jpg'"):
        reader["a.jpg"]


def test_pixels_without_metadata_are_orphans(tiny_cache):
    put_raw(tiny_cache, b"meta", b"a.jpg", None)
    assert problems(validate_cache(tiny_cache)) == [
        ("orphan-pixels", "a.jpg"),
        ("manifest-mismatch", None),
    ]


def test_metadata_without_pixels_is_missing_pixels(tiny_cache):
    put_raw(tiny_cache, b"pixels", b"a.jpg", None)
    assert problems(validate_cache(tiny_cache)) == [("missing-pixels", "a.jpg")]


@pytest.fixture()
def manifest_v99(tiny_cache):
    with open_cache(tiny_cache) as reader:
        manifest = dict(reader.manifest)
    put_raw(tiny_cache, b"manifest", b"manifest", msgpack.packb({**manifest, "format_version": 99}))
    return tiny_cache


def test_other_format_version_fails_the_reader_with_the_fix(manifest_v99):
    with pytest.raises(
        FormatVersionError, match="format 99, this version reads 2, 3 and 4; rebuild"
    ):
        open_cache(manifest_v99)


def test_other_format_version_is_a_format_problem(manifest_v99):
    assert problems(validate_cache(manifest_v99)) == [("format", None)]


def test_other_format_version_is_refused_by_the_builder(manifest_v99, tiny_images):
    with pytest.raises(FormatVersionError, match="--rebuild"):
        build_cache(tiny_images, manifest_v99, workers=1)


def test_other_format_version_is_rebuilt_with_rebuild(manifest_v99, tiny_images):
    build_cache(tiny_images, manifest_v99, workers=1, rebuild=True)
    assert validate_cache(manifest_v99, source=tiny_images).ok
