"""Transforms from the config: ``_target_`` callables and the Albumentations adapter.

Expected geometry is computed by hand in the pixel-corner frame (pixel ``i`` spans
``[i, i + 1]``): a horizontal flip of a ``W``-wide image maps ``x`` to ``W - x``, a crop at
``(x0, y0)`` subtracts them. Images hold white axis-aligned boxes with integer corners on
black, so "the polygon covers the white pixels" is exact: the white pixels are the pixels
whose centers lie inside the boxes.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ocr.data.loader import build_dataset, build_loader, build_transform
from ocr.data.sample import Batch, PolygonSet
from ocr.data.transforms import TransformResult, ValTransform

from .batches import assert_batches_equal

WIDTH, HEIGHT = 40, 24
# Per image: white boxes (x0, y0, x1, y1), integer corners.
BOXES = {
    "a.png": [(6, 4, 20, 12), (24, 14, 36, 22)],
    "b.png": [(2, 2, 10, 20)],
}


def _box_points(box: tuple[int, int, int, int]) -> list[list[float]]:
    x0, y0, x1, y1 = box
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _draw(boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        image[y0:y1, x0:x1] = 255
    return image


def _covered(polygons: PolygonSet, height: int, width: int) -> np.ndarray:
    """Pixels whose centers lie inside the bounding boxes of ``polygons`` (axis-aligned)."""
    cx = np.arange(width) + 0.5
    cy = np.arange(height) + 0.5
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in polygons.bounds():
        mask |= ((cx > x0) & (cx < x1))[None, :] & ((cy > y0) & (cy < y1))[:, None]
    return mask


def _polygons(boxes: list[tuple[int, int, int, int]]) -> PolygonSet:
    return PolygonSet.from_list([_box_points(b) for b in boxes])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two PNGs (lossless) of white boxes and their annotation file."""
    root = tmp_path_factory.mktemp("boxes")
    images = root / "img"
    images.mkdir()
    annotations: dict = {"images": {}}
    for name, boxes in BOXES.items():
        Image.fromarray(_draw(boxes)).save(images / name)
        words = {str(i): {"points": _box_points(b), "text": "w"} for i, b in enumerate(boxes)}
        annotations["images"][name] = {"words": words}
    path = root / "ann.json"
    path.write_text(json.dumps(annotations))
    return images, path


def _dataset(folder, transform, targets=None, name="train_dataset"):
    images, annotations = folder
    cfg = {"image_path": str(images), "annotation_path": str(annotations), "transform": transform}
    return build_dataset(cfg, targets, name=name)


