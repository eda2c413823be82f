"""Every image's annotations as a few flat arrays: all a dataset keeps of its annotation file.

A dict of per-image Python objects (a list of polygon arrays, word ids, texts) costs hundreds of
MB for a million images, and every ``fork`` DataLoader worker ends up with its own copy of
those pages, since reading an object writes its reference count. An ``AnnotationTable`` holds
no object per image or per word (MMEngine's ``BaseDataset(serialize_data=True)`` keeps its
data as flat arrays for the same reason):

* ``keys``: a ``lmdb_cache.KeyList`` (every key's UTF-8 bytes in one blob, and their ends);
* ``points``: ``(M, 2)`` float64, every polygon's points, image after image, in file order;
* ``polygon_ends``: ``(W,)`` int64, the end of each polygon in ``points``;
* ``image_ends``: ``(N,)`` int64, the end of each image's polygons in ``polygon_ends``;
* ``dont_care_flags``: ``(W,)`` bool, whether each polygon's text is ``"###"``.

Nothing writes to these arrays once made (the table hands out read-only views), so forked
workers share their pages for as long as they live.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from lmdb_cache import KeyList
from lmdb_cache.annotations import DONT_CARE, AnnotationError

from .annotations import ImageAnnotation, load_annotations
from .sample import PolygonSet

__all__ = ["DONT_CARE", "AnnotationTable"]


def _frozen(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array`` (the caller's own array keeps its flags)."""
    view = array.view()
    view.flags.writeable = False
    return view


def _ends_are_valid(ends: np.ndarray, total: int, strict: bool) -> bool:
    """Whether ``ends`` cut ``[0, total)`` into consecutive ranges (non-empty ones if
    ``strict``)."""
    if not len(ends):
        return total == 0
    steps = np.diff(ends, prepend=0)
    smallest = int(steps.min())
    return int(ends[-1]) == total and (smallest >= 1 if strict else smallest >= 0)


def _as_points(polygon: Any) -> np.ndarray:
    """One polygon as ``PolygonSet.from_list`` converts it; an array that already has that
    form is taken as it is (no new object per polygon)."""
    if (
        isinstance(polygon, np.ndarray)
        and polygon.dtype == np.float64
        and polygon.shape[1:] == (2,)
    ):
        return polygon
    return np.asarray(polygon, dtype=np.float64).reshape(-1, 2)


def _key_list(names: list[str]) -> KeyList:
    """The keys as a ``KeyList``, refusing a key it would not give back as it is.

    Raises:
        AnnotationError: such a key (a lone surrogate, or escaped bytes that form UTF-8).
    """
    try:
        keys = KeyList.from_keys(names)
    except UnicodeEncodeError as e:
        raise AnnotationError(
            f"image key {e.object!r} cannot be held as UTF-8 ({e.reason}); keys are file "
            "paths: fix the key in the annotation file"
        ) from e
    for i, name in enumerate(names):
        # Only a key with escaped bytes that happen to form UTF-8 reads back as other text.
        if not name.isascii() and keys[i] != name:
            raise AnnotationError(
                f"image key {name!r} reads back as {keys[i]!r}; fix the key in the annotation file"
            )
    return keys


