"""Annotation parsing (the JSON files and ICDAR lines) and the ICDAR converter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ocr.data.annotations import (
    AnnotationError,
    convert_icdar_folder,
    load_annotations,
    parse_icdar_lines,
)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"imgs": {}}, "no 'images' object"),
        (
            {"images": {"a.jpg": {"words": {"0": {"points": [[0, 0], [1, 1], [2, 2]]}}}}},
            "word '0'.*at least 4",
        ),
        (
            {"images": {"a.jpg": {"words": {"7": {"points": [[0, 0], [1, 1], [2, "x"], [3, 3]]}}}}},
            "word '7'.*point 2",
        ),
        ({"images": {"a.jpg": {"words": {"1": {}}}}}, "word '1'.*'points'"),
    ],
    ids=["no-images", "three-points", "bad-number", "no-points"],
)
def test_malformed_annotations_name_file_and_entry(tmp_path, doc, match):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(AnnotationError, match=match) as info:
        load_annotations(path)
    assert str(path) in str(info.value)


def test_image_without_words_is_allowed(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": {"a.jpg": {"words": {}}}}))
    assert load_annotations(path)["a.jpg"].polygons == []


def test_icdar_lines_handle_bom_crlf_and_commas_in_text(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes("\ufeff1,2,3,2,3,4,1,4,TOTAL, RM 5,00\r\n\r\n5,6,7,6,7,8,5,8,A\r\n".encode())
    lines = parse_icdar_lines(path)
    assert [t for _, t in lines] == ["TOTAL, RM 5,00", "A"]
    np.testing.assert_array_equal(lines[0][0], [[1, 2], [3, 2], [3, 4], [1, 4]])


def test_icdar_line_with_too_few_numbers_names_the_line(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("1,2,3,2,3,4,1,4,ok\n1,2,x,4,5,6,7,8,bad\n")
    with pytest.raises(AnnotationError, match="line 2"):
        parse_icdar_lines(path)


SROIE_BOX = Path(__file__).resolve().parents[3] / "shared" / "data" / "sroie-dev" / "box"


@pytest.mark.skipif(not SROIE_BOX.is_dir(), reason=f"shared test data not found at {SROIE_BOX}")
def test_sroie_boxes_convert_line_for_line():
    doc = convert_icdar_folder(SROIE_BOX, SROIE_BOX.parent / "img")
    assert len(doc["images"]) == 105
    for name, entry in doc["images"].items():
        text = (SROIE_BOX / (Path(name).stem + ".csv")).read_bytes().decode("utf-8-sig", "replace")
        assert len(entry["words"]) == sum(1 for line in text.splitlines() if line.strip())
