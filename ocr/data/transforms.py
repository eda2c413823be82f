"""Polygon-aware transforms on uint8 images.

Transforms never write to their input image (it may be a read-only view into the cache).
Each transform takes an upright ``(H, W, 3)`` uint8 image and its polygons (a ``PolygonSet``
in that image's pixel-corner frame) and returns the ``size x size`` image, the moved polygons
and the 3x3 matrix mapping input coordinates to output coordinates, so the dataset can compose
the full chain raw -> upright -> cache scale -> sample and invert it. Given ``out`` (a
``(size, size, 3)`` uint8 array, e.g. the sample's slot of a batch), a transform writes its
image there instead of allocating one. Polygons move as one array.

Validation: the longest side is resized to ``size`` (Pillow, bilinear by default, the same
resampling as the cache's cap, so a capped cache needs no resize at all), then the image is
padded with zeros to ``size x size``; the padding goes on the right and at the bottom, so the
image keeps its top-left corner at (0, 0) and no offset enters the matrix.

Training: one random scale, crop and flip, resampled once from only the source region the crop
keeps (OpenCV). Definition, with ``s = factor * size / max(W, H)`` sample pixels per source
pixel and ``factor ~ U(scale_range)``:

* per axis, the window is ``round(size / s)`` source pixels; when that is at least the
  image's side, the whole side is kept and becomes ``round(side * s)`` sample pixels at the
  start of the axis (zero padding after it), else a window at a uniformly drawn integer
  offset becomes exactly ``size`` pixels (so the per-axis scales differ from ``s`` only by
  that rounding, and the matrix carries them exactly);
* the window is resampled with the configured filter (``bilinear``: OpenCV's bit-exact
  ``INTER_LINEAR_EXACT``, the same bits on every CPU), or with area averaging
  (``INTER_AREA``) when it shrinks by more than 2x, so strong downscales average instead of
  aliasing;
* with probability ``flip_prob`` the sample is mirrored: ``x -> size - x`` (the padding then
  sits on the left);
* a polygon whose area inside the sample falls below half of its area is marked invalid (the
  targets then ignore it); polygons are clipped to the sample.

Draws from ``rng``, in order: the factor, the x offset, the y offset, the flip.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from lmdb_cache.geometry import longest_side_size
from lmdb_cache.images import resample_filter

from .geometry import scale_matrix, translate_matrix
from .sample import PolygonSet

# OpenCV filter per resampling name; bit-exact variants where OpenCV has them.
_CV2_FILTERS = {
    "nearest": cv2.INTER_NEAREST_EXACT,
    "bilinear": cv2.INTER_LINEAR_EXACT,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
    "box": cv2.INTER_AREA,
}


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after scaling the longest side to exactly ``size`` (up or down)."""
    return longest_side_size(width, height, size)


