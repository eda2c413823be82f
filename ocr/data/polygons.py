"""Polygon area and perimeter: one formula for one polygon and for a whole set at once.

A polygon is closed: its last point joins its first. The area is the absolute shoelace sum
``|sum(x_i y_(i+1) - y_i x_(i+1))| / 2``, the perimeter the sum of the edges' Euclidean
lengths (``hypot``), both in float64. The one-polygon functions are the set functions applied to
a set of one, so both give the same bits for the same points (``PolygonSet.areas`` and
``perimeters`` in ``ocr.data.sample`` use the set functions; ``DBNetTargets`` shrinks by them
and ``DBPostProcess`` unclips by them).
"""

from __future__ import annotations

import numpy as np


def _next_index(count: int, offsets: np.ndarray) -> np.ndarray:
    """For each of ``count`` points, the index of the next point of the same polygon (cyclic)."""
    nxt = np.arange(1, count + 1)
    if len(offsets) > 1:
        nxt[offsets[1:] - 1] = offsets[:-1]
    return nxt


def polygon_areas(points: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Absolute shoelace area of each polygon of a set (float64).

    Args:
        points: ``(P, 2)`` points, polygon after polygon.
        offsets: ``(N + 1,)`` int64 start of each polygon in ``points`` and the end of the last;
            each polygon has at least one point.

    Returns:
        ``(N,)`` areas.
    """
    if len(offsets) < 2:
        return np.zeros(0)
    pts = points.astype(np.float64, copy=False)
    starts = offsets[:-1]
    # Relative to each polygon's first point: the same area with less cancellation, and
    # exactly 0 when all points share an x or a y (a box clipped onto an image border).
    rel = pts - np.repeat(pts[starts], np.diff(offsets), axis=0)
    nxt = rel[_next_index(len(rel), offsets)]
    cross = rel[:, 0] * nxt[:, 1] - rel[:, 1] * nxt[:, 0]
    return np.abs(np.add.reduceat(cross, starts)) / 2


def polygon_perimeters(points: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Closed perimeter of each polygon of a set (float64); arguments as ``polygon_areas``."""
    if len(offsets) < 2:
        return np.zeros(0)
    pts = points.astype(np.float64, copy=False)
    edges = np.hypot(*(pts[_next_index(len(pts), offsets)] - pts).T)
    return np.add.reduceat(edges, offsets[:-1])


def _one(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError(f"a polygon must have shape (N, 2) with N >= 1, got {pts.shape}")
    return pts, np.array([0, len(pts)], dtype=np.int64)


def polygon_area(points: np.ndarray) -> float:
    """Absolute shoelace area of one ``(N, 2)`` polygon, as ``polygon_areas`` computes it.

    Raises:
        ValueError: ``points`` is not ``(N, 2)`` with N >= 1.
    """
    return float(polygon_areas(*_one(points))[0])


def polygon_perimeter(points: np.ndarray) -> float:
    """Closed perimeter of one ``(N, 2)`` polygon, as ``polygon_perimeters`` computes it.

    Raises:
        ValueError: ``points`` is not ``(N, 2)`` with N >= 1.
    """
    return float(polygon_perimeters(*_one(points))[0])
