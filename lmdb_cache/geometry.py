"""Where a point of the source file lands in the stored pixels: EXIF orientation and scale.

Three frames:

* **raw**: the image as stored in the file, ``raw_width x raw_height``, before orientation.
  Annotation formats give polygons in this frame.
* **upright**: after the EXIF orientation is applied (``PIL.ImageOps.exif_transpose``); its
  size is ``(raw_height, raw_width)`` for orientations 5-8.
* **stored**: the upright image after the longest-side cap, the record's ``width x height``.

Coordinates are continuous pixel-corner coordinates: pixel (i, j) covers ``[j, j+1) x [i, i+1)``,
so a width-W image spans x in [0, W]. Maps are 3x3 affine matrices on column vectors
``(x, y, 1)``; :func:`raw_to_pixels` composes them for one record and :func:`transform_points`
applies one to an ``(N, 2)`` array of points. Only numpy is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# For each EXIF orientation, the affine map from the raw frame (size W x H) to the upright one,
# matching PIL.ImageOps.exif_transpose's transposition for that value.
#   2 FLIP_LEFT_RIGHT  x' = W - x, y' = y
#   3 ROTATE_180       x' = W - x, y' = H - y
#   4 FLIP_TOP_BOTTOM  x' = x,     y' = H - y
#   5 TRANSPOSE        x' = y,     y' = x
#   6 ROTATE_270       x' = H - y, y' = x      (90 degrees clockwise)
#   7 TRANSVERSE       x' = H - y, y' = W - x
#   8 ROTATE_90        x' = y,     y' = W - x  (90 degrees counter-clockwise)
SWAPS_SIDES = frozenset({5, 6, 7, 8})


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
    """(width, height) of the upright image of a ``raw_width x raw_height`` file."""
    return (raw_height, raw_width) if orientation in SWAPS_SIDES else (raw_width, raw_height)


def longest_side_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) after scaling so the longest side is exactly ``side`` (up or down).

    The other side is scaled by the same factor, rounded to the nearest integer, at least 1.
    The one place this arithmetic lives: the cache's cap (:func:`capped_size`) and the OCR
    transforms' resize both use it, so their sizes cannot drift apart.
    """
    factor = side / max(width, height)
    if width >= height:
        return side, max(1, round(height * factor))
    return max(1, round(width * factor)), side


def capped_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The (width, height) an image takes under a longest-side cap; never upscales.

    Raises:
        ValueError: ``max_side`` below 1.
    """
    if max_side is None or max(width, height) <= max_side:
        return width, height
    if max_side < 1:
        raise ValueError(f"max_side must be a positive integer, got {max_side}")
    return longest_side_size(width, height, max_side)


def scale_matrix(sx: float, sy: float) -> np.ndarray:
    """The matrix multiplying x by ``sx`` and y by ``sy``."""
    return np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], dtype=np.float64)


def translate_matrix(tx: float, ty: float) -> np.ndarray:
    """The matrix adding ``tx`` to x and ``ty`` to y."""
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)


def transform_points(matrix: np.ndarray, points: Any) -> np.ndarray:
    """Apply a 3x3 affine matrix to an ``(N, 2)`` array of points (float64 result)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ matrix[:2, :2].T + matrix[:2, 2]


def upright_to_pixels(meta: Mapping[str, Any]) -> np.ndarray:
    """The 3x3 matrix taking upright-frame coordinates to a record's stored pixels: the cap's
    exact per-axis scale (``width / upright_width``, ``height / upright_height``).

    Args:
        meta: See :func:`raw_to_pixels`.
    """
    upright_w, upright_h = upright_size(
        int(meta["orientation"]), int(meta["raw_width"]), int(meta["raw_height"])
    )
    return scale_matrix(meta["width"] / upright_w, meta["height"] / upright_h)


def raw_to_pixels(meta: Mapping[str, Any]) -> np.ndarray:
    """The 3x3 matrix taking raw-file coordinates to a record's stored pixels.

    Orientation first (raw -> upright), then the cap's exact per-axis scale
    (``width / upright_width``, ``height / upright_height``).

    Args:
        meta: A record's metadata (``Record.meta``) or any map with ``orientation``,
            ``raw_width``, ``raw_height``, ``width`` and ``height``.
    """
    orientation = orientation_matrix(
        int(meta["orientation"]), int(meta["raw_width"]), int(meta["raw_height"])
    )
    return upright_to_pixels(meta) @ orientation


def raw_points_to_pixels(meta: Mapping[str, Any], points: Any) -> np.ndarray:
    """Raw-file ``(N, 2)`` points (a polygon of an annotation) in a record's stored pixels."""
    return transform_points(raw_to_pixels(meta), points)


def points_in_upright_frame(
    points: Any, orientation: int, raw_width: int, raw_height: int, slack: float = 1.0
) -> bool:
    """Whether an image's annotation points were given in the upright frame, not the raw one.

    Annotation formats put polygons in the raw frame, but some datasets give them on the
    already rotated image. That is only decidable for the orientations that swap the sides
    (5-8) of a non-square image: points that fit the upright (swapped) size but not the raw
    size were drawn on the rotated image. Anything else is taken to be in the raw frame.

    Args:
        points: Every point of the image's polygons as one ``(N, 2)`` array-like (x, y).
        orientation: The record's EXIF orientation, 1..8.
        raw_width: Width of the file before orientation.
        raw_height: Height of the file before orientation.
        slack: How far (in pixels) a point may lie outside a frame and still fit it.

    Returns:
        True when the points are in the upright frame: map them with
        :func:`upright_to_pixels` instead of :func:`raw_to_pixels`.
    """
    if orientation not in SWAPS_SIDES or raw_width == raw_height:
        return False
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not len(pts):
        return False
    low, high = pts.min(axis=0), pts.max(axis=0)

    def fits(width: float, height: float) -> bool:
        return bool(
            low[0] >= -slack
            and low[1] >= -slack
            and high[0] <= width + slack
            and high[1] <= height + slack
        )

    return fits(raw_height, raw_width) and not fits(raw_width, raw_height)
