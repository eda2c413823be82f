"""The synthetic receipts: EXIF-tagged files whose raw-frame polygons cover the ink."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image, ImageDraw

from ocr.data.dataset import OCRDataset
from ocr.data.transforms import ValTransform
from tools.make_samples import generate


def test_samples_use_orientations_3_6_8_and_polygons_cover_ink(tmp_path):
    ann_path = generate(tmp_path / "img", count=12, seed=5)
    doc = json.loads(ann_path.read_text())
    tags = {Image.open(tmp_path / "img" / name).getexif().get(0x0112) for name in doc["images"]}
    assert {3, 6, 8} <= tags
    ds = OCRDataset(tmp_path / "img", ann_path, ValTransform(640))
    for index in range(len(ds)):
        sample = ds[index]
        grey = sample.image.astype(np.float32).mean(axis=2)
        content_w = int(sample.upright_size[0] / sample.inverse_matrix[0, 0])
        content_h = int(sample.upright_size[1] / sample.inverse_matrix[1, 1])
        ink = np.zeros_like(grey, dtype=bool)
        ink[:content_h, :content_w] = grey[:content_h, :content_w] < 128  # padding is not ink
        mask = Image.new("L", (640, 640), 0)
        for polygon in sample.polygons:
            ImageDraw.Draw(mask).polygon([tuple(p) for p in polygon.tolist()], fill=1)
        inside = np.asarray(mask, dtype=bool)
        # Text boxes hold dark ink (about 20% of their pixels); the page margin above the first
        # line holds none. Polygons left in the raw frame of a rotated file score near 0.
        assert ink[inside].mean() > 0.1, sample.filename
        assert ink[: int(0.04 * content_h), :content_w].mean() < 0.01, sample.filename


def test_demo_says_slower_when_the_cache_run_took_longer():
    from tools.demo import _speedup

    assert _speedup(10.0, 8.0) == "1.25x faster"
    assert _speedup(8.0, 10.0) == "1.25x slower"


def test_icdar2015_labels_convert_to_the_json_labels_of_the_same_pages(tmp_path):
    from ocr.data.formats import convert

    as_json = json.loads(generate(tmp_path / "a", count=4, seed=5).read_text())
    gt = generate(tmp_path / "b", count=4, seed=5, labels="icdar2015")
    assert gt == tmp_path / "b_gt" and not (tmp_path / "b.json").exists()
    first = (gt / "gt_receipt_0000.txt").read_bytes()
    assert first.startswith(b"\xef\xbb\xbf") and first.endswith(b"\r\n")  # as ICDAR 2015 ships
    converted = convert("icdar2015", gt, images=tmp_path / "b")["images"]
    assert converted.keys() == as_json["images"].keys()
    for name, entry in as_json["images"].items():
        words = converted[name]["words"]
        assert [w["points"] for w in words.values()] == [
            w["points"] for w in entry["words"].values()
        ]
        assert all(w["text"] and w["text"] != "###" for w in words.values())
