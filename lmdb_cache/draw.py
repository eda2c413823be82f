"""Drawing polygon outlines over an image, with Pillow's ``ImageDraw``.

``lmdb-cache show --annotations`` draws an image's annotation polygons with it; any tool that
shows polygons over pixels (ground truth and predictions in two colours) can do the same::

    shown = draw_polygons(image, ground_truth, colour=(0, 200, 0))
    shown = draw_polygons(shown, dont_care, colour=(0, 200, 0), dashed=True)
    shown = draw_polygons(shown, predictions, colour=(255, 0, 0))

Points are in the image's pixel-corner frame (``lmdb_cache.geometry``: pixel (i, j) covers
``[j, j+1) x [i, i+1)``), e.g. ``geometry.transform_points(record.raw_to_pixels, points)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# Dashes and gaps, in multiples of the line width (at least a few pixels each).
_DASH = 4
_GAP = 3


def draw_polygons(
    image: np.ndarray,
    polygons: Sequence[Any],
    colour: tuple[int, int, int] = (255, 0, 0),
    width: int = 2,
    *,
    dashed: bool = False,
) -> np.ndarray:
    """Draw closed polygon outlines onto a copy of an image.

    Each outline is centred on the polygon's edges (to within a pixel: Pillow draws on whole
    pixels). Points outside the image are fine: what falls outside is clipped.

    Args:
        image: ``(H, W, 3)`` RGB or ``(H, W)`` greyscale uint8 array; never modified.
        polygons: ``(N, 2)`` array-likes of ``(x, y)`` points in the image's pixel-corner
            frame, N >= 2 (a polygon is closed from its last point back to its first).
        colour: RGB of the outlines, each 0..255.
        width: Line width in pixels, at least 1.
        dashed: Draw dashed outlines (e.g. for *don't care* words), in the same colour.

    Returns:
        A new ``(H, W, 3)`` uint8 RGB array: the image with the outlines on top.

    Raises:
        ValueError: another image shape or dtype, a polygon that is not ``(N, 2)`` with
            N >= 2 finite points, a colour that is not three 0..255 integers, or a width
            below 1.
    """
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3))
    ):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"image must be an (H, W, 3) or (H, W) uint8 array, got {shape} {dtype}")
    fill = _check_colour(colour)
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be an integer of at least 1 pixel, got {width!r}")
    outlines = [_check_polygon(i, p) for i, p in enumerate(polygons)]
    canvas = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")  # always a copy
    draw = ImageDraw.Draw(canvas)
    for points in outlines:
        # Pillow puts integer coordinates at pixel centres; corners are half a pixel before.
        path = [(float(x) - 0.5, float(y) - 0.5) for x, y in points]
        path.append(path[0])
        if dashed:
            for start, end in _dashes(path, _DASH * int(width), _GAP * int(width)):
                draw.line([start, end], fill=fill, width=int(width))
        else:
            draw.line(path, fill=fill, width=int(width), joint="curve")
    return np.array(canvas, dtype=np.uint8)  # owned and writable


def _check_colour(colour: Any) -> tuple[int, int, int]:
    if (
        not isinstance(colour, (tuple, list))
        or len(colour) != 3
        or not all(
            isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c <= 255
            for c in colour
        )
    ):
        raise ValueError(f"colour must be three integers 0..255 (R, G, B), got {colour!r}")
    return (int(colour[0]), int(colour[1]), int(colour[2]))


def _check_polygon(index: int, polygon: Any) -> np.ndarray:
    points = np.asarray(polygon, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2:
        raise ValueError(
            f"polygon {index} must be an (N, 2) array of points with N >= 2, got shape "
            f"{points.shape}"
        )
    if not np.isfinite(points).all():
        raise ValueError(f"polygon {index} has a point that is not a finite number")
    return points


def _dashes(
    path: list[tuple[float, float]], dash: float, gap: float
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The dash segments along a path, the pattern running on across its corners."""
    out = []
    phase = 0.0  # distance into the current dash + gap period
    period = dash + gap
    for (x0, y0), (x1, y1) in zip(path[:-1], path[1:], strict=True):
        length = math.hypot(x1 - x0, y1 - y0)
        if length == 0:
            continue
        at = 0.0
        while at < length:
            if phase < dash:
                step = min(dash - phase, length - at)
                t0, t1 = at / length, (at + step) / length
                out.append(
                    ((x0 + (x1 - x0) * t0, y0 + (y1 - y0) * t0),
                     (x0 + (x1 - x0) * t1, y0 + (y1 - y0) * t1))
                )  # fmt: skip
            else:
                step = min(period - phase, length - at)
            at += step
            phase = (phase + step) % period
    return out
