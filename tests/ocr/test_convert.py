"""ocr-convert: each source format, written by hand from its specification, against JSON
written out by hand; the same boxes in several formats; malformed input; image reports."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ocr.cli import convert_command
from ocr.data.annotations import load_annotations
from ocr.data.formats import ConvertError, convert, formats

# The boxes every format below describes. x and y differ everywhere, so a swap shows.
TOTAL = [[10, 20], [110, 20], [110, 60], [10, 60]]
SKIP = [[5, 70], [50, 70], [50, 90], [5, 90]]
HELLO = [[1, 2], [30, 2], [30, 12], [1, 12]]
CURVE = [[0, 1], [10, 0], [20, 5], [20, 15], [10, 21], [0, 20]]  # six points

# ICDAR 2015 as the challenge ships it: UTF-8 with a BOM, CRLF, "###", commas in the text.
ICDAR_1 = "\ufeff10,20,110,20,110,60,10,60,TOTAL, RM 5,00\r\n5,70,50,70,50,90,5,90,###\r\n"
ICDAR_2 = "\ufeff1,2,30,2,30,12,1,12,HELLO\r\n"

EXPECTED_BOXES = {
    "images": {
        "img_1.jpg": {
            "words": {
                "0000": {"points": TOTAL, "text": "TOTAL, RM 5,00"},
                "0001": {"points": SKIP, "text": "###"},
            }
        },
        "img_2.jpg": {"words": {"0000": {"points": HELLO, "text": "HELLO"}}},
    }
}


def _run(*args: str):
    return CliRunner().invoke(convert_command, list(args))


def _convert_cli(tmp_path, *args: str) -> dict:
    out = tmp_path / "out.json"
    result = _run(*args, "-o", str(out))
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text(encoding="utf-8"))


def _icdar2015(tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "gt_img_1.txt").write_bytes(ICDAR_1.encode("utf-8"))
    (gt / "gt_img_2.txt").write_bytes(ICDAR_2.encode("utf-8"))
    return gt


def _paddleocr(tmp_path, extra_words: str = "") -> object:
    label = tmp_path / "label.txt"
    label.write_text(
        'img_1.jpg\t[{"transcription": "TOTAL, RM 5,00", "points": '
        "[[10, 20], [110, 20], [110, 60], [10, 60]]}, "
        '{"transcription": "###", "points": [[5, 70], [50, 70], [50, 90], [5, 90]]}]\n'
        'img_2.jpg\t[{"transcription": "HELLO", "points": [[1, 2], [30, 2], [30, 12], [1, 12]]}'
        f"{extra_words}]\n",
        encoding="utf-8",
    )
    return label


def _mmocr(tmp_path, img_prefix: str = "", extra: str = "") -> object:
    path = tmp_path / "textdet_test.json"
    path.write_text(
        '{"metainfo": {"dataset_type": "TextDetDataset", "task_name": "textdet", '
        '"category": [{"id": 0, "name": "text"}]}, "data_list": ['
        f'{{"img_path": "{img_prefix}img_1.jpg", "height": 100, "width": 120, "seg_map": "x",'
        ' "instances": ['
        '{"polygon": [10, 20, 110, 20, 110, 60, 10, 60], "bbox": [10, 20, 110, 60],'
        ' "bbox_label": 0, "ignore": false},'
        '{"polygon": [5, 70, 50, 70, 50, 90, 5, 90], "bbox": [5, 70, 50, 90],'
        ' "bbox_label": 0, "ignore": true}]},'
        f'{{"img_path": "{img_prefix}img_2.jpg", "height": 30, "width": 40, "instances": ['
        '{"polygon": [1, 2, 30, 2, 30, 12, 1, 12], "bbox": [1, 2, 30, 12],'
        f' "bbox_label": 0, "ignore": false}}{extra}]}}]}}',
        encoding="utf-8",
    )
    return path


def test_icdar2015_converts_to_expected_json(tmp_path):
    assert _convert_cli(tmp_path, "icdar2015", str(_icdar2015(tmp_path))) == EXPECTED_BOXES


def test_icdar2015_takes_the_image_suffix_from_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "img_1.png").write_bytes(b"")
    (images / "img_2.jpg").write_bytes(b"")
    doc = convert("icdar2015", _icdar2015(tmp_path), images=images)
    assert list(doc["images"]) == ["img_1.png", "img_2.jpg"]


def test_sroie_converts_to_expected_json(tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    (box / "X51.csv").write_bytes(
        b"10,20,110,20,110,60,10,60,TOTAL, RM 5,00\r\n5,70,50,70,50,90,5,90,###\r\n"
    )
    (box / "X52.txt").write_text("1,2,30,2,30,12,1,12,HELLO\n\n", encoding="utf-8")
    expected = {
        "images": {
            "X51.jpg": {
                "words": {
                    "0000": {"points": TOTAL, "text": "TOTAL, RM 5,00"},
                    "0001": {"points": SKIP, "text": "###"},
                }
            },
            "X52.jpg": {"words": {"0000": {"points": HELLO, "text": "HELLO"}}},
        }
    }
    assert _convert_cli(tmp_path, "sroie", str(box)) == expected


def test_mmocr_converts_to_expected_json(tmp_path):
    curve = ', {"polygon": [0, 1, 10, 0, 20, 5, 20, 15, 10, 21, 0, 20], "bbox_label": 0, '
    curve += '"ignore": false}'
    images = tmp_path / "data" / "imgs"
    src = _mmocr(tmp_path, img_prefix=f"{images.as_posix()}/", extra=curve)
    expected = {
        "images": {
            "img_1.jpg": {
                "words": {"0000": {"points": TOTAL}, "0001": {"points": SKIP, "text": "###"}}
            },
            "img_2.jpg": {"words": {"0000": {"points": HELLO}, "0001": {"points": CURVE}}},
        }
    }
    images.mkdir(parents=True)
    assert _convert_cli(tmp_path, "mmocr", str(src), "--images", str(images)) == expected


def test_mmocr_keys_are_img_path_as_written_without_images(tmp_path):
    doc = convert("mmocr", _mmocr(tmp_path, img_prefix="textdet_imgs/test/"))
    assert list(doc["images"]) == ["textdet_imgs/test/img_1.jpg", "textdet_imgs/test/img_2.jpg"]


def test_paddleocr_converts_to_expected_json(tmp_path):
    curve = ', {"transcription": "CURVE", "points": [[0, 1], [10, 0], [20, 5], [20, 15], '
    curve += "[10, 21], [0, 20]]}"
    expected = json.loads(json.dumps(EXPECTED_BOXES))
    expected["images"]["img_2.jpg"]["words"]["0001"] = {"points": CURVE, "text": "CURVE"}
    assert _convert_cli(tmp_path, "paddleocr", str(_paddleocr(tmp_path, curve))) == expected


def test_icdar2015_and_paddleocr_give_the_same_json(tmp_path):
    assert convert("icdar2015", _icdar2015(tmp_path)) == convert("paddleocr", _paddleocr(tmp_path))


def test_mmocr_gives_the_same_polygons_and_dont_cares(tmp_path):
    # MMOCR carries no transcriptions: the same JSON once the other texts are dropped.
    expected = convert("icdar2015", _icdar2015(tmp_path))
    for entry in expected["images"].values():
        for word in entry["words"].values():
            if word["text"] != "###":
                del word["text"]
    assert convert("mmocr", _mmocr(tmp_path)) == expected


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


MALFORMED = {
    "icdar2015-no-text": (
        "icdar2015",
        "gt/gt_img_1.txt",
        "1,2,3,2,3,4,1,4,A\r\n1,2,3,2,3,4,1,4\r\n",
        "line 2",
    ),
    "icdar2015-letter": ("icdar2015", "gt/gt_img_1.txt", "\n1,2,x,2,3,4,1,4,A\n", "line 2"),
    "sroie-seven": ("sroie", "box/a.csv", "1,2,3,2,3,4,1,4,A\n1,2,3,4,5,6,7\n", "line 2"),
    "mmocr-odd": (
        "mmocr",
        "m.json",
        '{"data_list": [{"img_path": "a.jpg", "instances": []}, {"img_path": "b.jpg", '
        '"instances": [{"polygon": [1, 2, 3, 4, 5, 6, 7, 8, 9], "ignore": false}]}]}',
        "data_list entry 1, instance 0",
    ),
    "mmocr-no-path": ("mmocr", "m.json", '{"data_list": [{"instances": []}]}', "entry 0"),
    "paddleocr-no-tab": ("paddleocr", "p.txt", "a.jpg\t[]\nb.jpg []\n", "line 2"),
    "paddleocr-three-points": (
        "paddleocr",
        "p.txt",
        'a.jpg\t[{"transcription": "A", "points": [[0, 0], [1, 0], [1, 1]]}]\n',
        "line 1, word 0",
    ),
}


@pytest.mark.parametrize(("fmt", "name", "text", "where"), MALFORMED.values(), ids=MALFORMED)
def test_malformed_input_names_file_and_line(tmp_path, fmt, name, text, where):
    path = _write(tmp_path, name, text)
    src = path.parent if "/" in name else path
    with pytest.raises(ConvertError, match=where) as info:
        convert(fmt, src)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("fmt", "name", "text", "where"), MALFORMED.values(), ids=MALFORMED)
def test_cli_exits_1_on_malformed_input_with_the_place(tmp_path, fmt, name, text, where):
    path = _write(tmp_path, name, text)
    src = path.parent if "/" in name else path
    out = tmp_path / "out.json"
    result = _run(fmt, str(src), "-o", str(out))
    assert result.exit_code == 1
    assert str(path) in result.stderr and where in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [["nosuch", ".", "-o", "o.json"], ["sroie", "does/not/exist", "-o", "o.json"], ["sroie", "."]],
    ids=["unknown-format", "missing-src", "no-output"],
)
def test_usage_errors_exit_2(args):
    assert _run(*args).exit_code == 2


def test_missing_and_unlisted_images_are_reported(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "img_1.jpg").write_bytes(b"")
    (images / "sub" / "extra.png").write_bytes(b"")
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out.json"
    result = _run("paddleocr", str(_paddleocr(tmp_path)), "-o", str(out), "--images", str(images))
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: 'img_2.jpg' is annotated but not in '{images}'",
        f"warning: 'sub/extra.png' in '{images}' has no annotation",
        f"warning: 1 annotated images missing from '{images}', 1 images there without annotation",
    ]
    assert out.exists()


def test_output_loads_as_annotations(tmp_path):
    out = tmp_path / "sub" / "ann.json"
    result = _run("icdar2015", str(_icdar2015(tmp_path)), "-o", str(out))
    assert result.exit_code == 0
    ann = load_annotations(out)
    assert ann["img_1.jpg"].texts == ["TOTAL, RM 5,00", "###"]
    assert ann["img_1.jpg"].polygons[0].tolist() == TOTAL
    assert sorted(p.name for p in out.parent.iterdir()) == ["ann.json"]  # no temporary left


def test_failed_conversion_keeps_the_old_output(tmp_path):
    out = tmp_path / "ann.json"
    out.write_text("old")
    bad = _write(tmp_path, "p.txt", "no tab here\n")
    assert _run("paddleocr", str(bad), "-o", str(out)).exit_code == 1
    assert out.read_text() == "old"


def test_help_shows_an_example_per_format():
    result = _run("--help")
    assert result.exit_code == 0
    for name in formats():
        assert f"ocr-convert {name} " in result.output
