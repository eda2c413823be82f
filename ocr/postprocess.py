"""DBNet post-processing: from a probability map to scored quadrilaterals.

This is the "box" post-processing of the reference implementation (MhLiao/DB,
``SegDetectorRepresenter.boxes_from_bitmap``, Liao et al., AAAI 2020):

1. binarize the map at ``thresh`` and find the contours of the connected regions
   (``cv2.findContours``, ``RETR_LIST``, ``CHAIN_APPROX_SIMPLE``), at most ``max_candidates``;
2. fit a minimum-area rectangle to each contour and drop it if its short side is below
   ``min_size``;
3. score it with the mean probability inside the contour and drop it below ``box_thresh``;
4. "unclip" the rectangle: offset it outwards by ``D = A * unclip_ratio / L`` (area A,
   perimeter L) with round joins (pyclipper), which approximately undoes the shrink that the
   training targets apply (``unclip_ratio`` 1.5 against ``shrink_ratio`` 0.4) -- closely for
   compact boxes, but not for elongated ones: on an ideal map a 200 x 40 box comes back
   188.8 x 28.8 (IoU 0.68), a 400 x 20 line 389.9 x 9.9 (IoU 0.48), because the shrink takes
   ``0.84 h`` off a long box's height and the unclip gives back only ``0.24 h``.
   ``unclip_mode="inverse"`` offsets by the exact inverse of the targets' shrink of a
   rectangle instead (``inverse_shrink_distance``), which restores long lines too;
5. fit a minimum-area rectangle to the expanded polygon, drop it if its short side is below
   ``min_size + 2``, map its corners to the upright frame and clip them to the image.

Coordinate convention: a contour vertex at column ``j``, row ``i`` is read as the point
``(x, y) = (j, i)`` of the sample frame, with no half-pixel shift. ``DBNetTargets``
rasterizes with PIL, which fills pixel ``(i, j)`` when the point ``(j, i)`` lies in the shrunk
polygon; reading the filled pixels' indices back as points therefore returns the shrunk
polygon itself (its vertices are integers), and the unclip is then centred on the original
polygon. Adding 0.5 (pixel centres under the pixel-corner convention) would shift every
detection by half a pixel down and right of where the targets put the text.

Scoring uses the contour (the reference's "slow" score mode), not the rectangle: the mean
probability over exactly the pixels the contour encloses, so a blob's score does not depend
on how well a rectangle fits it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pyclipper
import torch

from .checks import check_number
from .data.polygons import polygon_area, polygon_perimeter

# Clipper works on integers; offset in 1/256 pixel units so sub-pixel corners survive.
_CLIPPER_SCALE = 256.0


@dataclass(frozen=True)
class Detection:
    """One detected text region.

    Attributes:
        polygon: ``(4, 2)`` float64 corners in the upright frame (the sample frame when no
            matrix is given), clockwise on screen (y down), starting with the corner that has
            the smallest ``x + y``.
        score: Mean probability inside the un-expanded contour, in ``[0, 1]`` for a
            probability map.
    """

    polygon: np.ndarray
    score: float


def _to_numpy(array: Any, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    if isinstance(array, np.ndarray):
        return array
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(array).__name__}")


def _as_prob_map(prob: Any) -> np.ndarray:
    array = _to_numpy(prob, "prob")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(
            f"prob must have shape (H, W) or (1, H, W), got {tuple(array.shape)}; "
            "use DBPostProcess.batch for (N, 1, H, W) batches"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"prob must not be empty, got shape {tuple(array.shape)}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"prob must hold real numbers, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _as_matrix(matrix: Any) -> np.ndarray:
    array = _to_numpy(matrix, "inverse_matrix").astype(np.float64)
    if array.shape != (3, 3):
        raise ValueError(f"inverse_matrix must have shape (3, 3), got {tuple(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError("inverse_matrix must be finite")
    return array


def _as_size(size: Any) -> tuple[float, float]:
    try:
        width, height = (float(v) for v in size)
    except (TypeError, ValueError) as e:
        raise ValueError(f"upright_size must be a (width, height) pair, got {size!r}") from e
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        raise ValueError(f"upright_size must be positive, got {size!r}")
    return width, height


def _min_box(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Corners of the minimum-area rectangle around ``points`` and its short side."""
    rect = cv2.minAreaRect(points.reshape(-1, 1, 2).astype(np.float32))
    return cv2.boxPoints(rect).astype(np.float64), float(min(rect[1]))


def _contour_score(prob: np.ndarray, contour: np.ndarray) -> float:
    """Mean of ``prob`` over the pixels enclosed by ``contour`` (boundary included)."""
    x, y, w, h = cv2.boundingRect(contour)
    mask = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(mask, [contour.reshape(-1, 2) - np.array([x, y], dtype=contour.dtype)], 1)
    return float(cv2.mean(prob[y : y + h, x : x + w], mask)[0])


