"""``lmdb-cache ls`` and ``lmdb-cache show``: listings checked against the images the fixtures
made, outlines checked against geometry worked out by hand, and the errors' messages and exit
codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lmdb_cache import CacheReader, CacheWriter, build_cache, open_cache
from lmdb_cache.annotations import AnnotationError, NotAnnotatedError, read_words
from lmdb_cache.cli import cli

from .conftest import TINY_SPEC
from .crafting import put_raw

RED = (255, 0, 0)
BLUE = (0, 90, 255)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _expected_listing(key: str) -> dict:
    """A record of the full-size tiny cache, from the fixture's table: orientation 6 swaps the
    sides; raw pixels, no extra."""
    width, height, _, orientation = TINY_SPEC[key]
    stored_w, stored_h = (height, width) if orientation == 6 else (width, height)
    return {
        "key": key,
        "width": stored_w,
        "height": stored_h,
        "raw_width": width,
        "raw_height": height,
        "orientation": orientation or 1,
        "nbytes": stored_w * stored_h * 3,
        "stored_nbytes": stored_w * stored_h * 3,
        "codec": "raw",
        "has_extra": False,
    }


# --- ls ----------------------------------------------------------------------------------------


def test_ls_json_lists_every_record_built(tiny_cache):
    result = invoke("ls", tiny_cache, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [_expected_listing(k) for k in sorted(TINY_SPEC)]


def test_ls_lines_are_in_storage_order_with_size_bytes_orientation_codec(tiny_cache):
    lines = invoke("ls", tiny_cache).stdout.splitlines()
    rows = [line.split() for line in lines[1:-1]]
    assert [r[0] for r in rows] == sorted(TINY_SPEC)
    # rotated.jpg: 160 x 100 in the file, orientation 6, so 100 x 160 stored: 48000 bytes.
    assert rows[2] == ["rotated.jpg", "100x160", "48.0", "KB", "6", "raw"]


def test_ls_footer_counts_records_and_bytes(tiny_cache):
    footer = invoke("ls", tiny_cache).stdout.splitlines()[-1]
    total = sum(_expected_listing(k)["nbytes"] for k in TINY_SPEC)
    assert footer == (
        f"6 records, {total / 1000:.1f} KB stored ({total / 1000:.1f} KB of pixels), "
        "0 compressed, 1 turned upright by EXIF"
    )


def test_ls_json_of_a_capped_compressed_store(tiny_images, tmp_path):
    store = tmp_path / "capped.lmdb"
    build_cache(tiny_images, store, max_side=64, codec="zstd", workers=1)
    rows = {r["key"]: r for r in json.loads(invoke("ls", store, "--json").stdout)}
    # a.jpg: 120 x 80 capped at 64 -> 64 x round(80 * 64 / 120) = 64 x 43.
    a = rows["a.jpg"]
    assert (a["width"], a["height"], a["nbytes"], a["codec"]) == (64, 43, 64 * 43 * 3, "zstd")
    with open_cache(store) as reader:  # the zstd frame's length, as the store holds it
        assert a["stored_nbytes"] == len(reader.raw_value("pixels", b"a.jpg"))


def test_ls_json_shows_records_with_extra(tmp_path):
    with CacheWriter(tmp_path / "own.lmdb") as writer:
        writer.add("plain", image=np.zeros((4, 6, 3), np.uint8))
        writer.add("labelled", image=np.zeros((4, 6, 3), np.uint8), extra={"label": 3})
    rows = json.loads(invoke("ls", tmp_path / "own.lmdb", "--json").stdout)
    assert [(r["key"], r["has_extra"]) for r in rows] == [("labelled", True), ("plain", False)]


def test_ls_of_an_empty_store_is_an_empty_list(tmp_path):
    with CacheWriter(tmp_path / "empty.lmdb"):
        pass
    result = invoke("ls", tmp_path / "empty.lmdb", "--json")
    assert (result.exit_code, json.loads(result.stdout)) == (0, [])


def test_ls_reads_metadata_only(tiny_cache, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("ls must not read pixels or build the key list")

    for name in ("view", "__getitem__", "read_into", "keys"):
        monkeypatch.setattr(CacheReader, name, refuse)
    result = invoke("ls", tiny_cache, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 6


def test_ls_of_a_missing_store_is_a_usage_error(tmp_path):
    result = invoke("ls", tmp_path / "none.lmdb")
    assert result.exit_code == 2
    assert "does not exist; build it with 'build-cache" in result.stderr


def test_ls_of_a_folder_without_a_store_exits_1(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("ls", tmp_path / "empty")
    assert result.exit_code == 1
    assert "no data.mdb" in result.stderr


def test_ls_of_a_truncated_store_exits_1_naming_it(tiny_cache):
    data = tiny_cache / "data.mdb"
    data.write_bytes(data.read_bytes()[: 3 * 4096])
    result = invoke("ls", tiny_cache)
    assert result.exit_code == 1
    assert "data.mdb" in result.stderr


def test_ls_json_stops_at_a_corrupt_record_with_a_closed_list(tiny_cache):
    put_raw(tiny_cache, b"meta", b"sub/c.png", b"not a sealed value")
    result = invoke("ls", tiny_cache, "--json")
    assert result.exit_code == 1
    assert [r["key"] for r in json.loads(result.stdout)] == ["a.jpg", "b.png", "rotated.jpg"]
    assert "'sub/c.png'" in result.stderr and "corrupt" in result.stderr


# --- show: pixels --------------------------------------------------------------------------------


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_show_writes_the_stored_pixels(tiny_cache, tmp_path):
    out = tmp_path / "rotated.png"
    result = invoke("show", tiny_cache, "rotated.jpg", "-o", out)
    assert result.exit_code == 0, result.output
    with open_cache(tiny_cache) as reader:
        assert np.array_equal(_png(out), reader["rotated.jpg"].image)


def test_show_of_a_key_not_in_the_store_names_it_and_suggests_ls(tiny_cache, tmp_path):
    result = invoke("show", tiny_cache, "nope.jpg", "-o", tmp_path / "x.png")
    assert result.exit_code == 2
    assert "'nope.jpg' is not in cache" in result.stderr
    assert f"lmdb-cache ls {tiny_cache}" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_show_of_a_missing_store_is_a_usage_error(tmp_path):
    result = invoke("show", tmp_path / "none.lmdb", "a.jpg", "-o", tmp_path / "x.png")
    assert result.exit_code == 2


def test_show_to_an_unwritable_path_exits_1(tiny_cache, tmp_path):
    result = invoke("show", tiny_cache, "a.jpg", "-o", tmp_path / "no" / "such" / "dir.png")
    assert result.exit_code == 1
    assert "cannot write" in result.stderr


# --- show: polygons -------------------------------------------------------------------------------

# rotated.jpg is 160 x 100 in the file with EXIF orientation 6 (turn 90 degrees clockwise):
# a raw point (x, y) lands at (100 - y, x) upright, in an image 100 wide and 160 high.
# The raw rectangle x 20..60, y 10..30 is therefore upright x 70..90, y 20..60.
RAW_RECT = [[20, 10], [60, 10], [60, 30], [20, 30]]
UPRIGHT_RECT = (70, 20, 90, 60)  # x0, y0, x1, y1


def _annotations(tmp_path: Path, words: dict, key: str = "rotated.jpg") -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": {key: {"words": words}}}))
    return path


def _drawn_mask(cache: Path, key: str, out: Path, colour=RED) -> np.ndarray:
    """Pixels of the PNG that were drawn in ``colour`` (changed from the stored pixels)."""
    shown = _png(out)
    with open_cache(cache) as reader:
        stored = reader[key].image
    return np.all(shown == colour, axis=2) & np.any(shown != stored, axis=2)


def _assert_outline(mask: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> None:
    """Every drawn pixel lies on the rectangle's outline (its centre within 1.5 px of a side,
    for a 2 px line and Pillow's whole pixels), and every side is drawn along its length."""
    ii, jj = np.nonzero(mask)
    cx, cy = jj + 0.5, ii + 0.5
    tol = 1.5
    vertical = (np.minimum(abs(cx - x0), abs(cx - x1)) <= tol) & (cy > y0 - tol) & (cy < y1 + tol)
    horizontal = (np.minimum(abs(cy - y0), abs(cy - y1)) <= tol) & (cx > x0 - tol) & (cx < x1 + tol)
    assert np.all(vertical | horizontal), "drawn pixels off the expected outline"
    for x in (x0, x1):  # each row inside the side has a drawn pixel next to the line x
        rows = {int(i) for i, c in zip(ii, cx, strict=True) if abs(c - x) <= tol}
        assert set(range(int(y0) + 2, int(y1) - 2)) <= rows
    for y in (y0, y1):
        cols = {int(j) for j, c in zip(jj, cy, strict=True) if abs(c - y) <= tol}
        assert set(range(int(x0) + 2, int(x1) - 2)) <= cols


