"""DBNet training targets and the batch collate function.

Targets follow Liao et al., "Real-time Scene Text Detection with Differentiable Binarization"
(AAAI 2020): each text polygon is shrunk by ``D = A (1 - r^2) / L`` (area A, perimeter L,
``r = shrink_ratio``) for the probability map, and dilated by the same D for the threshold
map, whose value is ``1 - distance / D`` inside the dilated band, rescaled to
``[thresh_min, thresh_max]``. Polygons that are too small, degenerate, or marked ignore are
masked out of the probability loss instead of being learned as background. Offsetting uses
pyclipper, the Clipper library that reference DBNet implementations use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyclipper
import torch
from PIL import Image, ImageDraw


def _area_perimeter(polygon: np.ndarray) -> tuple[float, float]:
    x, y = polygon[:, 0], polygon[:, 1]
    area = abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2
    perimeter = float(np.linalg.norm(polygon - np.roll(polygon, -1, axis=0), axis=1).sum())
    return area, perimeter


def _offset(polygon: np.ndarray, distance: float) -> list[np.ndarray]:
    pco = pyclipper.PyclipperOffset()
    pco.AddPath(
        [tuple(p) for p in np.round(polygon).astype(np.int64).tolist()],
        pyclipper.JT_ROUND,
        pyclipper.ET_CLOSEDPOLYGON,
    )
    return [np.array(path, dtype=np.float64) for path in pco.Execute(distance)]


def _fill(mask: Image.Image, polygon: np.ndarray, value: int) -> None:
    ImageDraw.Draw(mask).polygon([tuple(p) for p in polygon.tolist()], fill=value)


def _segment_distance(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each grid point to the segment a-b."""
    ab = b - a
    length2 = float(np.dot(ab, ab))
    if length2 == 0:
        return np.hypot(xs - a[0], ys - a[1])
    t = np.clip(((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / length2, 0, 1)
    return np.hypot(xs - (a[0] + t * ab[0]), ys - (a[1] + t * ab[1]))


class DBNetTargets:
    """Computes ``prob_map``, ``prob_mask``, ``thresh_map``, ``thresh_mask`` for one sample."""

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
        self, shape: tuple[int, int], polygons: list[np.ndarray], ignore: list[bool]
    ) -> dict[str, torch.Tensor]:
        h, w = shape
        prob = Image.new("L", (w, h), 0)
        mask = Image.new("L", (w, h), 1)
        thresh = np.zeros((h, w), dtype=np.float32)
        thresh_mask = Image.new("L", (w, h), 0)
        for polygon, ignored in zip(polygons, ignore, strict=True):
            polygon = np.asarray(polygon, dtype=np.float64)
            area, perimeter = _area_perimeter(polygon)
            side = min(np.ptp(polygon[:, 0]), np.ptp(polygon[:, 1]))
            if ignored or area < 1 or perimeter == 0 or side < self.min_text_size:
                _fill(mask, polygon, 0)
                continue
            distance = area * (1 - self.shrink_ratio**2) / perimeter
            shrunk = _offset(polygon, -distance)
            if not shrunk:
                _fill(mask, polygon, 0)
                continue
            for part in shrunk:
                _fill(prob, part, 1)
            self._draw_border(polygon, distance, thresh, thresh_mask)
        thresh_map = thresh * (self.thresh_max - self.thresh_min) + self.thresh_min
        return {
            "prob_map": torch.from_numpy(np.asarray(prob, dtype=np.float32)),
            "prob_mask": torch.from_numpy(np.asarray(mask, dtype=np.float32)),
            "thresh_map": torch.from_numpy(thresh_map.astype(np.float32)),
            "thresh_mask": torch.from_numpy(np.asarray(thresh_mask, dtype=np.float32)),
        }

    def _draw_border(
        self, polygon: np.ndarray, distance: float, canvas: np.ndarray, mask: Image.Image
    ) -> None:
        dilated = _offset(polygon, distance)
        if not dilated:
            return
        band = max(dilated, key=len)
        _fill(mask, band, 1)
        h, w = canvas.shape
        x0, y0 = np.floor(band.min(axis=0)).astype(int)
        x1, y1 = np.ceil(band.max(axis=0)).astype(int)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
        if cx1 < cx0 or cy1 < cy0:
            return
        ys, xs = np.mgrid[cy0 : cy1 + 1, cx0 : cx1 + 1].astype(np.float64) + 0.5
        nearest = np.full(xs.shape, np.inf)
        for a, b in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
            nearest = np.minimum(nearest, _segment_distance(xs, ys, a, b))
        value = 1 - np.clip(nearest / distance, 0, 1)
        region = canvas[cy0 : cy1 + 1, cx0 : cx1 + 1]
        np.maximum(region, value.astype(np.float32), out=region)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images (uint8) and maps into batch tensors; keep per-sample lists as lists.

    Pinning happens in the DataLoader (``pin_memory=True`` when CUDA is available), so the
    uint8 batch is copied to the device with ``non_blocking=True`` and normalized there.
    """
    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[name] = torch.stack(values)
        elif name == "inverse_matrix":
            batch[name] = torch.from_numpy(np.stack(values))
        else:
            batch[name] = values
    return batch