def resize(image: np.ndarray, width: int, height: int, resample: str) -> np.ndarray:
    """Resize with Pillow; returns the input itself when the size already matches."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    out = Image.fromarray(image, "RGB").resize((width, height), resample=resample_filter(resample))
    return np.asarray(out)


def pad_to(image: np.ndarray, width: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
    """Zero-pad on the right and at the bottom to ``width x height`` (into ``out`` if given)."""
    if out is None:
        out = np.zeros((height, width, 3), dtype=np.uint8)
    h, w = min(image.shape[0], height), min(image.shape[1], width)
    out[:h, :w] = image[:h, :w]
    out[h:] = 0
    out[:h, w:] = 0
    return out


def _check_out(out: np.ndarray | None, size: int) -> np.ndarray:
    if out is None:
        return np.empty((size, size, 3), dtype=np.uint8)
    if out.shape != (size, size, 3) or out.dtype != np.uint8:
        raise ValueError(
            f"out must be a ({size}, {size}, 3) uint8 array, got {out.shape} {out.dtype}"
        )
    return out


@dataclass
class TransformResult:
    image: np.ndarray  # (size, size, 3) uint8
    polygons: PolygonSet  # in the output frame
    matrix: np.ndarray  # input frame -> output frame
    valid: np.ndarray  # bool per polygon: False where it was cut away or degenerated


class ValTransform:
    """Longest side to ``size``, then zero padding to ``size x size`` (right and bottom)."""

    def __init__(self, size: int = 640, resample: str = "bilinear") -> None:
        if size < 1:
            raise ValueError(f"transform size must be positive, got {size}")
        resample_filter(resample)
        self.size = size
        self.resample = resample

    def __call__(
        self,
        image: np.ndarray,
        polygons: PolygonSet,
        rng: np.random.Generator | None = None,
        out: np.ndarray | None = None,
    ) -> TransformResult:
        h, w = image.shape[:2]
        new_w, new_h = resized_size(w, h, self.size)
        matrix = scale_matrix(new_w / w, new_h / h)
        out = pad_to(resize(image, new_w, new_h, self.resample), self.size, self.size, out)
        return TransformResult(
            out, polygons.transformed(matrix), matrix, np.ones(len(polygons), dtype=bool)
        )


class TrainTransform:
    """Random scale, random ``size x size`` crop (zero padded), and horizontal flip, in one
    resample of the kept region (the definition is in the module docstring).

    The scale is drawn relative to the validation scale (longest side to ``size``), so a
    factor of 1 sees the whole page.
    """

    def __init__(
        self,
        size: int = 640,
        resample: str = "bilinear",
        scale_range: tuple[float, float] = (0.75, 2.0),
        flip_prob: float = 0.5,
    ) -> None:
        if size < 1:
            raise ValueError(f"transform size must be positive, got {size}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        if not 0 <= flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        resample_filter(resample)
        if resample not in _CV2_FILTERS:
            raise ValueError(
                f"the train transform resamples with OpenCV, which has no {resample!r} filter; "
                f"use one of {', '.join(sorted(_CV2_FILTERS))}"
            )
        self.size = size
        self.resample = resample
        self.scale_range = scale_range
        self.flip_prob = flip_prob

    def _window(self, side: int, scale: float, rng: np.random.Generator) -> tuple[int, int, int]:
        """(source start, source length, output length) along one axis."""
        length = max(1, round(self.size / scale))
        if length >= side:
            return 0, side, max(1, min(self.size, round(side * scale)))
        return int(rng.integers(0, side - length + 1)), length, self.size

    def __call__(
        self,
        image: np.ndarray,
        polygons: PolygonSet,
        rng: np.random.Generator | None = None,
        out: np.ndarray | None = None,
    ) -> TransformResult:
        rng = rng if rng is not None else np.random.default_rng()
        out = _check_out(out, self.size)
        h, w = image.shape[:2]
        factor = float(rng.uniform(*self.scale_range))
        scale = factor * self.size / max(w, h)
        x0, src_w, out_w = self._window(w, scale, rng)
        y0, src_h, out_h = self._window(h, scale, rng)
        flip = bool(rng.random() < self.flip_prob)
        shrink = min(out_w / src_w, out_h / src_h)
        interpolation = cv2.INTER_AREA if shrink < 0.5 else _CV2_FILTERS[self.resample]
        left = self.size - out_w if flip else 0
        region = out[:out_h, left : left + out_w]
        resized = cv2.resize(
            image[y0 : y0 + src_h, x0 : x0 + src_w],
            (out_w, out_h),
            dst=region,
            interpolation=interpolation,
        )
        if not np.shares_memory(resized, region):  # OpenCV chose its own buffer
            region[...] = resized
        if flip:
            cv2.flip(region, 1, dst=region)
        out[out_h:] = 0
        out[:out_h, :left] = 0
        out[:out_h, left + out_w :] = 0
        matrix = scale_matrix(out_w / src_w, out_h / src_h) @ translate_matrix(-x0, -y0)
        if flip:
            matrix = np.array([[-1, 0, self.size], [0, 1, 0], [0, 0, 1]], dtype=np.float64) @ matrix
        moved = polygons.transformed(matrix)
        clipped = moved.clipped(self.size, self.size)
        before, after = moved.areas(), clipped.areas()
        valid = (before > 0) & (after >= 0.5 * before)
        return TransformResult(out, clipped, matrix, valid)