def inverse_shrink_distance(area: float, perimeter: float, shrink_ratio: float) -> float:
    """The offset that restores a rectangle shrunk the way the training targets shrink it.

    The targets move each side of a ``w x h`` box inwards by ``D = w h (1 - r^2) / (2 (w + h))``.
    Given the shrunk box (area ``A' = (w - 2D)(h - 2D)``, perimeter ``L' = 2 (w + h) - 8D``),
    ``D`` solves ``(8 - 4q) D^2 + (1 - q) L' D - q A' = 0`` with ``q = 1 - r^2``.
    """
    q = 1.0 - shrink_ratio**2
    a, b, c = 8.0 - 4.0 * q, (1.0 - q) * perimeter, -q * area
    return (-b + math.sqrt(b * b - 4.0 * a * c)) / (2.0 * a)


def _unclip(
    box: np.ndarray, ratio: float, mode: str = "ratio", shrink_ratio: float = 0.4
) -> np.ndarray | None:
    """Offset ``box`` outwards (see ``DBPostProcess``); None when degenerate."""
    area, perimeter = polygon_area(box), polygon_perimeter(box)
    if area <= 0 or perimeter <= 0:
        return None
    if mode == "inverse":
        distance = inverse_shrink_distance(area, perimeter, shrink_ratio)
        join = pyclipper.JT_MITER  # the targets' inward offset keeps a rectangle's corners
    else:
        distance = area * ratio / perimeter
        join = pyclipper.JT_ROUND
    offset = pyclipper.PyclipperOffset(arc_tolerance=0.25 * _CLIPPER_SCALE)
    offset.AddPath(
        np.round(box * _CLIPPER_SCALE).astype(np.int64).tolist(),
        join,
        pyclipper.ET_CLOSEDPOLYGON,
    )
    paths = offset.Execute(distance * _CLIPPER_SCALE)
    if not paths:
        return None
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in paths]) / _CLIPPER_SCALE


def _order_corners(points: np.ndarray) -> np.ndarray:
    """Clockwise on screen (y down), starting with the smallest ``x + y`` (then smallest y)."""
    centre = points.mean(axis=0)
    points = points[np.argsort(np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0]))]
    start = int(np.lexsort((points[:, 1], points[:, 0] + points[:, 1]))[0])
    return np.roll(points, -start, axis=0)


