"""The annotations as flat arrays (``ocr.data.table``): the same samples as the per-image dicts
they replace, no Python object per image, and every kind of image round-trips.

The oracle is the previous implementation, kept here: ``load_annotations``' dict turned into a
``PolygonSet`` and a don't-care array per key, and the previous ``OCRDataset._sample`` reading
them.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import pickle
import shutil
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lmdb_cache import KeyList
from lmdb_cache.annotations import AnnotationError
from lmdb_cache.geometry import upright_to_pixels
from ocr.data.annotations import ImageAnnotation, load_annotations
from ocr.data.collate import collate
from ocr.data.dataset import OCRDataset, sample_seed
from ocr.data.digest import content_checksum
from ocr.data.geometry import orientation_matrix, polygons_in_upright_frame, upright_size
from ocr.data.sample import PolygonSet, Sample
from ocr.data.table import AnnotationTable
from ocr.data.targets import DBNetTargets
from ocr.data.transforms import TrainTransform, ValTransform
from tools.make_samples import generate

UNICODE_KEY = "reçus/收据 ü 0005.jpg"
SQUARE = [[10.0, 10.0], [50.0, 10.0], [50.0, 30.0], [10.0, 30.0]]
HEXAGON = [[0.5, 0.25], [20.0, -1.5], [40.75, 0.0], [40.0, 20.0], [20.0, 21.0], [0.0, 20.0]]


# --- the oracle: the previous dict-based implementation -----------------------------------


@dataclasses.dataclass
class OldAnnotations:
    """What the previous ``OCRDataset.__init__`` kept of the annotation file."""

    keys: list[str]
    polygons: dict[str, PolygonSet]
    dont_care: dict[str, np.ndarray]


def old_annotations(path: Path) -> OldAnnotations:
    annotations = load_annotations(path)
    return OldAnnotations(
        keys=list(annotations),
        polygons={key: PolygonSet.from_list(ann.polygons) for key, ann in annotations.items()},
        dont_care={
            key: np.array([text == "###" for text in ann.texts], dtype=bool)
            for key, ann in annotations.items()
        },
    )


def old_sample(ds: OCRDataset, old: OldAnnotations, index: int) -> Sample:
    """The previous ``OCRDataset._sample(index, None, None)``, reading ``old``."""
    key = old.keys[index]
    loaded = ds.source.load(key)
    polygons = old.polygons[key]
    frame = loaded.frame
    to_upright = orientation_matrix(loaded.orientation, loaded.raw_width, loaded.raw_height)
    if polygons_in_upright_frame(polygons, loaded.orientation, loaded.raw_width, loaded.raw_height):
        to_upright = np.eye(3)
    scale = upright_to_pixels(frame)
    seed = sample_seed(ds.seed, ds.epoch, index)
    rng = np.random.default_rng(seed)
    result = ds.transform(loaded.pixels, polygons.transformed(scale @ to_upright), rng, out=None)
    upright_to_sample = result.matrix @ scale
    dont_care = old.dont_care[key]
    sample = Sample(
        image=result.image,
        polygons=result.polygons.astype(np.float32),
        ignore=~np.asarray(result.valid, dtype=bool) | dont_care,
        gt_polygons=polygons.transformed(to_upright),
        gt_ignore=dont_care.copy(),
        inverse_matrix=np.linalg.inv(upright_to_sample).astype(np.float64),
        filename=key,
        raw_size=(loaded.raw_width, loaded.raw_height),
        orientation=loaded.orientation,
        upright_size=upright_size(loaded.orientation, loaded.raw_width, loaded.raw_height),
        seed=seed,
    )
    if ds.targets is not None:
        sample.targets = ds.targets(result.image.shape[:2], sample.polygons, sample.ignore)
    if ds.checksums:
        sample.checksum = content_checksum(sample)
    return sample


def assert_same_bits(x: Any, y: Any, where: str) -> None:
    """``x`` and ``y`` hold the same types, dtypes, shapes and bytes, field by field."""
    assert type(x) is type(y), where
    if dataclasses.is_dataclass(x):
        for f in dataclasses.fields(x):
            assert_same_bits(getattr(x, f.name), getattr(y, f.name), f"{where}.{f.name}")
    elif isinstance(x, torch.Tensor):
        assert (x.dtype, x.shape) == (y.dtype, y.shape), where
        assert x.numpy().tobytes() == y.numpy().tobytes(), where
    elif isinstance(x, np.ndarray):
        assert (x.dtype, x.shape) == (y.dtype, y.shape), where
        assert x.tobytes() == y.tobytes(), where
    elif isinstance(x, PolygonSet):
        assert_same_bits(x.points, y.points, f"{where}.points")
        assert_same_bits(x.offsets, y.offsets, f"{where}.offsets")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            assert_same_bits(u, v, f"{where}[{i}]")
    else:
        assert x == y, where


# --- data ----------------------------------------------------------------------------------


def _upright_of_orientation_6(points: list[list[float]], raw_height: int) -> list[list[float]]:
    """Raw-frame points of an orientation-6 file in its upright frame (upright width is the
    raw height): the annotation style the dataset detects and keeps as it is."""
    return [[raw_height - y, x] for x, y in points]


@pytest.fixture(scope="module")
def receipts(tmp_path_factory):
    """Six generated receipts whose annotations hold every case: an image with no words, one
    with one word, don't-care words, polygons of six points, a unicode key in a sub-folder, and
    an orientation-6 image annotated in its upright frame."""
    root = tmp_path_factory.mktemp("table")
    ann = generate(root / "img", count=6, seed=7)
    doc = json.loads(ann.read_text())
    images = doc["images"]
    images["receipt_0000.jpg"]["words"] = {}
    first = next(iter(images["receipt_0001.jpg"]["words"].values()))
    images["receipt_0001.jpg"]["words"] = {"only": dict(first, text="TOTAL")}
    for j, word in enumerate(images["receipt_0002.jpg"]["words"].values()):
        word["text"] = "###" if j % 3 == 1 else f"word {j}"
    images["receipt_0002.jpg"]["words"]["hex"] = {"points": HEXAGON, "text": "###"}
    images["receipt_0004.png"]["words"]["hex"] = {"points": HEXAGON, "text": "hexagon"}
    with Image.open(root / "img" / "receipt_0003.jpg") as image:
        raw_height = image.size[1]
    for word in images["receipt_0003.jpg"]["words"].values():
        word["points"] = _upright_of_orientation_6(word["points"], raw_height)
    (root / "img" / UNICODE_KEY).parent.mkdir()
    shutil.move(root / "img" / "receipt_0005.jpg", root / "img" / UNICODE_KEY)
    images[UNICODE_KEY] = images.pop("receipt_0005.jpg")
    ann.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return root / "img", ann


def _dataset(receipts, transform: str) -> OCRDataset:
    image_path, ann = receipts
    made = TrainTransform(640) if transform == "train" else ValTransform(640)
    ds = OCRDataset(image_path, ann, made, targets=DBNetTargets(), seed=5)
    ds.checksums = True
    ds.set_epoch(3)
    return ds


def _write_annotations(path: Path, images: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"images": images}), encoding="utf-8")
    return path


def _word(points: list[list[float]], text: str | None = None) -> dict[str, Any]:
    return {"points": points} if text is None else {"points": points, "text": text}


# --- the dataset gives the previous samples -----------------------------------------------


@pytest.mark.parametrize("transform", ["val", "train"])
def test_samples_are_the_bits_of_the_dict_based_dataset(receipts, transform):
    ds = _dataset(receipts, transform)
    old = old_annotations(receipts[1])
    assert list(ds.keys) == old.keys
    for index in range(len(ds)):
        assert_same_bits(ds[index], old_sample(ds, old, index), f"sample {index}")


@pytest.mark.parametrize("transform", ["val", "train"])
def test_batches_are_the_bits_of_the_dict_based_dataset(receipts, transform):
    ds = _dataset(receipts, transform)
    old = old_annotations(receipts[1])
    indices = [5, 0, 3, 2, 1, 4]
    expected = collate([old_sample(ds, old, i) for i in indices])
    assert_same_bits(ds.__getitems__(indices), expected, "batch")


def test_receipts_hold_every_case(receipts):
    # The oracle tests above cover these cases only if the data holds them.
    table = AnnotationTable.from_file(receipts[1])
    counts = [len(table.polygons(i)) for i in range(len(table))]
    assert counts[0] == 0 and counts[1] == 1
    assert table.dont_care(2).any() and not table.dont_care(2).all()
    assert 6 in table.polygons(4).counts()
    assert table.keys[5] == UNICODE_KEY
    ds = _dataset(receipts, "val")
    loaded = ds.source.load(ds.keys[3])
    assert loaded.orientation == 6
    assert polygons_in_upright_frame(
        table.polygons(3), loaded.orientation, loaded.raw_width, loaded.raw_height
    )


def test_pickled_dataset_gives_the_same_samples(receipts):
    # What a spawn or forkserver DataLoader worker receives.
    ds = _dataset(receipts, "train")
    copy = pickle.loads(pickle.dumps(ds))
    assert isinstance(copy.keys, KeyList)
    for index in range(len(ds)):
        assert_same_bits(copy[index], ds[index], f"sample {index}")


def test_samples_do_not_share_memory_with_the_table(receipts):
    ds = _dataset(receipts, "val")
    sample = ds[2]
    for array in (sample.gt_polygons.points, sample.gt_ignore, sample.ignore):
        assert array.flags.writeable
        assert not np.shares_memory(array, ds.table.points)
        assert not np.shares_memory(array, ds.table.dont_care_flags)


# --- the table round-trips every kind of image ----------------------------------------------

CASES = {
    "zero-words": {},
    "one-word": {"w": _word(SQUARE, "TOTAL")},
    "six-points": {"a": _word(HEXAGON), "b": _word(SQUARE)},
    "dont-care": {"a": _word(SQUARE, "###"), "b": _word(HEXAGON, "x"), "c": _word(SQUARE)},
    "unicode-key": {"a": _word(SQUARE, "ü")},
}
KEYS = {"unicode-key": "données/ü 收据 🧾.jpg"}


@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_table_gives_back_each_image_as_the_annotation_file_has_it(tmp_path, case):
    # The case between two ordinary images, so that its ranges start and end inside the arrays.
    key = KEYS.get(case, f"{case}.jpg")
    images = {
        "before.jpg": {"words": {"a": _word(SQUARE), "b": _word(HEXAGON, "###")}},
        key: {"words": CASES[case]},
        "after.jpg": {"words": {"a": _word([[1, 2], [3, 4], [5, 6], [7, 9]], "x")}},
    }
    path = _write_annotations(tmp_path / "ann.json", images)
    table = AnnotationTable.from_file(path)
    old = old_annotations(path)
    assert len(table) == 3 and list(table.keys) == [*images]
    for index, name in enumerate(images):
        assert_same_bits(table.polygons(index), old.polygons[name], name)
        assert_same_bits(table.dont_care(index), old.dont_care[name], name)


def test_table_of_no_images_is_empty(tmp_path):
    table = AnnotationTable.from_file(_write_annotations(tmp_path / "ann.json", {}))
    assert len(table) == 0 and len(table.keys) == 0 and table.points.shape == (0, 2)


def test_table_arrays_are_read_only(tmp_path):
    path = _write_annotations(tmp_path / "ann.json", {"a.jpg": {"words": {"a": _word(SQUARE)}}})
    table = AnnotationTable.from_file(path)
    with pytest.raises(ValueError, match="read-only"):
        table.polygons(0).points[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        table.dont_care(0)[0] = True


def test_table_pickles_to_the_same_arrays_still_read_only(tmp_path):
    images = {"a.jpg": {"words": {"a": _word(HEXAGON, "###")}}, "é.jpg": {"words": {}}}
    table = AnnotationTable.from_file(_write_annotations(tmp_path / "ann.json", images))
    copy = pickle.loads(pickle.dumps(table))
    assert list(copy.keys) == list(table.keys)
    for name in ("points", "polygon_ends", "image_ends", "dont_care_flags"):
        assert_same_bits(getattr(copy, name), getattr(table, name), name)
        assert not getattr(copy, name).flags.writeable


@pytest.mark.parametrize("index", [2, -3], ids=["past-the-end", "before-the-start"])
def test_table_refuses_an_image_it_does_not_hold(tmp_path, index):
    images = {"a.jpg": {"words": {}}, "b.jpg": {"words": {}}}
    table = AnnotationTable.from_file(_write_annotations(tmp_path / "ann.json", images))
    with pytest.raises(IndexError, match=f"image {index} of 2"):
        table.polygons(index)


def test_negative_index_counts_from_the_end(tmp_path):
    images = {"a.jpg": {"words": {}}, "b.jpg": {"words": {"a": _word(HEXAGON)}}}
    table = AnnotationTable.from_file(_write_annotations(tmp_path / "ann.json", images))
    assert table.polygons(-1) == table.polygons(1) == PolygonSet.from_list([HEXAGON])


@pytest.mark.parametrize(
    ("key", "match"),
    [("\ud800.jpg", "cannot be held as UTF-8"), ("\udcc3\udca9.jpg", "reads back as 'é.jpg'")],
    ids=["lone-surrogate", "escaped-utf8"],
)
def test_key_the_key_list_cannot_give_back_is_refused(tmp_path, key, match):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": {key: {"words": {}}}}), encoding="ascii")
    with pytest.raises(AnnotationError, match=match):
        AnnotationTable.from_file(path)


def test_polygons_and_texts_of_different_counts_are_refused():
    ann = ImageAnnotation("a.jpg", polygons=[np.array(SQUARE)], word_ids=["a"], texts=[])
    with pytest.raises(ValueError, match="'a.jpg' has 1 polygons and 0 texts"):
        AnnotationTable.from_annotations({"a.jpg": ann})


def test_ends_that_do_not_cover_the_points_are_refused():
    keys = KeyList.from_keys(["a.jpg"])
    points = np.zeros((4, 2))
    with pytest.raises(ValueError, match="end at 4 points"):
        AnnotationTable(keys, points, np.array([3]), np.array([1]), np.zeros(1, dtype=bool))


# --- no Python object per image --------------------------------------------------------------


def _many_images(path: Path, count: int) -> Path:
    """An annotation file of ``count`` images (their files need not exist: a disk source reads
    an image only when a sample is asked for)."""
    words = {
        "a": _word(SQUARE, "TOTAL"),
        "b": _word(HEXAGON, "###"),
        "c": _word([[0, 0], [9, 0], [9, 9], [0, 9]]),
    }
    images = {f"scans/{i:06d} ü.jpg": {"words": words if i % 4 else {}} for i in range(count)}
    return _write_annotations(path, images)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    return root, {n: _many_images(root / f"ann{n}.json", n) for n in (2_000, 20_000)}


def _reachable(root: object) -> int:
    """The number of objects reachable from ``root``, classes, modules and functions left out
    (a numpy array counts as one: its buffer is not an object)."""
    seen: set[int] = set()
    stack = [root]
    shared = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, shared):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return len(seen)


def test_dataset_holds_as_many_objects_for_20000_images_as_for_2000(many):
    root, files = many
    small = OCRDataset(root, files[2_000], ValTransform(640))
    large = OCRDataset(root, files[20_000], ValTransform(640))
    assert len(large) == 20_000
    assert _reachable(large) == _reachable(small)


def test_building_a_dataset_leaves_no_object_per_image_behind(many):
    # Counts every object the collector tracks, reachable from the dataset or not (a cache).
    root, files = many

    def tracked_by(count: int) -> tuple[int, OCRDataset]:
        gc.collect()
        before = len(gc.get_objects())
        ds = OCRDataset(root, files[count], ValTransform(640))
        gc.collect()
        return len(gc.get_objects()) - before, ds

    tracked_by(2_000)  # imports and first-call caches
    small, _ = tracked_by(2_000)
    large, ds = tracked_by(20_000)
    assert len(ds) == 20_000
    assert large - small < 100  # the dict-based dataset: about 3 more per image
