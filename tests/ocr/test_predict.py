"""ocr-predict: a checkpoint's detections on unlabeled images from files, folders, lists and
a cache; the same file from a folder and from its cache; bad inputs named and skipped."""

from __future__ import annotations

import json
import shutil

import numpy as np
from click.testing import CliRunner
from PIL import Image, ImageOps

from lmdb_cache import build_cache
from ocr.cli import eval_command, predict_command
from ocr.data.annotations import load_annotations
from ocr.predict import gather_inputs

from .runs import MAX_SIDE

ORIENTATION_TAG = 0x0112


def _predict(trained, *args):
    _, _, out = trained
    return CliRunner().invoke(predict_command, ["-k", str(out / "last.pt"), "-q", *args])


def _doc(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _words(doc) -> int:
    return sum(len(entry["words"]) for entry in doc["images"].values())


def test_predictions_of_a_folder_are_those_ocr_eval_writes_for_it(trained, receipts, tmp_path):
    # ocr-eval's --predictions is the path that was already trusted: same images, same model.
    root, _ = receipts
    evaluated, predicted = tmp_path / "eval.json", tmp_path / "predict.json"
    _, _, out = trained
    result = CliRunner().invoke(
        eval_command, ["-k", str(out / "last.pt"), "-q", "--predictions", str(evaluated)]
    )
    assert result.exit_code == 0, result.output
    result = _predict(trained, str(root / "img"), "-o", str(predicted))
    assert result.exit_code == 0, result.output
    assert _doc(predicted) == _doc(evaluated)
    assert _words(_doc(predicted)) > 0  # the comparison is not between two empty files


def test_a_folder_and_its_cache_give_the_same_predictions(trained, receipts, tmp_path):
    root, _ = receipts
    from_disk, from_cache, whole_cache = (tmp_path / f"{n}.json" for n in ("d", "c", "w"))
    assert _predict(trained, str(root / "img"), "-o", str(from_disk)).exit_code == 0
    result = _predict(
        trained, str(root / "img"), "--cache", str(root / "img.lmdb"), "-o", str(from_cache)
    )
    assert result.exit_code == 0, result.output
    result = _predict(trained, "--cache", str(root / "img.lmdb"), "-o", str(whole_cache))
    assert result.exit_code == 0, result.output
    assert from_cache.read_bytes() == from_disk.read_bytes()
    assert whole_cache.read_bytes() == from_disk.read_bytes()


def test_predictions_load_as_annotations_with_a_score_per_word(trained, receipts, tmp_path):
    root, _ = receipts
    pred = tmp_path / "pred.json"
    assert _predict(trained, str(root / "img"), "-o", str(pred)).exit_code == 0
    loaded = load_annotations(pred)
    assert sorted(loaded) == sorted(p.name for p in (root / "img").iterdir())
    scores = [w["score"] for e in _doc(pred)["images"].values() for w in e["words"].values()]
    assert scores and all(0.0 < s <= 1.0 for s in scores)


def test_draw_writes_one_png_per_image(trained, receipts, tmp_path):
    root, _ = receipts
    drawn = tmp_path / "drawn"
    result = _predict(
        trained, str(root / "img"), "-o", str(tmp_path / "p.json"), "--draw", str(drawn)
    )
    assert result.exit_code == 0, result.output
    pngs = sorted(p.name for p in drawn.iterdir())
    assert pngs == sorted(f"{p.name}.png" for p in (root / "img").iterdir())


def _upright_and_rotated(source, folder):
    """``up.png``, a receipt's upright pixels, and ``rot.png``, the same page stored rotated
    with EXIF orientation 6 (a reader turns it 270 degrees to stand it up)."""
    with Image.open(source) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    folder.mkdir()
    upright.save(folder / "up.png")
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "rot.png", exif=exif)
    return upright.size


def _predict_alone(trained, folder, monkeypatch, *names, draw=None):
    """Each image in a call of its own (so alone in its batch: the same upright pixels give
    the same detections to the bit), keyed by its name; each call's predictions."""
    monkeypatch.chdir(folder)
    docs = {}
    for name in names:
        args = [name, "-o", f"{name}.json"] + (["--draw", str(draw)] if draw else [])
        result = _predict(trained, *args)
        assert result.exit_code == 0, result.output
        docs[name] = _doc(folder / f"{name}.json")["images"][name]["words"]
    return docs


