"""Detections written in the annotation format (raw frame) and drawn over the images."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from ocr.cli import eval_command
from ocr.data.annotations import load_annotations
from ocr.data.dataset import LoadedImage
from ocr.engine import ImageTruth
from ocr.postprocess import Detection
from ocr.predictions import (
    DETECTION_COLOUR,
    TRUTH_COLOUR,
    draw_file_name,
    draw_predictions,
    predictions_to_annotations,
)

# Upright 200 x 300 image of a raw 300 x 200 file with orientation 6 (90 degrees clockwise:
# raw (x, y) -> upright (H - y, x), so upright (u, v) came from raw (v, H - u), H = 200).
UPRIGHT_BOX = np.array([[20.0, 40.0], [120.0, 40.0], [120.0, 60.0], [20.0, 60.0]])
RAW_BOX = [[40.0, 180.0], [40.0, 80.0], [60.0, 80.0], [60.0, 180.0]]


def test_predictions_are_written_in_the_raw_frame_and_load_as_annotations(tmp_path):
    predictions = {"r.jpg": [Detection(UPRIGHT_BOX, 0.87654)], "empty.jpg": []}
    truths = {
        "r.jpg": ImageTruth(6, (300, 200), [], []),
        "empty.jpg": ImageTruth(1, (10, 10), [], []),
    }
    doc = predictions_to_annotations(predictions, truths)
    assert doc["images"]["r.jpg"]["words"]["0000"] == {"points": RAW_BOX, "score": 0.8765}
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(doc))
    loaded = load_annotations(path)
    assert loaded["r.jpg"].polygons[0].tolist() == RAW_BOX
    assert loaded["empty.jpg"].polygons == []


class _Source:
    def load(self, key):
        return LoadedImage(np.zeros((150, 100, 3), np.uint8), 300, 200, 6)  # capped at half


class _Dataset:
    source = _Source()


def test_drawn_boxes_land_on_the_served_pixels(tmp_path):
    truth_box = np.array([[100.0, 200.0], [180.0, 200.0], [180.0, 260.0], [100.0, 260.0]])
    predictions = {"sub/r.jpg": [Detection(UPRIGHT_BOX, 0.9)]}
    truths = {"sub/r.jpg": ImageTruth(6, (300, 200), [truth_box], [False])}
    assert draw_predictions(tmp_path, _Dataset(), predictions, truths, width=1) == 1
    image = np.asarray(Image.open(tmp_path / "sub" / "r.jpg.png"))
    assert image.shape == (150, 100, 3)
    red = np.argwhere((image == DETECTION_COLOUR).all(axis=2))
    green = np.argwhere((image == TRUTH_COLOUR).all(axis=2))
    # The served image is half the upright size: the detection 20..120 x 40..60 becomes
    # 10..60 x 20..30 (rows are y), the truth 100..180 x 200..260 becomes 50..90 x 100..130.
    assert red[:, 1].min() >= 9 and red[:, 1].max() <= 61 and red[:, 0].min() >= 19
    assert red[:, 0].max() <= 31 and len(red) > 100
    assert green[:, 1].min() >= 49 and green[:, 1].max() <= 91 and green[:, 0].min() >= 99
    assert green[:, 0].max() <= 131 and len(green) > 120


def test_draw_file_names_stay_inside_the_folder():
    assert draw_file_name("a.jpg") == "a.jpg.png"
    assert draw_file_name("sub/b.png") == "sub/b.png.png"
    assert draw_file_name("../../etc/x.jpg") == "etc/x.jpg.png"


def test_ocr_eval_draws_one_png_per_image_and_writes_loadable_predictions(trained, tmp_path):
    cfg, _, out = trained
    drawn, pred = tmp_path / "drawn", tmp_path / "pred.json"
    result = CliRunner().invoke(
        eval_command,
        ["-k", str(out / "last.pt"), "--quiet", "--draw", str(drawn), "--predictions", str(pred)],
    )
    assert result.exit_code == 0, result.output
    val = load_annotations(cfg["datasets"]["val_dataset"]["annotation_path"])
    pngs = sorted(p.relative_to(drawn).as_posix() for p in drawn.rglob("*.png"))
    assert pngs == sorted(f"{key}.png" for key in val)
    for key, ann in val.items():
        image = np.asarray(Image.open(drawn / f"{key}.png"))
        if any(t != "###" for t in ann.texts):
            assert (image == TRUTH_COLOUR).all(axis=2).sum() > 50, key  # the boxes are drawn
    assert load_annotations(pred).keys() == val.keys()
