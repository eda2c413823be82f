"""The records that travel between the data stages: one sample, its DBNet maps, one batch.

Every field is declared once, here. ``Sample`` is what ``OCRDataset.__getitem__`` returns;
``Batch`` holds the same fields for N samples (``ocr.data.collate`` builds it from samples, or
``OCRDataset.__getitems__`` writes it directly). How a field is batched follows from its
declared type (``Stacked[...]`` fields become one tensor, ``HostStacked[...]`` one numpy
array, every other field a list), so collate never looks at field names.

Frames: ``polygons`` are in the sample's pixel-corner frame (what the model sees);
``gt_polygons`` in the upright frame (upright, full size of the source file), where
evaluation happens; ``inverse_matrix`` maps the first onto the second.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, TypeVar

import numpy as np
import torch

from .polygons import polygon_areas, polygon_perimeters

T = TypeVar("T")


class _Stack:
    """Marker: a field whose per-sample values are stacked along a new first axis."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Stacked into one tensor: in a DataLoader worker allocated in shared memory (it travels as
#: a handle), pinned in the main process with CUDA. For what goes to the device.
STACK = _Stack("STACK")
#: Stacked into one numpy array that travels inside the pickle: small per-sample arrays that
#: stay on the host (a shared-memory segment per batch would cost more than the bytes).
HOST_STACK = _Stack("HOST_STACK")
Stacked = Annotated[T, STACK]
HostStacked = Annotated[T, HOST_STACK]


