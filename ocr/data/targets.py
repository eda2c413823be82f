"""DBNet training targets, computed on a sample's whole polygon set at once.

Targets follow Liao et al., "Real-time Scene Text Detection with Differentiable Binarization"
(AAAI 2020): each text polygon is shrunk by ``D = A (1 - r^2) / L`` (area A, perimeter L,
``r = shrink_ratio``) for the probability map, and dilated by the same D for the threshold
map, whose value is ``1 - distance / D`` inside the dilated band (distance from the pixel
centre to the polygon's boundary), rescaled to ``[thresh_min, thresh_max]``. Polygons that
are too small, degenerate, or marked ignore are masked out of the probability loss instead of
being learned as background. Offsetting uses pyclipper, the Clipper library that reference
DBNet implementations use; polygons are filled by Pillow's rasteriser.

How it is fast, and exact: areas, perimeters, sizes and the rounding that Clipper needs are
computed for all polygons in one array pass (``PolygonSet``); one Clipper object per polygon
gives both offsets; the distance to the boundary is evaluated on the dilated polygon's bounding
box only, with 1-D row and column terms broadcast over the box: for an axis-aligned rectangle
(what the train transform keeps axis-aligned boxes as) the distance is separable and takes a
handful of array operations, any other polygon takes one broadcast pass per edge. The
probability map and both masks are identical to the per-polygon implementation kept in
``tools/reference_pipeline.py``; the threshold map agrees within 1e-4 (float32 arithmetic).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyclipper
from PIL import Image, ImageDraw

from .sample import TARGET_DTYPES, TARGET_NAMES, DBNetMaps, PolygonSet


def _axis_aligned_rectangles(polygons: PolygonSet) -> np.ndarray:
    """For each polygon, whether it is a 4-point rectangle with axis-parallel edges."""
    counts = polygons.counts()
    out = np.zeros(len(polygons), dtype=bool)
    quads = np.flatnonzero(counts == 4)
    if quads.size:
        starts = polygons.offsets[quads]
        p = polygons.points[starts[:, None] + np.arange(4)]  # (Q, 4, 2)
        nxt = np.roll(p, -1, axis=1)
        same_y = p[:, :, 1] == nxt[:, :, 1]
        same_x = p[:, :, 0] == nxt[:, :, 0]
        # Horizontal, vertical, horizontal, vertical edges (or starting with a vertical one).
        h_first = same_y[:, 0::2].all(axis=1) & same_x[:, 1::2].all(axis=1)
        v_first = same_x[:, 0::2].all(axis=1) & same_y[:, 1::2].all(axis=1)
        out[quads] = h_first | v_first
    return out


def _rectangle_value(
    box: tuple[float, float, float, float], distance: float, cols: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """``1 - d / distance`` at each ``(row, col)`` pixel centre, ``d`` its distance to the edges
    of the axis-aligned rectangle ``box = (x0, y0, x1, y1)``.

    With ``m`` the signed distance to the nearer of two parallel edges (positive inside),
    ``d`` is ``sqrt(max(-m_x, 0)^2 + max(-m_y, 0)^2)`` outside and ``min(m_x, m_y)`` inside;
    each term is 0 where the other applies, and both come from 1-D column and row vectors.
    """
    x0, y0, x1, y1 = box
    scale = 1.0 / distance
    m_x = np.minimum(cols - x0, x1 - cols)
    m_x *= scale
    m_y = np.minimum(rows - y0, y1 - rows)
    m_y *= scale
    out_x, out_y = np.maximum(-m_x, 0), np.maximum(-m_y, 0)
    value = np.add((out_y * out_y)[:, None], out_x * out_x)
    np.sqrt(value, out=value)
    value += np.minimum(np.maximum(m_y, 0)[:, None], np.maximum(m_x, 0))
    np.subtract(1, value, out=value)
    return value


def _polygon_distance(polygon: np.ndarray, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Distance from each ``(row, col)`` pixel centre to the nearest edge of any polygon."""
    nearest: np.ndarray | None = None
    for a, b in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        u = (cols - a[0])[None, :]
        v = (rows - a[1])[:, None]
        ab = b - a
        length2 = float(np.dot(ab, ab))
        if length2 == 0:
            d = np.hypot(v, u)
        else:
            t = np.clip((u * (ab[0] / length2)) + (v * (ab[1] / length2)), 0, 1)
            d = np.hypot(u - t * ab[0], v - t * ab[1])
        nearest = d if nearest is None else np.minimum(nearest, d)
    assert nearest is not None  # a polygon has >= 1 point (PolygonSet checks)
    return nearest.astype(np.float32)


