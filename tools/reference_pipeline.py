"""The sample pipeline as it was before issue 9, kept outside the package as a reference.

``ReferenceTargets`` is the oracle of ``tests/ocr/test_targets.py``: the package's vectorised
``DBNetTargets`` must give identical probability maps and masks and a threshold map within 1e-4.
``ReferenceDataset`` + ``reference_collate`` are the "reference" pipeline of
``tools/bench_loader.py``. The code is as it was in ``ocr/data/targets.py``,
``ocr/data/transforms.py`` and ``ocr/data/dataset.py`` (per-polygon Python, Pillow fills, a
whole-page resize before the crop, CHW copies, per-sample float maps); only names changed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyclipper
import torch
from PIL import Image, ImageDraw

from lmdb_cache.images import resample_filter
from ocr.data.dataset import sample_seed
from ocr.data.geometry import (
    orientation_matrix,
    polygons_in_upright_frame,
    scale_matrix,
    translate_matrix,
    upright_size,
)
from ocr.data.geometry import (
    transform_points as apply,
)
from ocr.data.transforms import pad_to, resize, resized_size


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


class ReferenceTargets:
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


class ReferenceTrainTransform:
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
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, list[bool]]:
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
        return crop, moved, matrix, valid


def _area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


class ReferenceValTransform:
    """Longest side to ``size``, then zero padding (as before: per-polygon lists)."""

    def __init__(self, size: int = 640, resample: str = "bilinear") -> None:
        self.size = size
        self.resample = resample

    def __call__(
        self, image: np.ndarray, polygons: list[np.ndarray], rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, list[bool]]:
        h, w = image.shape[:2]
        new_w, new_h = resized_size(w, h, self.size)
        matrix = scale_matrix(new_w / w, new_h / h)
        out = pad_to(resize(image, new_w, new_h, self.resample), self.size, self.size)
        moved = [apply(matrix, p) for p in polygons]
        return out, moved, matrix, [True] * len(moved)


class ReferenceDataset(torch.utils.data.Dataset):
    """An ``OCRDataset``'s samples as the code before issue 9 made them.

    Same source (disk, preload or cache), annotations, seed and epoch as ``dataset``; the
    sample is the old dict (CHW image, per-polygon lists, float32 maps), built one polygon
    at a time, for ``reference_collate``.
    """

    def __init__(self, dataset: Any, train: bool, size: int, targets: bool) -> None:
        self.dataset = dataset
        resample = dataset.transform.resample
        self.transform: Any = (
            ReferenceTrainTransform(size, resample)
            if train
            else ReferenceValTransform(size, resample)
        )
        self.targets = ReferenceTargets() if targets else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ds = self.dataset
        key = ds.keys[index]
        loaded = ds.source.load(key)
        # The dataset keeps its annotations as flat arrays; this takes them one polygon at a
        # time, as the previous implementation held them.
        ann_polygons = ds.table.polygons(index).to_list()
        dont_care = ds.table.dont_care(index).tolist()
        to_upright = orientation_matrix(loaded.orientation, loaded.raw_width, loaded.raw_height)
        if polygons_in_upright_frame(
            ann_polygons, loaded.orientation, loaded.raw_width, loaded.raw_height
        ):
            to_upright = np.eye(3)
        # The cap's per-axis scale, worked out here as the previous implementation did.
        upright_w, upright_h = upright_size(loaded.orientation, loaded.raw_width, loaded.raw_height)
        scale_x = loaded.pixels.shape[1] / upright_w
        scale_y = loaded.pixels.shape[0] / upright_h
        to_image = scale_matrix(scale_x, scale_y) @ to_upright
        polygons = [apply(to_image, p) for p in ann_polygons]
        rng = np.random.default_rng(sample_seed(ds.seed, ds.epoch, index))
        image, moved, matrix, valid = self.transform(loaded.pixels, polygons, rng)
        upright_to_sample = matrix @ scale_matrix(scale_x, scale_y)
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "polygons": [p.astype(np.float32) for p in moved],
            "ignore": [not v or d for v, d in zip(valid, dont_care, strict=True)],
            "gt_polygons": [apply(to_upright, p) for p in ann_polygons],
            "gt_ignore": dont_care,
            "inverse_matrix": np.linalg.inv(upright_to_sample).astype(np.float64),
            "filename": key,
            "raw_size": (loaded.raw_width, loaded.raw_height),
            "orientation": loaded.orientation,
            "upright_size": upright_size(loaded.orientation, loaded.raw_width, loaded.raw_height),
        }
        if self.targets is not None:
            sample.update(self.targets(image.shape[:2], sample["polygons"], sample["ignore"]))
        return sample


def reference_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The collate function before issue 9 (stack tensors, keep lists)."""
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