def test_an_exif_rotated_image_gets_its_polygons_in_the_raw_frame(
    trained, receipts, tmp_path, monkeypatch
):
    root, _ = receipts
    width, height = _upright_and_rotated(sorted((root / "img").iterdir())[0], tmp_path / "pair")
    with Image.open(tmp_path / "pair" / "rot.png") as stored:
        assert stored.size == (height, width)  # the raw file is the page on its side
    words = _predict_alone(trained, tmp_path / "pair", monkeypatch, "up.png", "rot.png")
    upright_words, raw_words = words["up.png"], words["rot.png"]
    assert upright_words and upright_words.keys() == raw_words.keys()
    for word, entry in upright_words.items():
        u, v = np.array(entry["points"]).T
        # Orientation 6 stores the page turned 90 degrees counter-clockwise: upright (u, v)
        # is raw (v, width - u). Both sides are rounded to 0.01 px.
        expected = np.stack([v, width - u], axis=1)
        assert np.allclose(raw_words[word]["points"], expected, rtol=0, atol=0.0101), word
        assert raw_words[word]["score"] == entry["score"]


def test_an_exif_rotated_image_is_drawn_upright(trained, receipts, tmp_path, monkeypatch):
    root, _ = receipts
    _upright_and_rotated(sorted((root / "img").iterdir())[0], tmp_path / "pair")
    drawn = tmp_path / "drawn"
    _predict_alone(trained, tmp_path / "pair", monkeypatch, "up.png", "rot.png", draw=drawn)
    up = np.asarray(Image.open(drawn / "up.png.png"))
    rot = np.asarray(Image.open(drawn / "rot.png.png"))
    assert up.shape[0] > up.shape[1]  # a receipt stands taller than wide
    assert (up == (255, 0, 0)).all(axis=2).sum() > 50  # detections drawn in red
    assert np.array_equal(rot, up)


def _folder_with(receipts, folder, count=2):
    root, _ = receipts
    folder.mkdir(parents=True)
    for path in sorted((root / "img").iterdir())[:count]:
        shutil.copy(path, folder / path.name)
    return folder


def test_a_file_that_is_not_an_image_is_named_and_skipped(trained, receipts, tmp_path):
    folder = _folder_with(receipts, tmp_path / "scans")
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.jpg").write_text("not an image")
    pred = tmp_path / "pred.json"
    result = _predict(trained, str(folder), "-o", str(pred))
    assert result.exit_code == 1
    assert f"cannot decode '{folder}/sub/notes.jpg': not an image Pillow can identify" in (
        result.output
    )
    assert "1 input(s) skipped" in result.output and "Traceback" not in result.output
    # The other images are predicted and written.
    assert sorted(load_annotations(pred)) == sorted(p.name for p in folder.glob("*.jpg"))


def test_an_empty_folder_exits_1_naming_it(trained, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    pred = tmp_path / "pred.json"
    result = _predict(trained, str(empty), "-o", str(pred))
    assert result.exit_code == 1
    assert f"'{empty}': no images in this folder" in result.output
    assert "Traceback" not in result.output
    assert not pred.exists()


def test_an_empty_folder_beside_images_is_named_and_the_images_predicted(
    trained, receipts, tmp_path
):
    folder = _folder_with(receipts, tmp_path / "scans")
    (tmp_path / "empty").mkdir()
    pred = tmp_path / "pred.json"
    result = _predict(trained, str(folder), str(tmp_path / "empty"), "-o", str(pred))
    assert result.exit_code == 1
    assert f"error: '{tmp_path / 'empty'}': no images in this folder" in result.output
    assert len(load_annotations(pred)) == 2


def test_a_missing_input_is_named_and_skipped(trained, receipts, tmp_path):
    folder = _folder_with(receipts, tmp_path / "scans", count=1)
    result = _predict(trained, str(folder), str(tmp_path / "gone"), "-o", str(tmp_path / "p.json"))
    assert result.exit_code == 1
    assert f"'{tmp_path / 'gone'}': no such file or folder" in result.output


def test_a_list_file_names_images_relative_to_its_folder(trained, receipts, tmp_path):
    folder = _folder_with(receipts, tmp_path / "scans")
    names = sorted(p.name for p in folder.iterdir())
    listing = tmp_path / "todo.txt"
    listing.write_text(f"# to predict\n\nscans/{names[0]}\n  scans/{names[1]}  \n")
    pred = tmp_path / "pred.json"
    result = _predict(trained, str(listing), "-o", str(pred))
    assert result.exit_code == 0, result.output
    assert sorted(load_annotations(pred)) == [f"scans/{n}" for n in names]


def test_a_missing_checkpoint_exits_2_as_in_ocr_eval(receipts, tmp_path):
    root, _ = receipts
    missing = tmp_path / "none.pt"
    args = ["-k", str(missing), str(root / "img"), "-o", str(tmp_path / "p.json")]
    result = CliRunner().invoke(predict_command, args)
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: checkpoint '{missing}' does not exist; ocr-train writes last.pt and best.pt "
        "into its output_dir"
    )