def _shares_memory_when_writable() -> bool:
    """Whether a Pillow image made by ``frombuffer`` and marked writable draws into the
    buffer (true of Pillow 10-13; checked once, since the flag is Pillow's own)."""
    probe = np.zeros((2, 2), dtype=np.uint8)
    try:
        image = Image.frombuffer("L", (2, 2), probe, "raw", "L", 0, 1)
        image.readonly = 0
        ImageDraw.Draw(image).point((1, 0), fill=7)
    except Exception:  # noqa: BLE001 - any failure means: draw on a copy instead
        return False
    return int(probe[0, 1]) == 7 and int(probe.sum()) == 7


_SHARED_CANVAS = _shares_memory_when_writable()


def _canvas(target: np.ndarray) -> tuple[Image.Image, bool]:
    """A Pillow "L" image to draw ``target``'s map on, and whether it is a copy: it shares
    ``target``'s memory where Pillow allows it, else the drawing is copied back at the end."""
    h, w = target.shape
    if _SHARED_CANVAS and target.flags.c_contiguous and target.flags.writeable:
        image = Image.frombuffer("L", (w, h), target, "raw", "L", 0, 1)
        image.readonly = 0
        return image, False
    return Image.fromarray(np.ascontiguousarray(target), "L"), True


def _as_polygons(
    polygons: PolygonSet | Sequence[Any], ignore: Sequence[bool] | np.ndarray
) -> tuple[PolygonSet, np.ndarray]:
    """The polygons as a float64 ``PolygonSet`` and the flags as a bool array, one per polygon."""
    if not isinstance(polygons, PolygonSet):
        polygons = PolygonSet.from_list(polygons)
    polygons = polygons.astype(np.float64)
    flags = np.asarray(ignore, dtype=bool)
    if flags.shape != (len(polygons),):
        raise ValueError(f"need one ignore flag per polygon ({len(polygons)}), got {flags.shape}")
    return polygons, flags


