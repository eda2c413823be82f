"""DBNet targets against hand-computed geometry, and the vectorised targets against the
per-polygon implementation they replaced.

``tools/reference_pipeline.ReferenceTargets`` is the previous ``ocr/data/targets.py`` kept as
the oracle: probability map and both masks must be identical, the threshold map within 1e-4.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import ocr.data.targets as targets_module
from ocr.data.sample import TARGET_DTYPES, TARGET_NAMES, DBNetMaps, PolygonSet
from ocr.data.targets import DBNetTargets
from tools.reference_pipeline import ReferenceTargets

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


# The vectorised targets against the per-polygon reference.


def _boxes(rng: np.random.Generator, count: int, shape: tuple[int, int]) -> list[np.ndarray]:
    """Axis-aligned text lines, some crossing the border, some tiny, some overlapping."""
    h, w = shape
    out = []
    for _ in range(count):
        x0, y0 = rng.uniform(-30, w - 10), rng.uniform(-20, h - 5)
        bw, bh = rng.uniform(2, 300), rng.uniform(2, 40)
        corners = [[x0, y0], [x0 + bw, y0], [x0 + bw, y0 + bh], [x0, y0 + bh]]
        out.append(np.array(np.roll(corners, int(rng.integers(4)), axis=0)))
    return out


def _general(rng: np.random.Generator, count: int, shape: tuple[int, int]) -> list[np.ndarray]:
    """Rotated quads and star-shaped polygons of 3-9 points (not axis-aligned)."""
    h, w = shape
    out = []
    for _ in range(count):
        k = int(rng.integers(3, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = rng.uniform(5, 60, k)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        out.append(np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1))
    return out


def _assert_matches_reference(shape, polygons, ignore, maps: DBNetMaps | None = None) -> None:
    expected = ReferenceTargets()(shape, polygons, ignore)
    got = maps if maps is not None else DBNetTargets()(shape, polygons, ignore)
    for name in ("prob_map", "prob_mask", "thresh_mask"):
        want = expected[name].numpy().astype(np.uint8)
        np.testing.assert_array_equal(getattr(got, name), want, err_msg=name)
    np.testing.assert_allclose(got.thresh_map, expected["thresh_map"].numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed", range(6), ids=lambda s: f"seed{s}")
def test_axis_aligned_boxes_give_the_reference_maps(seed):
    rng = np.random.default_rng(seed)
    shape = (240, 320)
    polygons = _boxes(rng, 40, shape)
    ignore = (rng.random(len(polygons)) < 0.15).tolist()
    _assert_matches_reference(shape, polygons, ignore)


@pytest.mark.parametrize("seed", range(6), ids=lambda s: f"seed{s}")
def test_general_polygons_give_the_reference_maps(seed):
    rng = np.random.default_rng(100 + seed)
    shape = (200, 260)
    polygons = _general(rng, 25, shape)
    ignore = (rng.random(len(polygons)) < 0.15).tolist()
    _assert_matches_reference(shape, polygons, ignore)


def test_drawing_on_copies_gives_the_same_maps(monkeypatch):
    # Where Pillow cannot draw into the caller's arrays, the drawings are copied back.
    monkeypatch.setattr(targets_module, "_SHARED_CANVAS", False)
    rng = np.random.default_rng(7)
    shape = (200, 260)
    polygons = _boxes(rng, 20, shape) + _general(rng, 10, shape)
    _assert_matches_reference(shape, polygons, [False] * len(polygons))


def test_maps_are_written_into_the_given_arrays():
    rng = np.random.default_rng(8)
    shape = (160, 200)
    polygons = _boxes(rng, 15, shape)
    batch = {n: np.full((3, *shape), 9, dtype=TARGET_DTYPES[n]) for n in TARGET_NAMES}
    slot = DBNetMaps(*(batch[n][1] for n in TARGET_NAMES))
    returned = DBNetTargets()(shape, PolygonSet.from_list(polygons), [False] * 15, out=slot)
    assert returned is slot
    _assert_matches_reference(shape, polygons, [False] * 15, slot)
    for name in TARGET_NAMES:  # the neighbouring slots are untouched
        assert (batch[name][0] == 9).all() and (batch[name][2] == 9).all(), name


def test_maps_have_the_declared_dtypes():
    maps = DBNetTargets()((50, 60), [np.array([[5, 5], [40, 5], [40, 30], [5, 30]])], [False])
    for name in TARGET_NAMES:
        assert getattr(maps, name).dtype == TARGET_DTYPES[name], name
    assert TARGET_DTYPES["thresh_map"] == np.float32
    assert {TARGET_DTYPES[n] for n in ("prob_map", "prob_mask", "thresh_mask")} == {
        np.dtype(np.uint8)
    }


def test_no_polygons_gives_empty_maps():
    maps = DBNetTargets(thresh_min=0.3)((20, 30), [], [])
    assert maps.prob_map.sum() == 0 and maps.thresh_mask.sum() == 0
    assert (maps.prob_mask == 1).all()
    np.testing.assert_allclose(maps.thresh_map, 0.3)


def test_one_ignore_flag_per_polygon_is_required():
    with pytest.raises(ValueError, match="one ignore flag per polygon"):
        DBNetTargets()((20, 30), [np.zeros((4, 2))], [False, True])


def test_real_receipts_after_the_train_transform_give_the_reference_maps(tmp_path, sroie_img_dir):
    from ocr.data.annotations import convert_icdar_folder
    from ocr.data.dataset import OCRDataset
    from ocr.data.transforms import TrainTransform

    ann = tmp_path / "sroie.json"
    ann.write_text(json.dumps(convert_icdar_folder(sroie_img_dir.parent / "box", sroie_img_dir)))
    ds = OCRDataset(sroie_img_dir, ann, TrainTransform(640), max_side=640)
    for index in range(0, len(ds), 7):
        sample = ds[index]
        _assert_matches_reference(
            sample.image.shape[:2], sample.polygons.to_list(), sample.ignore.tolist()
        )
