"""DBNet post-processing on ideal probability maps whose expected boxes are known by hand.

The maps are drawn by ``DBNetTargets(shrink_ratio=0.4)``, exactly like training targets. For a
w x h rectangle the shrink distance is ``D = w h (1 - 0.4^2) / (2 (w + h))``; the unclip
distance of the shrunk w' x h' box is ``d = w' h' 1.5 / (2 (w' + h'))``. The 200 x 40 box at
(50, 40) gives D = 8000 * 0.84 / 480 = 14, a shrunk box [64, 236] x [54, 66] (172 x 12), then
d = 2064 * 1.5 / 368 = 8.413..., hence the expected box [55.587, 244.413] x [45.587, 74.413].
DBNet's unclip does not fully undo its shrink on elongated boxes (IoU 0.68 here); near-square
boxes come back almost exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from ocr.data.targets import DBNetTargets
from ocr.postprocess import DBPostProcess, Detection, inverse_shrink_distance

UNCLIP = 172 * 12 * 1.5 / (2 * (172 + 12))  # 8.413043...
GT_200x40 = np.array([[50, 40], [250, 40], [250, 80], [50, 80]], dtype=np.float64)
EXPECTED_200x40 = np.array(
    [
        [64 - UNCLIP, 54 - UNCLIP],
        [236 + UNCLIP, 54 - UNCLIP],
        [236 + UNCLIP, 66 + UNCLIP],
        [64 - UNCLIP, 66 + UNCLIP],
    ]
)


def rect(cx: float, cy: float, w: float, h: float, degrees: float) -> np.ndarray:
    """w x h rectangle centred at (cx, cy), turned clockwise on screen, corners tl, tr, br, bl."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return np.array([(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners])


def ideal_map(polygons: list[np.ndarray], shape: tuple[int, int] = (320, 320)) -> torch.Tensor:
    maps = DBNetTargets(shrink_ratio=0.4)(shape, polygons, [False] * len(polygons))
    return torch.from_numpy(maps.prob_map.astype(np.float32))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = Polygon(a), Polygon(b)
    return pa.intersection(pb).area / pa.union(pb).area


@pytest.fixture(scope="module")
def post() -> DBPostProcess:
    return DBPostProcess(thresh=0.3, box_thresh=0.6, unclip_ratio=1.5)


@pytest.fixture(scope="module")
def map_200x40() -> torch.Tensor:
    return ideal_map([GT_200x40])


def test_axis_aligned_box_comes_back_as_the_unclip_formula_predicts(post, map_200x40):
    # Fails with a half-pixel shift (centre moves to 150.5, 60.5) or another unclip ratio.
    (det,) = post(map_200x40.numpy())
    np.testing.assert_allclose(det.polygon, EXPECTED_200x40, atol=0.01)
    assert iou(det.polygon, GT_200x40) == pytest.approx(188.826 * 28.826 / 8000, abs=0.002)


def test_detection_is_a_float64_quadrilateral_with_its_score(post, map_200x40):
    (det,) = post(map_200x40.numpy())
    assert isinstance(det, Detection)
    assert det.polygon.shape == (4, 2) and det.polygon.dtype == np.float64
    assert det.score == pytest.approx(1.0)


@pytest.mark.parametrize(
    "gt",
    [rect(160, 160, 60, 40, 0), rect(160, 160, 80, 60, 15), rect(160, 160, 100, 100, 30)],
    ids=["60x40-axis-aligned", "80x60-at-15deg", "100x100-at-30deg"],
)
def test_compact_box_is_recovered_with_iou_at_least_0_8(post, gt):
    (det,) = post(ideal_map([gt]))
    assert iou(det.polygon, gt) >= 0.8


def test_rotated_text_line_keeps_centre_and_angle(post):
    gt = rect(160, 160, 200, 40, 15)
    (det,) = post(ideal_map([gt]))
    # Ideal recovery (from the formulas above): same centre and angle, 188.826 x 28.826.
    ideal = rect(160, 160, 172 + 2 * UNCLIP, 12 + 2 * UNCLIP, 15)
    assert iou(det.polygon, ideal) >= 0.85
    np.testing.assert_allclose(det.polygon.mean(axis=0), [160, 160], atol=0.5)
    top = det.polygon[1] - det.polygon[0]
    assert math.degrees(math.atan2(top[1], top[0])) == pytest.approx(15, abs=0.5)


def test_corners_start_top_left_and_run_clockwise(post):
    gt = rect(160, 160, 200, 40, 15)
    (det,) = post(ideal_map([gt]))
    nearest_gt_corner = [int(np.argmin(np.linalg.norm(gt - p, axis=1))) for p in det.polygon]
    assert nearest_gt_corner == [0, 1, 2, 3]