def test_show_maps_raw_polygons_through_the_orientation(tiny_cache, tmp_path):
    ann = _annotations(tmp_path, {"w1": {"points": RAW_RECT, "text": "TOTAL"}})
    out = tmp_path / "shown.png"
    result = invoke("show", tiny_cache, "rotated.jpg", "-o", out, "--annotations", ann)
    assert result.exit_code == 0, result.output
    _assert_outline(_drawn_mask(tiny_cache, "rotated.jpg", out), *UPRIGHT_RECT)


def test_show_maps_raw_polygons_onto_a_capped_store(tiny_images, tmp_path):
    store = tmp_path / "capped.lmdb"
    build_cache(tiny_images, store, max_side=80, workers=1)
    ann = _annotations(tmp_path, {"w1": {"points": RAW_RECT}})
    out = tmp_path / "shown.png"
    invoke("show", store, "rotated.jpg", "-o", out, "--annotations", ann)
    # Upright 100 x 160 capped at 80 is 50 x 80: every coordinate halves.
    _assert_outline(_drawn_mask(store, "rotated.jpg", out), 35, 10, 45, 30)


def test_show_draws_polygons_given_upright_without_turning_them(tiny_cache, tmp_path):
    # y up to 150 fits the upright image (160 high) but not the raw one (100 high).
    upright = [[70, 100], [90, 100], [90, 150], [70, 150]]
    ann = _annotations(tmp_path, {"w1": {"points": upright}})
    out = tmp_path / "shown.png"
    result = invoke("show", tiny_cache, "rotated.jpg", "-o", out, "--annotations", ann)
    _assert_outline(_drawn_mask(tiny_cache, "rotated.jpg", out), 70, 100, 90, 150)
    assert "upright frame" in result.stdout