class Translate:
    """A user transform: the image moved ``dx`` pixels right inside a ``size x size`` slot."""

    def __init__(self, size: int, dx: int) -> None:
        self.size = size
        self.dx = dx

    def __call__(self, image, polygons, rng=None, out=None):
        out = np.empty((self.size, self.size, 3), np.uint8) if out is None else out
        out[...] = 0
        h, w = image.shape[:2]
        out[:h, self.dx : self.dx + w] = image[:, : self.size - self.dx]
        matrix = np.array([[1, 0, self.dx], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
        valid = np.ones(len(polygons), dtype=bool)
        return TransformResult(out, polygons.transformed(matrix), matrix, valid)


TRANSLATE = f"{__name__}.Translate"


# --- _target_ ---------------------------------------------------------------------------------


def test_target_transform_is_called_with_the_other_keys(folder):
    dataset = _dataset(folder, {"_target_": TRANSLATE, "size": 48, "dx": 5})
    assert isinstance(dataset.transform, Translate)
    assert (dataset.transform.size, dataset.transform.dx) == (48, 5)


def test_target_transform_makes_the_samples(folder):
    sample = _dataset(folder, {"_target_": TRANSLATE, "size": 48, "dx": 5})[0]
    expected = np.zeros((48, 48, 3), np.uint8)
    expected[:HEIGHT, 5 : 5 + WIDTH] = _draw(BOXES["a.png"])
    np.testing.assert_array_equal(sample.image, expected)
    shifted = _polygons(BOXES["a.png"]).points + [5, 0]
    np.testing.assert_array_equal(sample.polygons.points, shifted)


def test_target_transform_matrix_maps_samples_back_to_the_image(folder):
    sample = _dataset(folder, {"_target_": TRANSLATE, "size": 48, "dx": 5})[0]
    back = sample.polygons.transformed(sample.inverse_matrix)
    np.testing.assert_allclose(back.points, sample.gt_polygons.points)


def test_target_transform_fills_the_batch_slots(folder):
    dataset = _dataset(folder, {"_target_": TRANSLATE, "size": 48, "dx": 5}, targets={})
    batch = dataset.__getitems__([0, 1])
    assert isinstance(batch, Batch)
    assert tuple(batch.image.shape) == (2, 48, 48, 3)
    np.testing.assert_array_equal(batch.image[1].numpy(), dataset[1].image)


def test_target_of_a_built_in_transform_gives_the_name_form_samples(folder):
    by_name = _dataset(folder, {"name": "val", "size": 64})[0]
    by_target = _dataset(folder, {"_target_": "ocr.data.transforms.ValTransform", "size": 64})[0]
    np.testing.assert_array_equal(by_target.image, by_name.image)
    np.testing.assert_array_equal(by_target.inverse_matrix, by_name.inverse_matrix)


def test_name_form_still_builds_the_built_in_transform():
    transform = build_transform({"name": "val", "size": 64}, "nearest")
    assert isinstance(transform, ValTransform)
    assert (transform.size, transform.resample) == (64, "nearest")


@pytest.mark.parametrize(
    ("target", "kwargs", "message"),
    [
        (
            "no_such_package.Thing",
            {},
            r"cannot import _target_ 'no_such_package.Thing': no module named "
            r"'no_such_package'; give the dotted path",
        ),
        (
            "ocr.data.transforms.NoSuchTransform",
            {},
            r"'ocr.data.transforms' has no attribute 'NoSuchTransform'; check the spelling",
        ),
        ("ocr..transforms", {}, r"_target_ must be a dotted path"),
        (
            "ocr.data.instantiate.TARGET",
            {},
            r"_target_ 'ocr.data.instantiate.TARGET' is a str, not a callable; name a class",
        ),
        (
            "ocr.data.transforms.ValTransform",
            {"sizes": 64},
            r"calling _target_ 'ocr.data.transforms.ValTransform' with arguments sizes failed: "
            r"TypeError: .*unexpected keyword argument 'sizes'; its signature is "
            r"ValTransform\(size: int = 640, resample: str = 'bilinear'\), fix the keys",
        ),
        (
            "ocr.data.transforms.ValTransform",
            {"size": 0},
            r"calling _target_ .* failed: ValueError: transform size must be positive",
        ),
        (
            "builtins.dict",
            {},
            r"_target_ 'builtins.dict' returned a dict, not a transform; a transform is called",
        ),
        (
            TRANSLATE,
            {"size": "64", "dx": 0},
            r"returned a transform whose size is '64'; size must be a positive int",
        ),
    ],
    ids=[
        "no-module",
        "no-attribute",
        "malformed",
        "not-callable",
        "bad-keyword",
        "bad-value",
        "not-a-transform",
        "bad-size",
    ],
)
def test_bad_target_is_a_clear_error(folder, target, kwargs, message):
    with pytest.raises(ValueError, match=r"^datasets\.train_dataset\.transform: .*" + message):
        _dataset(folder, {"_target_": target, **kwargs})


def test_target_in_a_module_that_fails_to_import_names_the_missing_dependency(
    folder, tmp_path, monkeypatch
):
    (tmp_path / "broken_transforms.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ValueError,
        match=r"importing 'broken_transforms' failed with ModuleNotFoundError: "
        r"No module named 'no_such_dependency_xyz'; install what it needs",
    ):
        _dataset(folder, {"_target_": "broken_transforms.Thing"})


def test_error_names_transform_when_the_split_is_unknown():
    with pytest.raises(ValueError, match=r"^transform: cannot import _target_ 'nope.X'"):
        build_transform({"_target_": "nope.X"})


def test_unknown_name_points_to_target():
    with pytest.raises(ValueError, match=r"unknown transform 'rotate'.*_target_"):
        build_transform({"name": "rotate"})


# --- the Albumentations adapter ---------------------------------------------------------------


@pytest.fixture(scope="module")
def A():
    # Importing Albumentations 2.0 otherwise asks PyPI for a newer version; tests stay offline.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    return pytest.importorskip(
        "albumentations",
        minversion="2.0",
        reason="Albumentations is not installed (pip install '.[albumentations]')",
    )


@pytest.fixture(scope="module")
def adapter(A):
    from ocr.data import albumentations as adapter

    return adapter


def _run(adapter, pipeline, boxes, **kwargs):
    transform = adapter.AlbumentationsTransform(pipeline, **kwargs)
    return transform(_draw(boxes), _polygons(boxes), np.random.default_rng(0))


def test_adapter_module_does_not_shadow_albumentations(A, adapter):
    import ocr

    assert adapter.A is A
    assert Path(ocr.__file__).parent not in Path(A.__file__).parents


def test_flip_moves_points_to_the_mirror_image(A, adapter):
    result = _run(adapter, A.HorizontalFlip(p=1), BOXES["a.png"])
    expected = _polygons(BOXES["a.png"]).points * [-1, 1] + [WIDTH, 0]
    np.testing.assert_allclose(result.polygons.points, expected, atol=1e-4)


def test_flip_pixels_follow_the_polygons(A, adapter):
    result = _run(adapter, A.HorizontalFlip(p=1), BOXES["a.png"])
    white = result.image[..., 0] > 127
    np.testing.assert_array_equal(white, _covered(result.polygons, HEIGHT, WIDTH))


def test_flip_matrix_is_the_mirror(A, adapter):
    result = _run(adapter, A.HorizontalFlip(p=1), BOXES["a.png"])
    mirror = [[-1, 0, WIDTH], [0, 1, 0], [0, 0, 1]]
    np.testing.assert_allclose(result.matrix, mirror, atol=1e-5)


def test_crop_moves_points_by_the_window_and_pixels_follow(A, adapter):
    result = _run(adapter, A.Crop(x_min=4, y_min=2, x_max=40, y_max=24), BOXES["a.png"])
    expected = _polygons(BOXES["a.png"]).points - [4, 2]
    np.testing.assert_allclose(result.polygons.points, expected, atol=1e-4)
    white = result.image[..., 0] > 127
    np.testing.assert_array_equal(white, _covered(result.polygons, HEIGHT - 2, WIDTH - 4))


def test_polygon_mostly_cut_away_is_invalid_and_clipped(A, adapter):
    # Box (6, 4, 20, 12) cropped at x = 16: 4 of its 14 columns stay (invalid); box
    # (24, 14, 36, 22) stays whole (valid).
    result = _run(adapter, A.Crop(x_min=16, y_min=0, x_max=40, y_max=24), BOXES["a.png"])
    assert result.valid.tolist() == [False, True]
    np.testing.assert_allclose(result.polygons[0], [[0, 4], [4, 4], [4, 12], [0, 12]], atol=1e-4)


def test_resize_scales_points_up_to_albumentations_half_pixel(A, adapter):
    # Hand geometry: x -> 2x. Albumentations scales keypoints from the origin while its
    # flips use pixel centers; the adapter follows the flips, so a resize by s sits
    # 0.5 * (1 - s) pixels off (docs/transforms.md).
    result = _run(adapter, A.Resize(HEIGHT * 2, WIDTH * 2), BOXES["a.png"])
    expected = _polygons(BOXES["a.png"]).points * 2
    np.testing.assert_allclose(result.polygons.points, expected, atol=0.5 + 1e-4)
    np.testing.assert_allclose(result.matrix[:2, :2], np.eye(2) * 2, atol=1e-5)


def test_output_is_placed_top_left_in_the_size_slot(A, adapter):
    slot = np.full((64, 64, 3), 7, dtype=np.uint8)
    transform = adapter.AlbumentationsTransform(A.HorizontalFlip(p=1), size=64)
    polygons = _polygons(BOXES["a.png"])
    result = transform(_draw(BOXES["a.png"]), polygons, np.random.default_rng(0), out=slot)
    assert result.image is slot
    np.testing.assert_array_equal(slot[:HEIGHT, :WIDTH], _draw(BOXES["a.png"])[:, ::-1])
    assert not slot[HEIGHT:].any() and not slot[:, WIDTH:].any()


def test_output_larger_than_size_is_refused(A, adapter):
    with pytest.raises(ValueError, match=r"40x24 image, larger than the transform size 32; end"):
        _run(adapter, A.HorizontalFlip(p=1), BOXES["a.png"], size=32)


def test_float_output_is_refused(A, adapter):
    with pytest.raises(ValueError, match=r"returned a float32 .* image; .* remove A.Normalize"):
        _run(adapter, A.Normalize(p=1), BOXES["a.png"])


def test_non_affine_pipeline_is_refused_by_default(A, adapter):
    with pytest.raises(ValueError, match=r"closest affine map.*require_affine: false"):
        _run(adapter, A.Perspective(scale=(0.1, 0.1), p=1), BOXES["a.png"])


def test_non_affine_pipeline_runs_when_allowed(A, adapter):
    result = _run(
        adapter, A.Perspective(scale=(0.1, 0.1), p=1), BOXES["a.png"], require_affine=False
    )
    assert np.isfinite(result.matrix).all() and np.linalg.det(result.matrix) != 0


def test_pipeline_that_drops_points_is_refused_by_default(A, adapter):
    # GridDistortion drops keypoints outside the image: box 2 of b reaches x = 45 > 40.
    boxes = [(6, 4, 20, 12), (30, 10, 45, 20)]
    with pytest.raises(ValueError, match=r"dropped \d+ of 17 keypoints .*require_affine: false"):
        _run(adapter, A.GridDistortion(distort_limit=(0, 0), p=1), boxes)


def test_polygon_that_lost_points_is_invalid(A, adapter):
    boxes = [(6, 4, 20, 12), (30, 10, 45, 20)]
    pipeline = A.GridDistortion(distort_limit=(0, 0), p=1)
    result = _run(adapter, pipeline, boxes, require_affine=False)
    assert result.valid.tolist() == [True, False]
    # The lost points are placed (by the fitted matrix), so the targets can mask the polygon.
    assert np.isfinite(result.polygons.points).all()
    # Albumentations remaps these keypoints to whole pixels, about a pixel off.
    np.testing.assert_allclose(result.polygons[0], _box_points(boxes[0]), atol=1.5)


def test_reflecting_border_is_refused(A, adapter):
    import cv2

    pipeline = A.Affine(rotate=(10, 10), border_mode=cv2.BORDER_REFLECT_101, p=1)
    with pytest.raises(ValueError, match=r"keypoints for .*use border_mode=cv2.BORDER_CONSTANT"):
        _run(adapter, pipeline, BOXES["a.png"])


def _add_one(image, **params):
    image += 1  # in place, as a user's A.Lambda may do
    return image


@pytest.mark.parametrize("writeable", [True, False], ids=["writeable", "read-only"])
def test_pipeline_never_writes_to_its_input(A, adapter, writeable):
    image = _draw(BOXES["a.png"])
    before = image.copy()
    image.flags.writeable = writeable
    transform = adapter.AlbumentationsTransform(A.Lambda(image=_add_one, p=1))
    result = transform(image, _polygons(BOXES["a.png"]), np.random.default_rng(0))
    np.testing.assert_array_equal(image, before)
    np.testing.assert_array_equal(result.image, before + 1)


def test_randomness_comes_from_the_given_rng(A, adapter):
    pipeline = [A.HorizontalFlip(p=0.5), A.Affine(rotate=(-20, 20), p=1)]
    transform = adapter.AlbumentationsTransform(pipeline)
    image, polygons = _draw(BOXES["a.png"]), _polygons(BOXES["a.png"])
    runs = [transform(image, polygons, np.random.default_rng(s)).matrix for s in (1, 1, 2, 3, 4)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert len({m.tobytes() for m in runs}) == 4


def test_from_config_list_is_the_pipeline(A, adapter):
    transform = adapter.from_config([{"__class_fullname__": "HorizontalFlip", "p": 1.0}], size=64)
    assert transform.size == 64
    assert [type(t).__name__ for t in transform.pipeline.transforms] == ["HorizontalFlip"]


@pytest.mark.parametrize("suffix", [".json", ".yaml"], ids=["json", "yaml"])
def test_from_config_reads_a_file_saved_by_albumentations(A, adapter, tmp_path, suffix):
    path = tmp_path / f"aug{suffix}"
    A.save(A.Compose([A.HorizontalFlip(p=1.0)]), path, data_format=suffix[1:])
    transform = adapter.from_config(str(path))
    (inner,) = transform.pipeline.transforms
    assert [type(t).__name__ for t in inner.transforms] == ["HorizontalFlip"]


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ([{"__class_fullname__": "NoSuchFlip", "p": 1}], r"pipeline\[0\]: .* no transform "),
        ([{"_target_": "albumentations.HorizontalFlip"}], r"pipeline\[0\] must be a mapping with"),
        ("missing.yaml", r"pipeline file 'missing.yaml' does not exist"),
    ],
    ids=["unknown-class", "no-class-name", "no-file"],
)
def test_from_config_bad_pipeline_is_a_clear_error(A, adapter, pipeline, message):
    with pytest.raises(ValueError, match=message):
        adapter.from_config(pipeline)


