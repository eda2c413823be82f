"""ICDAR 2015 metric: every expectation below is computed by hand from rectangle areas."""

from __future__ import annotations

import numpy as np
import pytest

from ocr.metrics import DetectionMetric, ImageCounts, evaluate_image


def box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Axis-aligned rectangle [x0, x1] x [y0, y1] as a clockwise (4, 2) polygon."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def test_perfect_match_scores_one():
    metric = DetectionMetric()
    metric.update([box(0, 0, 10, 10), box(20, 0, 30, 10)], [box(0, 0, 10, 10), box(20, 0, 30, 10)])
    assert metric.compute() == {
        "precision": 1.0,
        "recall": 1.0,
        "hmean": 1.0,
        "matched": 2,
        "num_pred": 2,
        "num_gt": 2,
    }


def test_no_predictions_counts_the_ground_truth_and_scores_zero():
    metric = DetectionMetric()
    metric.update([], [box(0, 0, 10, 10), box(20, 0, 30, 10)])
    assert metric.compute() == {
        "precision": 0.0,
        "recall": 0.0,
        "hmean": 0.0,
        "matched": 0,
        "num_pred": 0,
        "num_gt": 2,
    }


def test_predictions_without_ground_truth_score_zero():
    metric = DetectionMetric()
    metric.update([box(0, 0, 10, 10)], [])
    assert metric.compute() == {
        "precision": 0.0,
        "recall": 0.0,
        "hmean": 0.0,
        "matched": 0,
        "num_pred": 1,
        "num_gt": 0,
    }


def test_nothing_at_all_scores_zero():
    metric = DetectionMetric()
    metric.update([], [])
    assert metric.compute() == {
        "precision": 0.0,
        "recall": 0.0,
        "hmean": 0.0,
        "matched": 0,
        "num_pred": 0,
        "num_gt": 0,
    }


@pytest.mark.parametrize(
    ("pred", "matched"),
    [
        # [0,10]x[0,5] inside [0,10]x[0,10]: IoU = 50 / 100 = 0.5 exactly.
        (box(0, 0, 10, 5), 1),
        # [0,10]x[0,4.99]: IoU = 49.9 / 100 = 0.499.
        (box(0, 0, 10, 4.99), 0),
    ],
    ids=["iou-exactly-0.5-matches", "iou-0.499-does-not"],
)
def test_iou_threshold_is_inclusive(pred, matched):
    counts = evaluate_image([pred], [box(0, 0, 10, 10)])
    assert counts == ImageCounts(matched=matched, num_pred=1, num_gt=1)


def test_two_predictions_on_one_ground_truth_match_once():
    metric = DetectionMetric()
    metric.update([box(0, 0, 10, 10), box(0, 0, 10, 9)], [box(0, 0, 10, 10)])
    result = metric.compute()
    assert (result["matched"], result["num_pred"], result["num_gt"]) == (1, 2, 1)
    assert result["precision"] == 0.5
    assert result["recall"] == 1.0
    assert result["hmean"] == pytest.approx(2 / 3, abs=1e-15)


@pytest.mark.parametrize(
    ("pred", "expected"),
    [
        # 80 of its 100 area units lie in the don't-care box (0.8 > 0.5): removed.
        (box(2, 0, 12, 10), ImageCounts(matched=0, num_pred=0, num_gt=1)),
        # 20 of 100 lie in it (0.2 <= 0.5): kept, and matches nothing.
        (box(8, 0, 18, 10), ImageCounts(matched=0, num_pred=1, num_gt=1)),
    ],
    ids=["mostly-inside-removed", "mostly-outside-kept"],
)
def test_dont_care_ground_truth_removes_predictions_mostly_inside_it(pred, expected):
    dont_care, care = box(0, 0, 10, 10), box(100, 100, 110, 110)
    counts = evaluate_image([pred], [dont_care, care], gt_ignore=[True, False])
    assert counts == expected


def test_overlap_exactly_at_ignore_overlap_keeps_the_prediction():
    # Half of the prediction lies in the don't-care box; the rule needs strictly more.
    counts = evaluate_image([box(5, 0, 15, 10)], [box(0, 0, 10, 10)], gt_ignore=[True])
    assert counts == ImageCounts(matched=0, num_pred=1, num_gt=0)


@pytest.mark.parametrize(
    ("preds", "matched"),
    [
        # gt0 = [0,10]x[0,10], gt1 = [4,14]x[0,10]; wide = [2,12]x[0,10] has IoU 80/120 with
        # both; exact = gt0 has IoU 1 with gt0 and 60/140 (< 0.5) with gt1. Visiting wide first,
        # gt0 takes it and gt1 is left with exact only: one match, not the optimal two.
        ([box(2, 0, 12, 10), box(0, 0, 10, 10)], 1),
        ([box(0, 0, 10, 10), box(2, 0, 12, 10)], 2),
    ],
    ids=["wide-first-greedy-loses-one", "exact-first-matches-both"],
)
def test_matching_is_greedy_in_input_order(preds, matched):
    counts = evaluate_image(preds, [box(0, 0, 10, 10), box(4, 0, 14, 10)])
    assert counts == ImageCounts(matched=matched, num_pred=2, num_gt=2)


