"""Polygon geometry that follows the pixels: raw file frame -> upright -> cache scale -> sample.

The frames, the orientation and scale matrices live in ``lmdb_cache.geometry`` (the cache owns
the map from raw-file coordinates to its stored pixels, and the rule that detects points a
dataset already gives in the upright frame); this module adds the forms that take polygons.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmdb_cache.geometry import (
    SWAPS_SIDES,
    orientation_matrix,
    points_in_upright_frame,
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
    to be in the raw frame, as the format specifies. The rule lives in
    ``lmdb_cache.geometry.points_in_upright_frame``; this takes polygons instead of points.
    """
    if orientation not in SWAPS_SIDES or not len(polygons):
        return False  # the common case, decided without gathering the points
    if not isinstance(polygons, PolygonSet):
        polygons = PolygonSet.from_list(polygons)
    return points_in_upright_frame(polygons.points, orientation, raw_width, raw_height)