def _flip_config(size: int) -> dict:
    return {
        "_target_": "ocr.data.albumentations.from_config",
        "size": size,
        "pipeline": [{"__class_fullname__": "HorizontalFlip", "p": 1.0}],
    }


def test_adapter_batches_through_the_dataset(A, folder):
    dataset = _dataset(folder, _flip_config(64), targets={})
    batch = dataset.__getitems__([0, 1])
    assert isinstance(batch, Batch)
    assert tuple(batch.image.shape) == (2, 64, 64, 3)
    assert tuple(batch.targets.prob_map.shape) == (2, 64, 64)
    for slot, name in enumerate(["a.png", "b.png"]):
        image = batch.image[slot].numpy()
        np.testing.assert_array_equal(image[:HEIGHT, :WIDTH], _draw(BOXES[name])[:, ::-1])
        white = image[..., 0] > 127
        np.testing.assert_array_equal(white, _covered(batch.polygons[slot], 64, 64))


def test_adapter_samples_map_back_to_the_annotations(A, folder):
    sample = _dataset(folder, _flip_config(64), name="val_dataset")[0]
    back = sample.polygons.astype(np.float64).transformed(sample.inverse_matrix)
    np.testing.assert_allclose(back.points, sample.gt_polygons.points, atol=1e-4)


def _random_config(size: int) -> dict:
    return {
        "_target_": "ocr.data.albumentations.from_config",
        "size": size,
        "pipeline": [
            {"__class_fullname__": "HorizontalFlip", "p": 0.5},
            {"__class_fullname__": "Affine", "rotate": [-10, 10], "p": 1.0},
        ],
    }


def test_adapter_survives_pickling(A, adapter):
    # Spawned DataLoader workers receive the dataset, and its transform, pickled.
    transform = build_transform(_random_config(64))
    copy = pickle.loads(pickle.dumps(transform))
    image, polygons = _draw(BOXES["a.png"]), _polygons(BOXES["a.png"])
    a = transform(image, polygons, np.random.default_rng(7))
    b = copy(image, polygons, np.random.default_rng(7))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.matrix, b.matrix)


def test_adapter_batches_do_not_depend_on_the_workers(A, folder):
    dataset = _dataset(folder, _random_config(64), targets={})
    serial = list(build_loader(dataset, {"batch_size": 1, "num_workers": 0}))
    parallel = list(build_loader(dataset, {"batch_size": 1, "num_workers": 2}))
    assert_batches_equal(serial, parallel)