def test_a_checkpoint_of_another_model_exits_1_in_one_line(trained, receipts, tmp_path):
    root, _ = receipts
    args = [str(root / "img"), "-o", str(tmp_path / "p.json"), "--set", "model.width=16"]
    result = _predict(trained, *args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "does not fit the configured model (" in lines[0]


def test_cache_keys_missing_from_the_store_are_named_and_skipped(trained, receipts, tmp_path):
    root, _ = receipts
    folder = _folder_with(receipts, tmp_path / "scans")
    build_cache(folder, tmp_path / "scans.lmdb", max_side=MAX_SIDE, workers=1)
    extra = sorted((root / "img").iterdir())[3]
    shutil.copy(extra, folder / extra.name)
    pred = tmp_path / "pred.json"
    result = _predict(
        trained, str(folder), "--cache", str(tmp_path / "scans.lmdb"), "-o", str(pred)
    )
    assert result.exit_code == 1
    assert f"'{folder / extra.name}': not in the cache '{tmp_path / 'scans.lmdb'}'" in (
        result.output
    )
    assert extra.name not in load_annotations(pred) and len(load_annotations(pred)) == 2


def test_a_cache_of_another_max_side_is_refused(trained, receipts, tmp_path):
    folder = _folder_with(receipts, tmp_path / "scans", count=1)
    build_cache(folder, tmp_path / "small.lmdb", max_side=MAX_SIDE // 2, workers=1)
    args = [str(folder), "--cache", str(tmp_path / "small.lmdb"), "-o", str(tmp_path / "p.json")]
    result = _predict(trained, *args)
    assert result.exit_code == 1
    assert str(tmp_path / "small.lmdb") in result.output and "Traceback" not in result.output
    assert not (tmp_path / "p.json").exists()


def test_cache_with_an_image_file_as_input_is_a_usage_error(trained, receipts, tmp_path):
    root, _ = receipts
    image = sorted((root / "img").iterdir())[0]
    args = [str(image), "--cache", str(root / "img.lmdb"), "-o", str(tmp_path / "p.json")]
    result = _predict(trained, *args)
    assert result.exit_code == 2
    assert "--cache" in result.output and "Traceback" not in result.output


def test_inputs_are_keyed_by_folder_path_list_line_or_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scans" / "sub").mkdir(parents=True)
    for name in ("scans/a.jpg", "scans/sub/b.PNG", "scans/skip.txt", "c.jpg", "lists/d.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "lists" / "l.lst").write_text("d.jpg\n../c.jpg\n")
    found = gather_inputs(["scans", "./c.jpg", "lists/l.lst"])
    assert found.paths == {
        "a.jpg": "scans/a.jpg",
        "sub/b.PNG": "scans/sub/b.PNG",
        "c.jpg": "./c.jpg",
        "d.jpg": "lists/d.jpg",
        "../c.jpg": "lists/../c.jpg",  # a list's keys are its lines, relative to its folder
    }
    assert found.problems == []


def test_two_files_with_one_key_are_a_problem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("one/a.jpg", "two/a.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = gather_inputs(["one", "two"])
    assert found.paths == {"a.jpg": "one/a.jpg"}
    assert found.problems == [
        "'two/a.jpg' (from 'two') has the key 'a.jpg' of 'one/a.jpg'; skipped, as two images "
        "cannot share a key in the predictions file"
    ]


def test_a_folder_given_twice_is_predicted_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.jpg").write_bytes(b"")
    found = gather_inputs(["scans", "scans/"])
    assert found.paths == {"a.jpg": "scans/a.jpg"} and found.problems == []


def test_a_list_that_is_not_text_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paths.txt").write_bytes(b"\xff\xfe\x00binary")
    found = gather_inputs(["paths.txt"])
    assert found.paths == {}
    assert found.problems == ["'paths.txt': cannot read this list of paths (not UTF-8 text)"]


def test_no_input_and_no_cache_is_a_usage_error(trained, tmp_path):
    result = _predict(trained, "-o", str(tmp_path / "p.json"))
    assert result.exit_code == 2
    assert "give image files, folders or list files, or --cache" in result.output