class PolygonSet:
    """All polygons of one image as one ``(P, 2)`` array of points plus offsets.

    Polygon ``i`` is ``points[offsets[i]:offsets[i + 1]]`` (a view). Whole-set operations
    (moving by a matrix, areas, perimeters, bounds) run as single array operations, whatever the
    number of polygons.

    Args:
        points: ``(P, 2)`` points, polygon after polygon.
        offsets: ``(N + 1,)`` start of each polygon in ``points`` and the end of the last.

    Raises:
        ValueError: shapes or offsets that do not describe N polygons of >= 1 point.
    """

    __slots__ = ("points", "offsets")

    def __init__(self, points: np.ndarray, offsets: np.ndarray) -> None:
        points = np.asarray(points)
        offsets = np.asarray(offsets, dtype=np.int64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"points must have shape (P, 2), got {points.shape}")
        if offsets.ndim != 1 or offsets.size == 0 or offsets[0] != 0:
            raise ValueError("offsets must be a 1-D array starting at 0")
        if offsets[-1] != len(points) or np.any(np.diff(offsets) < 1):
            raise ValueError(
                f"offsets must increase and end at the number of points ({len(points)})"
            )
        self.points = points
        self.offsets = offsets

    @classmethod
    def from_list(cls, polygons: Sequence[Any], dtype: Any = np.float64) -> PolygonSet:
        """From a sequence of ``(K_i, 2)`` array-likes."""
        arrays = [np.asarray(p, dtype=dtype).reshape(-1, 2) for p in polygons]
        counts = np.array([len(a) for a in arrays], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        points = np.concatenate(arrays) if arrays else np.zeros((0, 2), dtype=dtype)
        return cls(points, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"polygon {index} of {len(self)}")
        index %= len(self)
        return self.points[self.offsets[index] : self.offsets[index + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for start, end in zip(self.offsets[:-1], self.offsets[1:], strict=True):
            yield self.points[start:end]

    def __repr__(self) -> str:
        return f"PolygonSet({len(self)} polygons, {len(self.points)} points, {self.points.dtype})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PolygonSet):
            return NotImplemented
        return np.array_equal(self.offsets, other.offsets) and np.array_equal(
            self.points, other.points
        )

    def __getstate__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.points, self.offsets

    def __setstate__(self, state: tuple[np.ndarray, np.ndarray]) -> None:
        self.points, self.offsets = state

    def to_list(self) -> list[np.ndarray]:
        return list(self)

    def counts(self) -> np.ndarray:
        """Number of points of each polygon."""
        return np.diff(self.offsets)

    def astype(self, dtype: Any) -> PolygonSet:
        return PolygonSet(self.points.astype(dtype), self.offsets)

    def transformed(self, matrix: np.ndarray) -> PolygonSet:
        """Every point moved by the 3x3 affine ``matrix`` (float64)."""
        pts = self.points.astype(np.float64, copy=False)
        return PolygonSet(pts @ matrix[:2, :2].T + matrix[:2, 2], self.offsets)

    def clipped(self, width: float, height: float) -> PolygonSet:
        """Points clipped to ``[0, width] x [0, height]``."""
        pts = np.empty_like(self.points)
        np.clip(self.points[:, 0], 0, width, out=pts[:, 0])
        np.clip(self.points[:, 1], 0, height, out=pts[:, 1])
        return PolygonSet(pts, self.offsets)

    def areas(self) -> np.ndarray:
        """Absolute shoelace area of each polygon (float64, ``ocr.data.polygons``)."""
        return polygon_areas(self.points, self.offsets)

    def perimeters(self) -> np.ndarray:
        """Closed perimeter of each polygon (float64, ``ocr.data.polygons``)."""
        return polygon_perimeters(self.points, self.offsets)

    def bounds(self) -> np.ndarray:
        """``(N, 4)`` rows ``x_min, y_min, x_max, y_max``."""
        if not len(self):
            return np.zeros((0, 4), dtype=self.points.dtype)
        starts = self.offsets[:-1]
        low = np.minimum.reduceat(self.points, starts, axis=0)
        high = np.maximum.reduceat(self.points, starts, axis=0)
        return np.concatenate([low, high], axis=1)


@dataclass
class DBNetMaps:
    """DBNet's training targets for one sample ``(H, W)`` or a batch ``(N, H, W)``.

    The three 0/1 maps travel as uint8 and become float on the device (``DBLoss`` converts);
    the threshold map is float32 in ``[thresh_min, thresh_max]``.
    """

    prob_map: Stacked[Any] = field(metadata={"dtype": np.uint8})
    prob_mask: Stacked[Any] = field(metadata={"dtype": np.uint8})
    thresh_map: Stacked[Any] = field(metadata={"dtype": np.float32})
    thresh_mask: Stacked[Any] = field(metadata={"dtype": np.uint8})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DBNetMaps:
        """The maps as tensors on ``device``."""
        return DBNetMaps(
            *(torch.as_tensor(v).to(device, non_blocking=non_blocking) for v in self.values())
        )

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in TARGET_NAMES]

    def pin_memory(self) -> DBNetMaps:
        return DBNetMaps(*(_pinned(v) for v in self.values()))


#: The names of DBNet's target maps, in one place (targets, collate, engine and loss use it).
TARGET_NAMES: tuple[str, ...] = tuple(f.name for f in fields(DBNetMaps))
#: dtype of each map as produced by ``DBNetTargets``.
TARGET_DTYPES: dict[str, np.dtype] = {
    f.name: np.dtype(f.metadata["dtype"]) for f in fields(DBNetMaps)
}


@dataclass
class Sample:
    """One image and its text, as the model and the evaluation need them.

    Attributes:
        image: ``(H, W, 3)`` uint8, the transformed pixels (HWC: a transform writes rows).
        polygons: text polygons in the sample frame (float32).
        ignore: ``(N,)`` bool, polygons the targets mask out (don't-care text, or cut away).
        gt_polygons: the annotation's polygons in the upright frame (float64).
        gt_ignore: ``(N,)`` bool, don't-care ground truth (``###``) for evaluation.
        inverse_matrix: ``(3, 3)`` float64, sample frame -> upright frame.
        filename: the image's key (its path relative to the image folder).
        raw_size: ``(width, height)`` of the source file as stored.
        orientation: its EXIF orientation (1..8).
        upright_size: ``(width, height)`` of the upright frame.
        targets: DBNet maps, when the dataset computes them.
        seed: the seed of the sample's random transform (``ocr.data.dataset.sample_seed``).
        checksum: a 64-bit checksum of the bytes the model is fed (image and maps), made
            where the sample is built (a DataLoader worker): equal checksums mean equal
            inputs, which tells a data difference from a compute difference between runs.
    """

    image: Stacked[np.ndarray]
    polygons: PolygonSet
    ignore: np.ndarray
    gt_polygons: PolygonSet
    gt_ignore: np.ndarray
    inverse_matrix: HostStacked[np.ndarray]
    filename: str
    raw_size: tuple[int, int]
    orientation: int
    upright_size: tuple[int, int]
    targets: DBNetMaps | None = None
    seed: int | None = None
    checksum: int | None = None


@dataclass
class Batch:
    """N samples: the fields of ``Sample``, stacked (``Stacked``) or as lists.

    ``image`` is ``(N, H, W, 3)`` uint8 (``DeviceNormalizer`` makes it NCHW float on the
    device), ``inverse_matrix`` an ``(N, 3, 3)`` float64 numpy array, ``targets`` maps of
    ``(N, H, W)``.
    """

    image: torch.Tensor
    polygons: list[PolygonSet]
    ignore: list[np.ndarray]
    gt_polygons: list[PolygonSet]
    gt_ignore: list[np.ndarray]
    inverse_matrix: np.ndarray
    filename: list[str]
    raw_size: list[tuple[int, int]]
    orientation: list[int]
    upright_size: list[tuple[int, int]]
    targets: DBNetMaps | None = None
    seed: list[int] | None = None
    checksum: list[int] | None = None

    def __len__(self) -> int:
        return len(self.filename)

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread (``pin_memory=True``)."""
        self.image = _pinned(self.image)
        if self.targets is not None:
            self.targets = self.targets.pin_memory()
        return self


def _pinned(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and not value.is_pinned():
        return value.pin_memory()
    return value
