"""DBNet targets against hand-computed geometry; device normalization against the formula;
annotation parsing and the ICDAR converter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ocr.data.annotations import (
    AnnotationError,
    convert_icdar_folder,
    load_annotations,
    parse_icdar_lines,
)
from ocr.data.normalize import DeviceNormalizer
from ocr.data.targets import DBNetTargets

RECT = np.array([[50, 60], [150, 60], [150, 100], [50, 100]], dtype=np.float64)  # 100 x 40


def test_probability_map_is_the_polygon_shrunk_by_dbnet_offset():
    # D = A (1 - r^2) / L = 4000 * 0.84 / 280 = 12: the kernel is 76 x 16 at (62, 72).
    maps = DBNetTargets(shrink_ratio=0.4)((200, 200), [RECT], [False])
    prob = maps.prob_map
    ys, xs = np.nonzero(prob)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == pytest.approx((62, 138, 72, 88), abs=1)
    assert int(prob.sum()) == pytest.approx(76 * 16, rel=0.1)


def test_threshold_map_runs_from_thresh_max_at_the_edge_to_thresh_min_at_d():
    maps = DBNetTargets(thresh_min=0.3, thresh_max=0.7)((200, 200), [RECT], [False])
    thresh = maps.thresh_map
    assert thresh[80, 50] == pytest.approx(0.7, abs=0.03)  # on the left edge (pixel centre 0.5 off)
    assert thresh[80, 44] == pytest.approx(0.7 - 0.4 * 5.5 / 12, abs=0.03)  # 5.5 px outside
    assert thresh[5, 5] == pytest.approx(0.3)  # far away
    assert maps.thresh_mask[80, 40] == 1 and maps.thresh_mask[5, 5] == 0


def test_ignored_polygon_is_masked_not_learned():
    maps = DBNetTargets()((200, 200), [RECT], [True])
    assert maps.prob_map.sum() == 0
    assert maps.prob_mask[80, 100] == 0 and maps.prob_mask[5, 5] == 1


def test_degenerate_polygon_is_masked():
    line = np.array([[10, 10], [100, 10], [100, 10], [10, 10]], dtype=np.float64)
    maps = DBNetTargets()((200, 200), [line], [False])
    assert maps.prob_map.sum() == 0


def test_device_normalization_matches_the_formula():
    nhwc = torch.randint(0, 256, (2, 8, 6, 3), dtype=torch.uint8)
    batch = nhwc.permute(0, 3, 1, 2)  # the channels-first image, by hand
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
    out = DeviceNormalizer("cpu", mean, std)(nhwc)
    assert out.shape == (2, 3, 8, 6) and out.is_contiguous()
    expected = (batch.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_device_normalization_refuses_float_batches():
    with pytest.raises(TypeError, match="uint8"):
        DeviceNormalizer("cpu")(torch.zeros(1, 2, 2, 3))


def test_device_normalization_refuses_channels_first_batches():
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        DeviceNormalizer("cpu")(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


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