class DBPostProcess:
    """Turns DBNet probability maps into quadrilaterals in the upright image frame.

    Args:
        thresh: Binarization threshold of the probability map, in ``(0, 1)``.
        box_thresh: Minimum mean probability of a kept region, in ``[0, 1]``.
        unclip_ratio: Expansion ratio of the unclip step, ``> 0`` (1.5 inverts the targets'
            shrink ratio 0.4).
        max_candidates: Most contours examined per map, ``>= 1``.
        min_size: Smallest short side, in sample pixels, of a region before unclipping
            (``min_size + 2`` after), ``>= 0``.
        unclip_mode: ``"ratio"`` (the reference: offset by ``A * unclip_ratio / L``) or
            ``"inverse"``: offset by the exact inverse of the targets' shrink of a rectangle
            with ``shrink_ratio`` (see ``inverse_shrink_distance``), which restores long text
            lines as well as compact boxes; ``unclip_ratio`` is then unused.
        shrink_ratio: The targets' shrink ratio, for ``unclip_mode="inverse"``.

    Raises:
        TypeError: A parameter is not a number (``max_candidates`` not an integer).
        ValueError: A parameter is out of its range.
    """

    def __init__(
        self,
        thresh: float = 0.3,
        box_thresh: float = 0.6,
        unclip_ratio: float = 1.5,
        max_candidates: int = 1000,
        min_size: float = 3.0,
        unclip_mode: str = "ratio",
        shrink_ratio: float = 0.4,
    ) -> None:
        open_unit: dict[str, Any] = {"exclusive_minimum": True, "exclusive_maximum": True}
        self.thresh = float(check_number("thresh", thresh, minimum=0, maximum=1, **open_unit))
        self.box_thresh = float(check_number("box_thresh", box_thresh, minimum=0, maximum=1))
        check_number("unclip_ratio", unclip_ratio, minimum=0, exclusive_minimum=True, finite=True)
        check_number("min_size", min_size, minimum=0, finite=True)
        check_number("max_candidates", max_candidates, integer=True, minimum=1)
        if unclip_mode not in ("ratio", "inverse"):
            raise ValueError(f"unclip_mode must be 'ratio' or 'inverse', got {unclip_mode!r}")
        self.unclip_mode = unclip_mode
        self.shrink_ratio = float(
            check_number("shrink_ratio", shrink_ratio, minimum=0, maximum=1, **open_unit)
        )
        self.unclip_ratio = float(unclip_ratio)
        self.min_size = float(min_size)
        self.max_candidates = int(max_candidates)

    def __repr__(self) -> str:
        return (
            f"DBPostProcess(thresh={self.thresh}, box_thresh={self.box_thresh}, "
            f"unclip_ratio={self.unclip_ratio}, max_candidates={self.max_candidates}, "
            f"min_size={self.min_size}, unclip_mode={self.unclip_mode!r}, "
            f"shrink_ratio={self.shrink_ratio})"
        )

    def __call__(
        self,
        prob: np.ndarray | torch.Tensor,
        inverse_matrix: np.ndarray | torch.Tensor | None = None,
        upright_size: tuple[int, int] | None = None,
    ) -> list[Detection]:
        """Detect text regions in one probability map.

        Args:
            prob: ``(H, W)`` or ``(1, H, W)`` probability map (numpy array or torch tensor).
            inverse_matrix: ``(3, 3)`` matrix mapping sample pixel coordinates to the upright
                frame; None keeps sample coordinates.
            upright_size: ``(width, height)`` of the upright image; corners are clipped to
                ``[0, width] x [0, height]``, and detections left with zero area (entirely in
                the padding, outside the image) are dropped. None skips the clipping.

        Returns:
            The detections, sorted by the y then x of their first (top-left) corner.

        Raises:
            TypeError: ``prob`` or ``inverse_matrix`` is not an array or tensor, or ``prob``
                does not hold real numbers.
            ValueError: A wrong shape, a non-finite matrix, or a bad ``upright_size``.
        """
        prob_map = _as_prob_map(prob)
        matrix = None if inverse_matrix is None else _as_matrix(inverse_matrix)
        size = None if upright_size is None else _as_size(upright_size)

        bitmap = (prob_map > self.thresh).astype(np.uint8)
        contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        detections = []
        for contour in contours[: self.max_candidates]:
            box, short_side = _min_box(contour)
            if short_side < self.min_size:
                continue
            score = _contour_score(prob_map, contour)
            if score < self.box_thresh:
                continue
            expanded = _unclip(box, self.unclip_ratio, self.unclip_mode, self.shrink_ratio)
            if expanded is None:
                continue
            box, short_side = _min_box(expanded)
            if short_side < self.min_size + 2:
                continue
            if matrix is not None:
                mapped = np.hstack([box, np.ones((4, 1))]) @ matrix.T
                box = mapped[:, :2] / mapped[:, 2:]
            box = _order_corners(box)
            if size is not None:
                box[:, 0] = np.clip(box[:, 0], 0, size[0])
                box[:, 1] = np.clip(box[:, 1], 0, size[1])
                if polygon_area(box) == 0:
                    continue
            detections.append(Detection(polygon=box, score=score))
        detections.sort(key=lambda d: (d.polygon[0, 1], d.polygon[0, 0], *d.polygon.ravel()))
        return detections

    def batch(
        self,
        prob: np.ndarray | torch.Tensor,
        inverse_matrices: np.ndarray | torch.Tensor | None = None,
        upright_sizes: Any = None,
    ) -> list[list[Detection]]:
        """Detect text regions in a batch of probability maps.

        Args:
            prob: ``(N, 1, H, W)`` or ``(N, H, W)`` probability maps.
            inverse_matrices: ``(N, 3, 3)`` matrices (see ``__call__``), or None.
            upright_sizes: N ``(width, height)`` pairs, or None.

        Returns:
            One list of detections per sample, in batch order.

        Raises:
            TypeError: As for ``__call__``.
            ValueError: A wrong shape, or matrices/sizes whose count is not N.
        """
        maps = _to_numpy(prob, "prob")
        if maps.ndim == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if maps.ndim != 3:
            raise ValueError(
                f"prob must have shape (N, 1, H, W) or (N, H, W), got {tuple(maps.shape)}"
            )
        n = maps.shape[0]
        matrices: Any = [None] * n
        if inverse_matrices is not None:
            matrices = _to_numpy(inverse_matrices, "inverse_matrices")
            if matrices.shape != (n, 3, 3):
                raise ValueError(
                    f"inverse_matrices must have shape ({n}, 3, 3) for {n} maps, "
                    f"got {tuple(matrices.shape)}"
                )
        sizes = [None] * n if upright_sizes is None else list(upright_sizes)
        if len(sizes) != n:
            raise ValueError(f"upright_sizes must hold {n} (width, height) pairs, got {len(sizes)}")
        return [self(maps[i], matrices[i], sizes[i]) for i in range(n)]
