"""ICDAR 2015 style text detection metric: precision, recall and H-mean from polygon IoU.

The rules follow the ICDAR 2015 Robust Reading "script.py" (DetEva-free IoU protocol):

* ground truths flagged ignore ("###" transcriptions) are *don't care*;
* a prediction is removed (counted neither as a prediction nor as a match) when its
  intersection with some don't-care ground truth, divided by the prediction's own area, is
  greater than ``ignore_overlap``;
* matching is one-to-one and greedy in the script's order: for each care ground truth in
  order, for each care prediction in order, the first pair where neither is matched yet and
  whose IoU reaches the threshold is matched. The original script requires ``IoU > 0.5``;
  this module uses ``IoU >= iou_threshold`` (the project's promise is "IoU >= 0.5").

Polygons go through shapely: invalid ones (self-intersecting, like a bow-tie) are repaired with
``make_valid``; degenerate ones (zero area) never match but still count. Counts are integers
summed over images, never per-image averages, so results are exactly reproducible, and counts
computed on several processes merge to the single-process result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon

from .checks import check_number, is_number


@dataclass
class ImageCounts:
    """Counts of one image (or a sum of images).

    Attributes:
        matched: Care predictions matched one-to-one to care ground truths.
        num_pred: Care predictions (those not removed by a don't-care ground truth).
        num_gt: Care ground truths.
    """

    matched: int
    num_pred: int
    num_gt: int


def _check_fraction(name: str, value: Any, low_open: bool) -> float:
    """``value`` as a float in ``(0, 1]`` (``[0, 1]`` without ``low_open``)."""
    return float(check_number(name, value, minimum=0, maximum=1, exclusive_minimum=low_open))


def _to_geometry(points: Any, what: str) -> shapely.Geometry:
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be an (N, 2) array of numbers") from e
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] < 3:
        raise ValueError(f"{what} must have shape (N, 2) with N >= 3, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} has non-finite coordinates")
    polygon = Polygon(array)
    return polygon if polygon.is_valid else shapely.make_valid(polygon)


def _intersection_areas(rows: list[shapely.Geometry], cols: list[shapely.Geometry]) -> np.ndarray:
    """``areas[i, j]`` = area of ``rows[i] & cols[j]``, computed only for overlapping bounds."""
    areas = np.zeros((len(rows), len(cols)))
    if not rows or not cols:
        return areas
    tree = shapely.STRtree(cols)
    row_idx, col_idx = tree.query(np.array(rows, dtype=object), predicate="intersects")
    if len(row_idx):
        left = np.array(rows, dtype=object)[row_idx]
        right = np.array(cols, dtype=object)[col_idx]
        areas[row_idx, col_idx] = shapely.area(shapely.intersection(left, right))
    return areas


def evaluate_image(
    pred_polygons: Sequence[np.ndarray],
    gt_polygons: Sequence[np.ndarray],
    gt_ignore: Sequence[bool] | None = None,
    iou_threshold: float = 0.5,
    ignore_overlap: float = 0.5,
) -> ImageCounts:
    """Match the predictions of one image to its ground truth, ICDAR 2015 style.

    Args:
        pred_polygons: Predicted polygons, each ``(N, 2)`` with N >= 3, in the order the
            greedy matching visits them.
        gt_polygons: Ground-truth polygons, each ``(N, 2)`` with N >= 3.
        gt_ignore: One flag per ground truth, True for don't care; None means all care.
        iou_threshold: A pair matches when its IoU is ``>=`` this, in ``(0, 1]``.
        ignore_overlap: A prediction is removed when more than this fraction of its area lies
            in one don't-care ground truth, in ``[0, 1]``.

    Returns:
        The image's counts.

    Raises:
        TypeError: A threshold is not a number.
        ValueError: A polygon is not ``(N, 2)`` with N >= 3 finite points, ``gt_ignore`` does
            not have one flag per ground truth, or a threshold is out of range.
    """
    iou_threshold = _check_fraction("iou_threshold", iou_threshold, low_open=True)
    ignore_overlap = _check_fraction("ignore_overlap", ignore_overlap, low_open=False)
    ignore = [False] * len(gt_polygons) if gt_ignore is None else [bool(f) for f in gt_ignore]
    if len(ignore) != len(gt_polygons):
        raise ValueError(
            f"gt_ignore must have one flag per ground truth: {len(gt_polygons)} polygons, "
            f"{len(ignore)} flags"
        )
    preds = [_to_geometry(p, f"prediction {i}") for i, p in enumerate(pred_polygons)]
    gts = [_to_geometry(g, f"ground truth {i}") for i, g in enumerate(gt_polygons)]
    care_gts = [g for g, flag in zip(gts, ignore, strict=True) if not flag]
    dont_care = [g for g, flag in zip(gts, ignore, strict=True) if flag]

    preds, pred_areas = _drop_dont_care(preds, dont_care, ignore_overlap)
    matched = _greedy_matches(care_gts, preds, pred_areas, iou_threshold)
    return ImageCounts(matched=matched, num_pred=len(preds), num_gt=len(care_gts))


def _drop_dont_care(
    preds: list[shapely.Geometry], dont_care: list[shapely.Geometry], ignore_overlap: float
) -> tuple[list[shapely.Geometry], np.ndarray]:
    """The predictions without those more than ``ignore_overlap`` of whose area lies in one
    don't-care ground truth, and the kept predictions' areas."""
    pred_areas = np.array([p.area for p in preds])
    if dont_care and preds:
        inside = _intersection_areas(preds, dont_care)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(pred_areas[:, None] > 0, inside / pred_areas[:, None], 0.0)
        keep = ~np.any(share > ignore_overlap, axis=1)
        preds = [p for p, k in zip(preds, keep, strict=True) if k]
        pred_areas = pred_areas[keep]
    return preds, pred_areas


def _greedy_matches(
    care_gts: list[shapely.Geometry],
    preds: list[shapely.Geometry],
    pred_areas: np.ndarray,
    iou_threshold: float,
) -> int:
    """One-to-one matches in the script's order: each ground truth takes the first free
    prediction whose IoU with it is ``>= iou_threshold``."""
    inter = _intersection_areas(care_gts, preds)
    gt_areas = np.array([g.area for g in care_gts])
    union = gt_areas[:, None] + pred_areas[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    # Zero-area predictions never match, even against a zero-area ground truth.
    iou[:, pred_areas <= 0] = 0.0

    matched = 0
    pred_taken = np.zeros(len(preds), dtype=bool)
    for g in range(len(care_gts)):
        for p in range(len(preds)):
            if not pred_taken[p] and iou[g, p] >= iou_threshold:
                pred_taken[p] = True
                matched += 1
                break
    return matched


class DetectionMetric:
    """Accumulates ICDAR 2015 counts over images and turns them into P, R and H-mean.

    Args:
        iou_threshold: A pair matches when its IoU is ``>=`` this, in ``(0, 1]``.
        ignore_overlap: Share of a prediction's area inside a don't-care ground truth above
            which the prediction is removed, in ``[0, 1]``.

    Raises:
        TypeError: A threshold is not a number.
        ValueError: A threshold is out of range.
    """

    def __init__(self, iou_threshold: float = 0.5, ignore_overlap: float = 0.5) -> None:
        self.iou_threshold = _check_fraction("iou_threshold", iou_threshold, low_open=True)
        self.ignore_overlap = _check_fraction("ignore_overlap", ignore_overlap, low_open=False)
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated count."""
        self.matched = 0
        self.num_pred = 0
        self.num_gt = 0

    def update(
        self,
        pred_polygons: Sequence[np.ndarray],
        gt_polygons: Sequence[np.ndarray],
        gt_ignore: Sequence[bool] | None = None,
    ) -> ImageCounts:
        """Evaluate one image (see ``evaluate_image``), add its counts, and return them."""
        counts = evaluate_image(
            pred_polygons, gt_polygons, gt_ignore, self.iou_threshold, self.ignore_overlap
        )
        self.add(counts)
        return counts

    def add(self, counts: ImageCounts) -> None:
        """Add counts computed elsewhere (another process, a cache of per-image counts).

        Raises:
            TypeError: ``counts`` is not an ``ImageCounts`` of integers.
            ValueError: Negative counts, or more matches than predictions or ground truths.
        """
        if not isinstance(counts, ImageCounts):
            raise TypeError(f"counts must be an ImageCounts, got {type(counts).__name__}")
        values = (counts.matched, counts.num_pred, counts.num_gt)
        if not all(is_number(v, integer=True) for v in values):
            raise TypeError(f"counts must hold integers, got {counts}")
        if min(values) < 0 or counts.matched > min(counts.num_pred, counts.num_gt):
            raise ValueError(
                f"inconsistent counts {counts}: expected 0 <= matched <= min(num_pred, num_gt)"
            )
        self.matched += int(counts.matched)
        self.num_pred += int(counts.num_pred)
        self.num_gt += int(counts.num_gt)

    def compute(self) -> dict[str, float | int]:
        """Global precision, recall and H-mean of everything accumulated so far.

        Returns:
            ``{"precision", "recall", "hmean", "matched", "num_pred", "num_gt"}``. Precision is
            0 without predictions, recall 0 without ground truths. H-mean ``2PR / (P + R)`` is
            computed as the equal ``2 * matched / (num_pred + num_gt)`` (0 without matches),
            which has a single rounding, so equal counts always give identical floats.
        """
        m, p, g = self.matched, self.num_pred, self.num_gt
        return {
            "precision": m / p if p else 0.0,
            "recall": m / g if g else 0.0,
            "hmean": 2 * m / (p + g) if m else 0.0,
            "matched": m,
            "num_pred": p,
            "num_gt": g,
        }


@dataclass(frozen=True)
class ImageScores:
    """Precision, recall and H-mean of one image (``image_scores``)."""

    precision: float
    recall: float
    hmean: float


def image_scores(counts: ImageCounts) -> ImageScores:
    """One image's precision, recall and H-mean, by the ICDAR 2015 script's per-sample rules.

    With care ground truths: recall ``matched / num_gt``, precision ``matched / num_pred``
    (0 without detections). Without care ground truths: recall 1, and precision 1 when there
    are no detections either (nothing to find, nothing found wrongly), else 0. H-mean is
    ``2PR / (P + R)``, 0 when both are 0. An image without words and without detections
    thus scores 1, and one without words but with detections scores 0.

    These are for ranking images (``ocr.report``); a split's metrics are never an average of
    them but come from the summed counts (``DetectionMetric.compute``).
    """
    m, p, g = counts.matched, counts.num_pred, counts.num_gt
    if g == 0:
        recall, precision = 1.0, (0.0 if p else 1.0)
    else:
        recall, precision = m / g, (m / p if p else 0.0)
    total = precision + recall
    return ImageScores(precision, recall, 2 * precision * recall / total if total else 0.0)