class DBNetTargets:
    """Computes DBNet's four maps for one sample.

    Reads a sample's ``polygons`` (sample frame) and ``ignore``; adds ``targets``.

    Args:
        shrink_ratio: ``r`` of the shrink distance ``D = A (1 - r^2) / L``.
        thresh_min: Threshold-map value far from text (and at the boundary band's edge).
        thresh_max: Threshold-map value on a polygon's boundary.
        min_text_size: Polygons whose shorter bounding-box side is below this are masked out.
    """

    def __init__(
        self,
        shrink_ratio: float = 0.4,
        thresh_min: float = 0.3,
        thresh_max: float = 0.7,
        min_text_size: float = 8,
    ) -> None:
        self.shrink_ratio = shrink_ratio
        self.thresh_min = thresh_min
        self.thresh_max = thresh_max
        self.min_text_size = min_text_size

    def __call__(
        self,
        shape: tuple[int, int],
        polygons: PolygonSet | Sequence[Any],
        ignore: Sequence[bool] | np.ndarray,
        out: DBNetMaps | None = None,
    ) -> DBNetMaps:
        """The maps of an ``(H, W)`` sample.

        Args:
            shape: ``(height, width)`` of the sample.
            polygons: Its text polygons, in its pixel-corner frame.
            ignore: One flag per polygon: masked out of the probability loss.
            out: Arrays to write the maps into (e.g. the sample's slots of a batch), with the
                dtypes of ``ocr.data.sample.TARGET_DTYPES``; new arrays when None.

        Returns:
            The maps (``out`` itself when given).

        Raises:
            ValueError: ``ignore`` does not have one flag per polygon.
        """
        polygons, ignore = _as_polygons(polygons, ignore)
        h, w = int(shape[0]), int(shape[1])
        if out is None:
            out = DBNetMaps(**{n: np.empty((h, w), TARGET_DTYPES[n]) for n in TARGET_NAMES})
        out.prob_map.fill(0)
        out.prob_mask.fill(1)
        out.thresh_mask.fill(0)
        maps = (out.prob_map, out.prob_mask, out.thresh_mask)
        canvases = [_canvas(m) for m in maps]
        draw_prob, draw_mask, draw_band = (ImageDraw.Draw(image) for image, _ in canvases)
        thresh = out.thresh_map
        thresh.fill(0)
        self._draw(polygons, ignore, (draw_prob, draw_mask, draw_band), thresh)
        for target, (image, copied) in zip(maps, canvases, strict=True):
            if copied:
                np.copyto(target, np.asarray(image))
        thresh *= np.float32(self.thresh_max - self.thresh_min)
        thresh += np.float32(self.thresh_min)
        return out

    def _plan(
        self, polygons: PolygonSet, ignore: np.ndarray
    ) -> tuple[list[bool], list[float], list[Any]]:
        """For the whole set in one array pass: which polygons are masked out (ignored, area
        below 1, no perimeter, or a bounding-box side below ``min_text_size``), each one's
        shrink distance ``D = A (1 - r^2) / L``, and its bounds ``[x0, y0, x1, y1]``."""
        areas, perimeters = polygons.areas(), polygons.perimeters()
        bounds = polygons.bounds()
        side = np.minimum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
        masked = ignore | (areas < 1) | (perimeters == 0) | (side < self.min_text_size)
        with np.errstate(divide="ignore", invalid="ignore"):
            distances = (areas * (1 - self.shrink_ratio**2) / perimeters).tolist()
        return masked.tolist(), distances, bounds.tolist()

    def _draw(
        self,
        polygons: PolygonSet,
        ignore: np.ndarray,
        draws: tuple[ImageDraw.ImageDraw, ImageDraw.ImageDraw, ImageDraw.ImageDraw],
        thresh: np.ndarray,
    ) -> None:
        """Draw every polygon: a masked one as 0 on the probability mask; any other shrunk by
        its ``D`` on the probability map, dilated by ``D`` on the threshold mask, and its
        ``1 - distance / D`` band on ``thresh`` (before the rescaling to ``thresh_min..max``).

        ``draws`` draw on the probability map, the probability mask and the threshold mask.
        """
        draw_prob, draw_mask, draw_band = draws
        masked, distances, boxes = self._plan(polygons, ignore)
        rectangles = _axis_aligned_rectangles(polygons).tolist()
        # Python lists once for the whole set: Clipper and Pillow take lists.
        rounded = np.round(polygons.points).astype(np.int64).tolist()
        h, w = thresh.shape
        centres = np.arange(max(h, w), dtype=np.float32) + np.float32(0.5)
        offsets = polygons.offsets.tolist()
        for i, skip in enumerate(masked):
            start, end = offsets[i], offsets[i + 1]
            polygon = polygons.points[start:end]
            if skip:
                draw_mask.polygon(polygon.ravel().tolist(), fill=0)
                continue
            clipper = pyclipper.PyclipperOffset()
            clipper.AddPath(rounded[start:end], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
            distance = distances[i]
            shrunk = clipper.Execute(-distance)
            if not shrunk:
                draw_mask.polygon(polygon.ravel().tolist(), fill=0)
                continue
            for part in shrunk:
                draw_prob.polygon([c for point in part for c in point], fill=1)
            dilated = clipper.Execute(distance)
            if dilated:
                path = max(dilated, key=len)
                draw_band.polygon([c for point in path for c in point], fill=1)
                band = np.array(path, dtype=np.int64)
                box = boxes[i] if rectangles[i] else None
                self._draw_border(polygon, box, distance, band, thresh, centres)

    @staticmethod
    def _draw_border(
        polygon: np.ndarray,
        box: tuple[float, float, float, float] | None,
        distance: float,
        band: np.ndarray,
        canvas: np.ndarray,
        centres: np.ndarray,
    ) -> None:
        """``canvas = max(canvas, 1 - d / distance)`` on the dilated band's bounding box.

        ``box`` is the polygon's ``(x0, y0, x1, y1)`` when it is an axis-aligned rectangle;
        ``centres`` the pixel centres ``0.5, 1.5, ...`` (float32) along the longer side.
        """
        h, w = canvas.shape
        x0, y0 = band.min(axis=0).tolist()  # Clipper's points are integers
        x1, y1 = band.max(axis=0).tolist()
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
        if cx1 < cx0 or cy1 < cy0:
            return
        cols = centres[cx0 : cx1 + 1]
        rows = centres[cy0 : cy1 + 1]
        if box is not None:
            value = _rectangle_value(box, distance, cols, rows)
        else:
            value = _polygon_distance(polygon, cols, rows)
            value *= np.float32(-1.0 / distance)
            value += np.float32(1.0)
        # Negative beyond the band: the maximum with the (>= 0) canvas drops it.
        region = canvas[cy0 : cy1 + 1, cx0 : cx1 + 1]
        np.maximum(region, value, out=region)
