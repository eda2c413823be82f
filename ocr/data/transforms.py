"""Polygon-aware transforms on uint8 images.

Transforms never write to their input image (it may be a read-only view into the cache).
Each transform takes an upright ``(H, W, 3)`` uint8 image and its polygons (in that image's
pixel-corner frame) and returns the new image, the moved polygons and the 3x3 matrix mapping
input coordinates to output coordinates, so the dataset can compose the full chain
raw -> upright -> cache scale -> sample and invert it.

Validation: the longest side is resized to ``size`` (bilinear by default), then the image is
padded with zeros to ``size x size``; the padding goes on the right and at the bottom, so the
image keeps its top-left corner at (0, 0) and no offset enters the matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from lmdb_cache.images import resample_filter

from .geometry import apply, scale_matrix, translate_matrix


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after scaling the longest side to exactly ``size`` (up or down)."""
    factor = size / max(width, height)
    if width >= height:
        return size, max(1, round(height * factor))
    return max(1, round(width * factor)), size


def resize(image: np.ndarray, width: int, height: int, resample: str) -> np.ndarray:
    """Resize with Pillow; returns the input itself when the size already matches."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    out = Image.fromarray(image, "RGB").resize((width, height), resample=resample_filter(resample))
    return np.asarray(out)


def pad_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Zero-pad on the right and at the bottom to ``width x height``."""
    out = np.zeros((height, width, 3), dtype=np.uint8)
    h, w = image.shape[:2]
    out[: min(h, height), : min(w, width)] = image[:height, :width]
    return out


@dataclass
class TransformResult:
    image: np.ndarray
    polygons: list[np.ndarray]
    matrix: np.ndarray  # input frame -> output frame
    valid: list[bool]  # False where a polygon was cut away or degenerated


class ValTransform:
    """Longest side to ``size``, then zero padding to ``size x size`` (right and bottom)."""

    def __init__(self, size: int = 640, resample: str = "bilinear") -> None:
        if size < 1:
            raise ValueError(f"transform size must be positive, got {size}")
        resample_filter(resample)
        self.size = size
        self.resample = resample

    def __call__(
        self, image: np.ndarray, polygons: list[np.ndarray], rng: np.random.Generator | None = None
    ) -> TransformResult:
        h, w = image.shape[:2]
        new_w, new_h = resized_size(w, h, self.size)
        matrix = scale_matrix(new_w / w, new_h / h)
        out = pad_to(resize(image, new_w, new_h, self.resample), self.size, self.size)
        moved = [apply(matrix, p) for p in polygons]
        return TransformResult(out, moved, matrix, [True] * len(moved))


class TrainTransform:
    """Random scale, random ``size x size`` crop (zero padded), and horizontal flip.

    The scale is drawn relative to the validation scale (longest side to ``size``), so a scale
    of 1 sees the whole page. A polygon whose area inside the crop falls below half of its
    area is marked invalid (the targets then ignore it).
    """

    def __init__(
        self,
        size: int = 640,
        resample: str = "bilinear",
        scale_range: tuple[float, float] = (0.75, 2.0),
        flip_prob: float = 0.5,
    ) -> None:
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        if not 0 <= flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        resample_filter(resample)
        self.size = size
        self.resample = resample
        self.scale_range = scale_range
        self.flip_prob = flip_prob

    def __call__(
        self, image: np.ndarray, polygons: list[np.ndarray], rng: np.random.Generator | None = None
    ) -> TransformResult:
        rng = rng if rng is not None else np.random.default_rng()
        h, w = image.shape[:2]
        base_w, base_h = resized_size(w, h, self.size)
        factor = float(rng.uniform(*self.scale_range))
        new_w, new_h = max(1, round(base_w * factor)), max(1, round(base_h * factor))
        resized = resize(image, new_w, new_h, self.resample)
        x0 = int(rng.integers(0, max(0, new_w - self.size) + 1))
        y0 = int(rng.integers(0, max(0, new_h - self.size) + 1))
        crop = pad_to(resized[y0 : y0 + self.size, x0 : x0 + self.size], self.size, self.size)
        matrix = translate_matrix(-x0, -y0) @ scale_matrix(new_w / w, new_h / h)
        if rng.random() < self.flip_prob:
            crop = np.ascontiguousarray(crop[:, ::-1])
            flip = np.array([[-1, 0, self.size], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
            matrix = flip @ matrix
        moved, valid = [], []
        for polygon in polygons:
            p = apply(matrix, polygon)
            clipped = np.clip(p, 0, self.size)
            before, after = _area(p), _area(clipped)
            moved.append(clipped)
            valid.append(before > 0 and after >= 0.5 * before)
        return TransformResult(crop, moved, matrix, valid)


def _area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)
