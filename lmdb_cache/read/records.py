"""One cached image as a reader returns it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import geometry


@dataclass(frozen=True)
class Record:
    """One cached image.

    Attributes:
        key: The image's key (for ``build-cache``: the POSIX path relative to the source folder).
        image: ``(height, width, 3)`` uint8 array, upright (EXIF applied), RGB.
        meta: The record's metadata: ``width``, ``height``, ``raw_width``, ``raw_height``,
            ``orientation``, ``scale`` (and ``scale_x``/``scale_y``), the source fingerprint
            (records decoded from a file), the pixel checksum and ``extra`` when the writer
            gave one. See ``docs/format.md``.
    """

    key: str
    image: np.ndarray
    meta: dict[str, Any]

    @property
    def extra(self) -> dict[str, Any]:
        """The map given to ``CacheWriter.add(..., extra=...)``; empty when none was."""
        return self.meta.get("extra", {})

    @property
    def raw_to_pixels(self) -> np.ndarray:
        """The 3x3 matrix taking raw-file coordinates (e.g. annotation polygons) to this
        record's stored pixels: EXIF orientation, then the cap's scale
        (:func:`lmdb_cache.geometry.raw_to_pixels`)."""
        return geometry.raw_to_pixels(self.meta)