def test_counts_are_summed_over_images():
    metric = DetectionMetric()
    metric.update([box(0, 0, 10, 10)], [box(0, 0, 10, 10)])  # 1 matched / 1 pred / 1 gt
    metric.update([box(50, 50, 60, 60), box(70, 70, 80, 80)], [box(0, 0, 10, 10)])  # 0 / 2 / 1
    result = metric.compute()
    assert (result["matched"], result["num_pred"], result["num_gt"]) == (1, 3, 2)
    assert result["precision"] == pytest.approx(1 / 3, abs=1e-15)
    assert result["recall"] == 0.5
    assert result["hmean"] == 0.4


def test_add_of_counts_equals_update():
    metric = DetectionMetric()
    metric.add(ImageCounts(matched=1, num_pred=1, num_gt=1))
    metric.add(ImageCounts(matched=0, num_pred=2, num_gt=1))
    assert metric.compute() == {
        "precision": 1 / 3,
        "recall": 0.5,
        "hmean": 0.4,
        "matched": 1,
        "num_pred": 3,
        "num_gt": 2,
    }


def test_update_returns_the_image_counts():
    metric = DetectionMetric()
    counts = metric.update([box(0, 0, 10, 10), box(50, 50, 60, 60)], [box(0, 0, 10, 10)])
    assert counts == ImageCounts(matched=1, num_pred=2, num_gt=1)


def test_reset_forgets_accumulated_counts():
    metric = DetectionMetric()
    metric.update([box(0, 0, 10, 10)], [box(0, 0, 10, 10)])
    metric.reset()
    assert (metric.compute()["matched"], metric.compute()["num_gt"]) == (0, 0)


def test_self_intersecting_prediction_is_repaired_not_fatal():
    # Bow-tie through (0,0),(10,10),(10,0),(0,10): two triangles of area 25 each, 50 in all,
    # inside [0,10]x[0,10], so IoU = 50 / 100 = 0.5.
    bow_tie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], dtype=np.float64)
    counts = evaluate_image([bow_tie], [box(0, 0, 10, 10)])
    assert counts == ImageCounts(matched=1, num_pred=1, num_gt=1)


def test_zero_area_prediction_counts_but_never_matches():
    flat = np.array([[0, 5], [10, 5], [10, 5], [0, 5]], dtype=np.float64)
    counts = evaluate_image([flat], [box(0, 0, 10, 10)])
    assert counts == ImageCounts(matched=0, num_pred=1, num_gt=1)


def test_rotated_polygons_use_their_true_overlap():
    # A diamond with corners at the edge midpoints of [0,10]^2 covers half of it: IoU 0.5.
    diamond = np.array([[5, 0], [10, 5], [5, 10], [0, 5]], dtype=np.float64)
    assert evaluate_image([diamond], [box(0, 0, 10, 10)]).matched == 1


def test_wrong_number_of_ignore_flags_raises():
    with pytest.raises(ValueError, match="one flag per ground truth: 2 polygons, 1 flags"):
        evaluate_image([], [box(0, 0, 1, 1), box(2, 2, 3, 3)], gt_ignore=[False])


@pytest.mark.parametrize(
    "polygon",
    [np.zeros((2, 2)), np.zeros((4, 3)), np.zeros(8), np.array([[0, 0], [1, np.nan], [1, 1]])],
    ids=["two-points", "three-columns", "flat-array", "nan"],
)
def test_malformed_polygon_raises(polygon):
    with pytest.raises(ValueError, match="prediction 0"):
        evaluate_image([polygon], [])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"iou_threshold": 0.0}, ValueError, r"iou_threshold must be in \(0, 1\]"),
        ({"iou_threshold": 1.01}, ValueError, r"iou_threshold must be in \(0, 1\]"),
        ({"iou_threshold": float("nan")}, ValueError, "iou_threshold"),
        ({"ignore_overlap": -0.1}, ValueError, r"ignore_overlap must be in \[0, 1\]"),
        ({"iou_threshold": "0.5"}, TypeError, "iou_threshold must be a number"),
    ],
    ids=["iou-zero", "iou-above-one", "iou-nan", "overlap-negative", "iou-string"],
)
def test_bad_threshold_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        DetectionMetric(**kwargs)


@pytest.mark.parametrize(
    "counts",
    [ImageCounts(2, 1, 5), ImageCounts(0, -1, 0), ImageCounts(1, 5, 0)],
    ids=["more-matches-than-predictions", "negative", "more-matches-than-gt"],
)
def test_inconsistent_counts_are_rejected(counts):
    with pytest.raises(ValueError, match="inconsistent counts"):
        DetectionMetric().add(counts)
