"""Polygon geometry that follows the pixels: raw file frame -> upright -> cache scale -> sample.

The frames, the orientation and scale matrices live in ``lmdb_cache.geometry`` (the cache owns
the map from raw-file coordinates to its stored pixels); this module adds what only annotations
need: detecting polygons that a dataset already gives in the upright frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmdb_cache.geometry import (
    SWAPS_SIDES,
    orientation_matrix,
    scale_matrix,
    transform_points,
    translate_matrix,
    upright_size,
)

from .sample import PolygonSet

__all__ = [
    "fits",
    "orientation_matrix",
    "polygons_in_upright_frame",
    "scale_matrix",
    "transform_points",
    "translate_matrix",
    "upright_size",
]


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
    if orientation not in SWAPS_SIDES or not len(polygons) or raw_width == raw_height:
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