class AnnotationTable:
    """The polygons and don't-care flags of every image, as flat arrays.

    Image ``i`` is ``keys[i]``; its polygons are ``polygon_ends[a:b]`` with ``a, b`` its
    range in ``image_ends``; polygon ``j`` is ``points[polygon_ends[j - 1]:polygon_ends[j]]``
    (from 0 for the first).

    Args:
        keys: The image keys, in order.
        points: ``(M, 2)`` float64 points of every polygon.
        polygon_ends: ``(W,)`` int64 end of each polygon in ``points``.
        image_ends: ``(N,)`` int64 end of each image's polygons in ``polygon_ends``.
        dont_care_flags: ``(W,)`` bool, one flag per polygon.

    Raises:
        ValueError: arrays of the wrong shape or dtype, or ends that do not cut ``points``
            into polygons of at least one point and ``polygon_ends`` into ``len(keys)``
            images.
    """

    __slots__ = ("keys", "points", "polygon_ends", "image_ends", "dont_care_flags")

    def __init__(
        self,
        keys: KeyList,
        points: np.ndarray,
        polygon_ends: np.ndarray,
        image_ends: np.ndarray,
        dont_care_flags: np.ndarray,
    ) -> None:
        if not isinstance(keys, KeyList):
            raise TypeError(f"keys must be a KeyList, got {type(keys).__name__}")
        arrays = {
            "points": (points, np.float64),
            "polygon_ends": (polygon_ends, np.int64),
            "image_ends": (image_ends, np.int64),
            "dont_care_flags": (dont_care_flags, np.bool_),
        }
        for name, (array, dtype) in arrays.items():
            if not isinstance(array, np.ndarray) or array.dtype != dtype:
                found = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
                raise ValueError(f"{name} must be a {np.dtype(dtype)} array, got {found}")
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"points must have shape (M, 2), got {points.shape}")
        if polygon_ends.ndim != 1 or not _ends_are_valid(polygon_ends, len(points), True):
            raise ValueError(
                f"polygon_ends must increase by at least 1 and end at {len(points)} points"
            )
        if image_ends.shape != (len(keys),) or not _ends_are_valid(
            image_ends, len(polygon_ends), False
        ):
            raise ValueError(
                f"image_ends must hold one non-decreasing end for each of the {len(keys)} "
                f"images and end at {len(polygon_ends)} polygons"
            )
        if dont_care_flags.shape != polygon_ends.shape:
            raise ValueError(
                f"dont_care_flags must hold one flag for each of the {len(polygon_ends)} "
                f"polygons, got shape {dont_care_flags.shape}"
            )
        self.keys = keys
        self.points = _frozen(points)
        self.polygon_ends = _frozen(polygon_ends)
        self.image_ends = _frozen(image_ends)
        self.dont_care_flags = _frozen(dont_care_flags)

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, ImageAnnotation]) -> AnnotationTable:
        """The table of ``annotations`` (``load_annotations``'s dict), in its order.

        Each polygon is converted as ``PolygonSet.from_list`` converts it (float64,
        reshaped to ``(K, 2)``); a word is don't care when its text is ``"###"``.

        Raises:
            ValueError: an image whose polygons and texts differ in number, or a polygon
                without points.
            AnnotationError: (a ``ValueError``) a key that cannot be held as UTF-8.
        """
        polygons: list[np.ndarray] = []
        image_ends = np.empty(len(annotations), dtype=np.int64)
        for i, (key, ann) in enumerate(annotations.items()):
            if len(ann.polygons) != len(ann.texts):
                raise ValueError(
                    f"image {key!r} has {len(ann.polygons)} polygons and {len(ann.texts)} texts"
                )
            polygons.extend(_as_points(p) for p in ann.polygons)
            image_ends[i] = len(polygons)
        counts = np.fromiter((len(p) for p in polygons), dtype=np.int64, count=len(polygons))
        if len(counts) and int(counts.min()) < 1:
            image = int(np.searchsorted(image_ends, int(np.argmin(counts)), side="right"))
            raise ValueError(f"image {list(annotations)[image]!r} has a polygon without points")
        flags = np.fromiter(
            (text == DONT_CARE for ann in annotations.values() for text in ann.texts),
            dtype=bool,
            count=len(polygons),
        )
        points = np.concatenate(polygons) if polygons else np.zeros((0, 2), dtype=np.float64)
        del polygons
        keys = _key_list(list(annotations))
        return cls(keys, points, np.cumsum(counts), image_ends, flags)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> AnnotationTable:
        """The table of an annotation JSON file (``ocr.data.annotations``); the per-image
        objects the parse makes are dropped once the table is built.

        Raises:
            AnnotationError: (a ``ValueError``) the file is unreadable or malformed.
        """
        return cls.from_annotations(load_annotations(path))

    def __len__(self) -> int:
        return len(self.image_ends)

    def polygon_range(self, index: int) -> tuple[int, int]:
        """The range of image ``index``'s polygons in ``polygon_ends`` (negative counts from
        the end).

        Raises:
            IndexError: no such image.
        """
        n = len(self.image_ends)
        i = operator.index(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"image {index} of {n}")
        return (int(self.image_ends[i - 1]) if i else 0), int(self.image_ends[i])

    def polygons(self, index: int) -> PolygonSet:
        """The polygons of image ``index`` (raw file frame, float64): read-only views of the
        table's points, and offsets of their own."""
        first, last = self.polygon_range(index)
        start = int(self.polygon_ends[first - 1]) if first else 0
        offsets = np.zeros(last - first + 1, dtype=np.int64)
        np.subtract(self.polygon_ends[first:last], start, out=offsets[1:])
        return PolygonSet(self.points[start : start + int(offsets[-1])], offsets)

    def dont_care(self, index: int) -> np.ndarray:
        """The don't-care flag of each polygon of image ``index`` (a read-only view)."""
        first, last = self.polygon_range(index)
        return self.dont_care_flags[first:last]

    @property
    def nbytes(self) -> int:
        """The memory the table holds (its arrays)."""
        arrays = (self.points, self.polygon_ends, self.image_ends, self.dont_care_flags)
        return self.keys.nbytes + sum(int(a.nbytes) for a in arrays)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            AnnotationTable,
            (self.keys, self.points, self.polygon_ends, self.image_ends, self.dont_care_flags),
        )

    def __repr__(self) -> str:
        return (
            f"AnnotationTable({len(self)} images, {len(self.polygon_ends)} polygons, "
            f"{self.nbytes} bytes)"
        )