def test_every_box_of_a_map_is_found_once(post):
    gts = [
        GT_200x40,
        rect(400, 300, 200, 40, 15),
        rect(300, 500, 120, 40, -30),
        rect(500, 520, 80, 60, 10),
        rect(150, 200, 60, 30, 0),
    ]
    dets = post(ideal_map(gts, (640, 640)))
    assert len(dets) == 5
    overlaps = np.array([[iou(d.polygon, g) for g in gts] for d in dets])
    assert np.all((overlaps >= 0.5).sum(axis=0) == 1)
    assert np.all((overlaps >= 0.5).sum(axis=1) == 1)


def test_detections_are_sorted_top_to_bottom(post):
    lower, upper = rect(160, 250, 120, 40, 0), rect(160, 60, 120, 40, 0)
    dets = post(ideal_map([lower, upper]))
    assert [iou(d.polygon, g) > 0.5 for d, g in zip(dets, [upper, lower], strict=True)] == [
        True,
        True,
    ]


def test_empty_map_gives_no_detections(post):
    assert post(np.zeros((64, 64), dtype=np.float32)) == []


def test_score_is_the_mean_probability_inside_the_blob(post):
    prob = np.zeros((64, 64))
    prob[10:20, 10:30] = 1.0  # 200 pixels
    prob[10:20, 30:40] = 0.4  # 100 pixels, above thresh 0.3
    (det,) = post(prob)
    assert det.score == pytest.approx((200 * 1.0 + 100 * 0.4) / 300)


@pytest.mark.parametrize(
    ("box_thresh", "kept"), [(0.75, 1), (0.76, 0)], ids=["at-box-thresh-kept", "below-dropped"]
)
def test_blob_below_box_thresh_is_dropped(box_thresh, kept):
    prob = np.zeros((64, 64), dtype=np.float32)
    prob[10:20, 10:40] = 0.75
    assert len(DBPostProcess(box_thresh=box_thresh)(prob)) == kept


@pytest.mark.parametrize(
    ("rows", "kept"),
    # Contour points span rows - 1 pixels: 4 rows -> short side 3 (= min_size, kept; the
    # unclipped side 3 + 2 * 117 * 1.5 / 84 = 7.18 passes min_size + 2), 3 rows -> 2 (dropped).
    [(4, 1), (3, 0)],
    ids=["short-side-3-kept", "short-side-2-dropped"],
)
def test_blob_narrower_than_min_size_is_dropped(post, rows, kept):
    prob = np.zeros((64, 64), dtype=np.float32)
    prob[10 : 10 + rows, 10:50] = 1.0
    assert len(post(prob)) == kept


def test_max_candidates_limits_the_contours_examined():
    prob = np.zeros((64, 64), dtype=np.float32)
    for top in (5, 25, 45):
        prob[top : top + 10, 10:40] = 1.0
    assert len(DBPostProcess(max_candidates=1)(prob)) == 1
    assert len(DBPostProcess(max_candidates=3)(prob)) == 3


def test_inverse_matrix_maps_corners_to_the_upright_frame(post, map_200x40):
    matrix = np.array([[2.0, 0.0, 5.0], [0.0, 2.0, -3.0], [0.0, 0.0, 1.0]])
    (det,) = post(map_200x40, matrix)
    # x' = 2 x + 5, y' = 2 y - 3 applied by hand to the expected sample-frame corners.
    expected = np.array(
        [
            [133 - 2 * UNCLIP, 105 - 2 * UNCLIP],
            [477 + 2 * UNCLIP, 105 - 2 * UNCLIP],
            [477 + 2 * UNCLIP, 129 + 2 * UNCLIP],
            [133 - 2 * UNCLIP, 129 + 2 * UNCLIP],
        ]
    )
    np.testing.assert_allclose(det.polygon, expected, atol=0.02)


def test_corners_are_clipped_to_the_upright_size(post, map_200x40):
    (det,) = post(map_200x40, np.eye(3), upright_size=(200, 100))
    expected = EXPECTED_200x40.copy()
    expected[1:3, 0] = 200.0
    np.testing.assert_allclose(det.polygon, expected, atol=0.01)


def test_detection_outside_the_upright_image_is_dropped(post, map_200x40):
    assert post(map_200x40, np.eye(3), upright_size=(40, 40)) == []


def test_torch_tensor_with_channel_axis_is_accepted(post, map_200x40):
    (det,) = post(map_200x40.unsqueeze(0), torch.eye(3, dtype=torch.float64))
    np.testing.assert_allclose(det.polygon, EXPECTED_200x40, atol=0.01)


def test_batch_returns_one_list_per_map_with_its_own_matrix(post, map_200x40):
    maps = torch.stack([map_200x40, torch.zeros_like(map_200x40), map_200x40]).unsqueeze(1)
    shift = np.eye(3)
    shift[:2, 2] = (10.0, 20.0)
    out = post.batch(maps, np.stack([np.eye(3), np.eye(3), shift]), [(320, 320)] * 3)
    assert [len(dets) for dets in out] == [1, 0, 1]
    np.testing.assert_allclose(out[0][0].polygon, EXPECTED_200x40, atol=0.01)
    np.testing.assert_allclose(out[2][0].polygon, EXPECTED_200x40 + [10, 20], atol=0.01)


