"""How large a store will be, from the images' headers alone (no decode).

``build-cache`` asks before it decodes a new full-size store: decoded pixels take
``width * height * 3`` bytes, often 10-50 times the JPEG or PNG files they come from, and a
model trained at 640 pixels never sees the extra resolution. :func:`estimate_store` reads
each image's header with Pillow (``Image.open`` reads the header, never the pixels; a file it
cannot open is left out, as the build will fail it) and :func:`size_warning` words the warning.

Thresholds: a warning is given when the full-size store would be more than
:data:`MIN_RATIO` (8) times the sources' bytes *and* more than :data:`MIN_DECODED_BYTES`
(256 MiB), and capping at :data:`SUGGESTED_SIDE` (640, the transform size of the ocr configs)
would at least halve it. Below 256 MiB a store is cheap whatever the ratio; at under 8x it is
no worse than the sources themselves would be to read from disk.

A folder of more than :data:`MAX_HEADERS` images is estimated from that many evenly spaced
ones (keys are sorted, so the sample spans every sub-folder), so the scan stays well under a
second whatever the folder's size.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from ..format.schema import MAX_SIDE
from ..geometry import capped_size
from ..images import scan_images
from ..reporting import human_bytes

#: The side to suggest: the ``size`` of the ocr configs' transforms (configs/data/base.yaml).
SUGGESTED_SIDE = 640
#: Warn only when the full-size store is more than this many times its sources' bytes...
MIN_RATIO = 8.0
#: ...and more than this many bytes.
MIN_DECODED_BYTES = 256 << 20
#: Read at most this many headers; larger folders are estimated from an even sample.
MAX_HEADERS = 2000

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class SizeEstimate:
    """What a build of a folder would store, estimated from the image headers.

    Byte counts cover the files whose header Pillow could read; when only a sample was read
    (``read < files``) they are scaled from the sample to all files.

    Attributes:
        files: Image files below the folder.
        read: Headers read: all files, or an even sample of :data:`MAX_HEADERS`.
        unreadable: Files among those read that Pillow could not open (left out).
        source_bytes: Bytes of the image files.
        decoded_bytes: Pixel bytes of the store at ``max_side``.
        suggested_bytes: Pixel bytes of the store at ``suggested_side``.
        max_side: The cap the estimate is for (None: full size).
        suggested_side: The cap the estimate suggests.
    """

    files: int
    read: int
    unreadable: int
    source_bytes: int
    decoded_bytes: int
    suggested_bytes: int
    max_side: int | None
    suggested_side: int

    @property
    def ratio(self) -> float:
        """Decoded bytes per source byte (0.0 without sources)."""
        return self.decoded_bytes / self.source_bytes if self.source_bytes else 0.0


def estimate_store(
    source: str | os.PathLike[str],
    keys: Sequence[str] | None = None,
    *,
    max_side: int | None = None,
    suggested_side: int = SUGGESTED_SIDE,
    limit: int = MAX_HEADERS,
) -> SizeEstimate:
    """Estimate a store's pixel bytes from the headers of the images below ``source``.

    Args:
        source: The folder ``build-cache`` would read.
        keys: Its image keys, as :func:`lmdb_cache.images.scan_images` lists them (scanned
            when None).
        max_side: The cap to estimate for (None: full size); ``capped_size`` rules.
        suggested_side: A second cap to estimate for, to suggest.
        limit: Read at most this many headers (an even sample beyond), at least 1.

    Returns:
        A :class:`SizeEstimate`.

    Raises:
        ValueError: ``limit`` or a cap below 1.
        NotADirectoryError: ``source`` is not a folder (when ``keys`` is None).
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    for name, side in (("max_side", max_side), ("suggested_side", suggested_side)):
        if side is not None and side < 1:
            raise ValueError(f"{name} must be a positive number of pixels, got {side}")
    if keys is None:
        keys = scan_images(source)
    files = len(keys)
    sample = keys if files <= limit else [keys[i * files // limit] for i in range(limit)]
    source_bytes = decoded = suggested = unreadable = 0
    for key in sample:
        header = _header(os.path.join(source, key))
        if header is None:
            unreadable += 1
            continue
        (width, height), size = header
        source_bytes += size
        decoded += _pixel_bytes(width, height, max_side)
        suggested += _pixel_bytes(width, height, suggested_side)
    scale = files / len(sample) if sample else 0.0
    return SizeEstimate(
        files=files,
        read=len(sample),
        unreadable=unreadable,
        source_bytes=round(source_bytes * scale),
        decoded_bytes=round(decoded * scale),
        suggested_bytes=round(suggested * scale),
        max_side=max_side,
        suggested_side=suggested_side,
    )


def size_warning(
    estimate: SizeEstimate,
    *,
    min_ratio: float | None = None,
    min_bytes: int | None = None,
) -> str | None:
    """The warning for a full-size store far larger than its sources, or None.

    Args:
        estimate: From :func:`estimate_store` with ``max_side=None``.
        min_ratio: Warn above this many decoded bytes per source byte (default
            :data:`MIN_RATIO`)...
        min_bytes: ...and above this many decoded bytes (default :data:`MIN_DECODED_BYTES`).

    Returns:
        A sentence naming both sizes, the ratio and the ``--max-side`` that shrinks the store,
        or None when the store is capped, small, not much larger than its sources, or would
        not shrink by half at the suggested side.
    """
    ratio_floor = MIN_RATIO if min_ratio is None else min_ratio
    bytes_floor = MIN_DECODED_BYTES if min_bytes is None else min_bytes
    if (
        estimate.max_side is not None
        or estimate.decoded_bytes <= bytes_floor
        or estimate.decoded_bytes <= ratio_floor * estimate.source_bytes
        or estimate.suggested_bytes * 2 > estimate.decoded_bytes
    ):
        return None
    side = estimate.suggested_side
    return (
        f"the decoded store will be about {human_bytes(estimate.decoded_bytes)} from "
        f"{human_bytes(estimate.source_bytes)} of sources ({estimate.ratio:.0f}x); to train at "
        f"{side} px (the ocr configs' transform size) build it with --max-side {side}: about "
        f"{human_bytes(estimate.suggested_bytes)}. Continuing at full size."
    )


def _pixel_bytes(width: int, height: int, max_side: int | None) -> int:
    # The upright size does not matter: the cap keeps the product whichever side is longest.
    capped_w, capped_h = capped_size(width, height, max_side)
    return capped_w * capped_h * 3


def _header(path: str) -> tuple[tuple[int, int], int] | None:
    """``((width, height), file bytes)`` from the header, or None if Pillow cannot open it.

    Opened without blocking and checked with ``fstat`` (a FIFO named like an image must not
    hang the scan, as it must not hang the build); only the header is read.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning
                with Image.open(f) as image:
                    width, height = image.size
        except Exception:  # whatever Pillow raises for a file it cannot open: left out
            return None
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        return None  # the build refuses it
    return (width, height), st.st_size