def test_show_draws_dont_care_words_dashed_in_blue(tiny_cache, tmp_path):
    words = {"w1": {"points": RAW_RECT, "text": "###"}}
    out = tmp_path / "shown.png"
    invoke(
        "show", tiny_cache, "rotated.jpg", "-o", out, "--annotations", _annotations(tmp_path, words)
    )
    blue = _drawn_mask(tiny_cache, "rotated.jpg", out, BLUE)
    x0, y0, x1, y1 = UPRIGHT_RECT
    left_side = blue[y0 + 1 : y1 - 1, x0 - 1 : x0 + 1].any(axis=1)
    assert not _drawn_mask(tiny_cache, "rotated.jpg", out, RED).any()
    assert 0.3 < left_side.mean() < 0.9  # dashes and gaps along the side


def test_show_summary_counts_the_polygons(tiny_cache, tmp_path):
    words = {"a": {"points": RAW_RECT}, "b": {"points": RAW_RECT, "text": "###"}}
    out = tmp_path / "shown.png"
    result = invoke(
        "show", tiny_cache, "rotated.jpg", "-o", out, "--annotations", _annotations(tmp_path, words)
    )
    assert "100x160 (raw 160x100, orientation 6), 2 polygons (1 don't care)" in result.stdout


def test_show_of_a_key_not_annotated_is_a_usage_error(tiny_cache, tmp_path):
    ann = _annotations(tmp_path, {}, key="a.jpg")
    result = invoke(
        "show", tiny_cache, "rotated.jpg", "-o", tmp_path / "x.png", "--annotations", ann
    )
    assert result.exit_code == 2
    assert f"'rotated.jpg' has no entry in annotation file '{ann}'" in result.stderr


def test_show_with_malformed_annotations_names_the_file_and_word(tiny_cache, tmp_path):
    ann = _annotations(tmp_path, {"w7": {"points": [[1, 2], [3, 4]]}})
    result = invoke(
        "show", tiny_cache, "rotated.jpg", "-o", tmp_path / "x.png", "--annotations", ann
    )
    assert result.exit_code == 2
    assert f"annotation file '{ann}', image 'rotated.jpg', word 'w7'" in result.stderr


# --- the annotation reader -----------------------------------------------------------------------


def test_read_words_flags_dont_care_and_keeps_file_order(tmp_path):
    words = {"2": {"points": RAW_RECT, "text": "###"}, "1": {"points": RAW_RECT, "text": "A"}}
    read = read_words(_annotations(tmp_path, words), "rotated.jpg")
    assert [(w.id, w.text, w.dont_care) for w in read] == [("2", "###", True), ("1", "A", False)]
    assert np.array_equal(read[0].points, np.array(RAW_RECT, dtype=np.float64))


def test_read_words_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"images": {"a.jpg": {}}}).encode())
    assert read_words(path, "a.jpg") == []


def test_read_words_of_an_unannotated_key_raises_key_error(tmp_path):
    with pytest.raises(NotAnnotatedError, match="'b.jpg' has no entry"):
        read_words(_annotations(tmp_path, {}, key="a.jpg"), "b.jpg")


@pytest.mark.parametrize(
    "points",
    [[[0, 0], [1, 0], [1, 1], [0, True]], [[0, 0], [1, 0], [1, 1], [0, 1e999]], "0,0,1,1"],
    ids=["bool", "infinite", "string"],
)
def test_read_words_refuses_bad_points(tmp_path, points):
    with pytest.raises(AnnotationError, match="word 'w'"):
        read_words(_annotations(tmp_path, {"w": {"points": points}}), "rotated.jpg")