@pytest.mark.parametrize(
    "shape",
    [(64,), (2, 64, 64), (1, 1, 64, 64), (0, 64)],
    ids=["1d", "two-channels", "4d", "empty"],
)
def test_bad_prob_shape_raises(post, shape):
    with pytest.raises(ValueError, match="prob must"):
        post(np.zeros(shape, dtype=np.float32))


def test_prob_that_is_not_an_array_raises_type_error(post):
    with pytest.raises(TypeError, match="prob must be a numpy array or a torch tensor, got list"):
        post([[0.0, 1.0], [1.0, 0.0]])


def test_bad_inverse_matrix_shape_raises(post):
    with pytest.raises(ValueError, match=r"inverse_matrix must have shape \(3, 3\), got \(2, 3\)"):
        post(np.zeros((8, 8)), np.zeros((2, 3)))


@pytest.mark.parametrize("size", [(0, 10), (10,), "ab"], ids=["zero-width", "one-value", "string"])
def test_bad_upright_size_raises(post, size):
    with pytest.raises(ValueError, match="upright_size"):
        post(np.zeros((8, 8)), None, size)


def test_batch_with_too_few_sizes_raises(post):
    with pytest.raises(ValueError, match="upright_sizes must hold 2"):
        post.batch(np.zeros((2, 1, 8, 8)), None, [(8, 8)])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"thresh": 0.0}, ValueError, r"thresh must be in \(0, 1\), got 0.0"),
        ({"thresh": 1.0}, ValueError, r"thresh must be in \(0, 1\)"),
        ({"thresh": float("nan")}, ValueError, "thresh must be in"),
        ({"box_thresh": -0.01}, ValueError, r"box_thresh must be in \[0, 1\]"),
        ({"box_thresh": 1.01}, ValueError, r"box_thresh must be in \[0, 1\]"),
        ({"unclip_ratio": 0.0}, ValueError, "unclip_ratio must be a finite number > 0"),
        ({"max_candidates": 0}, ValueError, "max_candidates must be >= 1, got 0"),
        ({"max_candidates": 2.5}, TypeError, "max_candidates must be an integer"),
        ({"min_size": -1}, ValueError, "min_size must be a finite number >= 0"),
        ({"thresh": "0.3"}, TypeError, "thresh must be a number"),
    ],
    ids=[
        "thresh-zero",
        "thresh-one",
        "thresh-nan",
        "box-thresh-negative",
        "box-thresh-above-one",
        "unclip-zero",
        "candidates-zero",
        "candidates-float",
        "min-size-negative",
        "thresh-string",
    ],
)
def test_bad_parameter_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        DBPostProcess(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"box_thresh": 0.0}, {"box_thresh": 1.0}, {"min_size": 0}, {"max_candidates": 1}],
    ids=["box-thresh-zero", "box-thresh-one", "min-size-zero", "one-candidate"],
)
def test_boundary_parameters_are_accepted(kwargs):
    DBPostProcess(**kwargs)


# unclip_mode="inverse": the exact inverse of the targets' shrink of a rectangle.


@pytest.mark.parametrize(
    ("w", "h"),
    [(200, 40), (400, 20), (60, 40), (100, 100)],
    ids=["200x40", "400x20", "60x40", "square"],
)
def test_inverse_shrink_distance_restores_the_targets_shrink(w, h):
    shrink = w * h * (1 - 0.4**2) / (2 * (w + h))  # the targets' D, by hand
    shrunk_w, shrunk_h = w - 2 * shrink, h - 2 * shrink
    distance = inverse_shrink_distance(shrunk_w * shrunk_h, 2 * (shrunk_w + shrunk_h), 0.4)
    assert distance == pytest.approx(shrink, rel=1e-9)


def test_inverse_mode_recovers_the_200x40_box_exactly(map_200x40):
    # D = 14 by hand (module docstring): the shrunk [64, 236] x [54, 66] grows back to the box.
    (det,) = DBPostProcess(unclip_mode="inverse")(map_200x40.numpy())
    np.testing.assert_allclose(det.polygon, GT_200x40, atol=0.01)


@pytest.mark.parametrize(
    "gt",
    [rect(160, 100, 300, 20, 0), rect(160, 160, 200, 40, 15)],
    ids=["thin-line-300x20", "200x40-at-15deg"],
)
def test_inverse_mode_recovers_long_lines_the_ratio_mode_loses(gt):
    prob = ideal_map([gt]).numpy()
    (inverse,) = DBPostProcess(unclip_mode="inverse")(prob)
    (ratio,) = DBPostProcess(unclip_mode="ratio")(prob)
    assert iou(inverse.polygon, gt) >= 0.85
    assert iou(ratio.polygon, gt) < 0.7


def test_unknown_unclip_mode_raises():
    with pytest.raises(ValueError, match="unclip_mode must be 'ratio' or 'inverse', got 'exact'"):
        DBPostProcess(unclip_mode="exact")
