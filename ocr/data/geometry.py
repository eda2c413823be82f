"""Polygon geometry that follows the pixels: raw file frame -> upright -> cache scale -> sample.

All coordinates are continuous pixel-corner coordinates: the pixel (i, j) covers
``[j, j+1) x [i, i+1)``, so a width-W image spans x in [0, W]. Transforms are 3x3 affine
matrices acting on column vectors ``(x, y, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .sample import PolygonSet

# For each EXIF orientation, the affine map from the raw frame (size W x H) to the upright one,
# matching PIL.ImageOps.exif_transpose's transposition for that value.
#   2 FLIP_LEFT_RIGHT  x' = W - x, y' = y
#   3 ROTATE_180       x' = W - x, y' = H - y
#   4 FLIP_TOP_BOTTOM  x' = x,     y' = H - y
#   5 TRANSPOSE        x' = y,     y' = x
#   6 ROTATE_270       x' = H - y, y' = x      (90 degrees clockwise)
#   7 TRANSVERSE       x' = H - y, y' = W - x
#   8 ROTATE_90        x' = y,     y' = W - x  (90 degrees counter-clockwise)


def orientation_matrix(orientation: int, raw_width: float, raw_height: float) -> np.ndarray:
    """The matrix taking raw-frame points of a ``raw_width x raw_height`` file to the upright
    frame for EXIF ``orientation`` (1..8).

    Raises:
        ValueError: orientation outside 1..8.
    """
    w, h = float(raw_width), float(raw_height)
    table: dict[int, list[list[float]]] = {
        1: [[1, 0, 0], [0, 1, 0]],
        2: [[-1, 0, w], [0, 1, 0]],
        3: [[-1, 0, w], [0, -1, h]],
        4: [[1, 0, 0], [0, -1, h]],
        5: [[0, 1, 0], [1, 0, 0]],
        6: [[0, -1, h], [1, 0, 0]],
        7: [[0, -1, h], [-1, 0, w]],
        8: [[0, 1, 0], [-1, 0, w]],
    }
    if orientation not in table:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation}")
    return np.array(table[orientation] + [[0, 0, 1]], dtype=np.float64)


def upright_size(orientation: int, raw_width: int, raw_height: int) -> tuple[int, int]:
    """(width, height) of the upright image."""
    return (raw_height, raw_width) if orientation in (5, 6, 7, 8) else (raw_width, raw_height)


def scale_matrix(sx: float, sy: float) -> np.ndarray:
    return np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], dtype=np.float64)


def translate_matrix(tx: float, ty: float) -> np.ndarray:
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine matrix to an ``(N, 2)`` array of points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:2, :2].T + matrix[:2, 2]


def fits(points: np.ndarray, width: float, height: float, slack: float = 1.0) -> bool:
    """Whether all points lie inside ``[0, width] x [0, height]`` up to ``slack`` pixels."""
    pts = np.asarray(points)
    if pts.size == 0:
        return True
    return bool(
        pts[:, 0].min() >= -slack
        and pts[:, 1].min() >= -slack
        and pts[:, 0].max() <= width + slack
        and pts[:, 1].max() <= height + slack
    )


def polygons_in_upright_frame(
    polygons: Sequence[np.ndarray] | PolygonSet, orientation: int, raw_width: int, raw_height: int
) -> bool:
    """Detect annotations already given in the upright frame instead of the raw one.

    Only decidable for the orientations that swap the sides (5-8): polygons that fit the upright
    (swapped) size but not the raw size were drawn on the rotated image. Anything else is taken
    to be in the raw frame, as the format specifies.
    """
    if orientation not in (5, 6, 7, 8) or not len(polygons) or raw_width == raw_height:
        return False
    if not isinstance(polygons, PolygonSet):
        polygons = PolygonSet.from_list(polygons)
    low = polygons.points.min(axis=0)
    high = polygons.points.max(axis=0)
    return _box_fits(low, high, raw_height, raw_width) and not _box_fits(
        low, high, raw_width, raw_height
    )


def _box_fits(low: np.ndarray, high: np.ndarray, width: float, height: float) -> bool:
    """``fits`` for points whose bounding box is ``low``-``high``."""
    slack = 1.0
    return bool(
        low[0] >= -slack
        and low[1] >= -slack
        and high[0] <= width + slack
        and high[1] <= height + slack
    )
