"""The decoding processes of a writer: read, fingerprint, decode and encode sources in parallel.

The pool is started before the build opens its store (and before it takes the store's build
lock), so no decoding process inherits an LMDB environment or the lock.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import zlib
from typing import Any

from ..errors import ImageDecodeError
from ..format import codecs
from ..format.schema import PIXEL_CHANNELS
from ..images import DecodedImage, decode_bytes, read_source
from .outcomes import Decoded, Failed, Unchanged


def decode_task(
    path: str,
    key: str,
    max_side: int | None,
    resample: str,
    known_sha256: str | None,
    codec: str = codecs.DEFAULT,
    level: int | None = None,
    max_pixels: int | None = None,
) -> Decoded | Unchanged | Failed:
    """Read, fingerprint, decode and encode one source; runs in a worker process.

    Returns:
        A :class:`Decoded` (what to store: the pixel array for a codec that stores pixels as
        they are, else the encoded bytes), :class:`Unchanged` when the content hash equals
        ``known_sha256``, or :class:`Failed`.
    """
    try:
        data, st = read_source(path)  # never blocks on a FIFO; refuses non-regular files
    except ImageDecodeError as e:
        return Failed(key, e.reason)
    fingerprint = {
        "source_size": len(data),
        "source_mtime_ns": st.st_mtime_ns,
        "source_sha256": hashlib.sha256(data).hexdigest(),
    }
    if known_sha256 is not None and fingerprint["source_sha256"] == known_sha256:
        return Unchanged(key, fingerprint)
    try:
        decoded = decode_bytes(
            data, path, max_side=max_side, resample=resample, max_pixels=max_pixels
        )
    except ImageDecodeError as e:
        return Failed(key, e.reason)
    except MemoryError:
        return Failed(key, "out of memory while decoding; lower --workers or set --max-side")
    stored, fields = encode(decoded.pixels, codec, level)
    return Decoded(key, pixel_meta(decoded) | fingerprint | fields, stored)


def encode(pixels: Any, codec: str, level: int | None) -> tuple[Any, dict[str, Any]]:
    """``codecs.get(codec).encode`` in a form that pickles: a memoryview (a codec storing the
    pixels themselves) is sent as the array it views."""
    stored, fields = codecs.get(codec).encode(pixels, level)
    return (stored.obj if isinstance(stored, memoryview) else stored), fields


def pixel_meta(decoded: DecodedImage) -> dict[str, Any]:
    """The metadata every record has, whatever it was written from (``docs/format.md``)."""
    pixels = decoded.pixels
    upright_w, upright_h = decoded.upright_size
    return {
        "width": decoded.width,
        "height": decoded.height,
        "channels": PIXEL_CHANNELS,
        "nbytes": int(pixels.nbytes),
        "raw_width": decoded.raw_width,
        "raw_height": decoded.raw_height,
        "orientation": decoded.orientation,
        "scale": max(decoded.width, decoded.height) / max(upright_w, upright_h),
        "scale_x": decoded.width / upright_w,
        "scale_y": decoded.height / upright_h,
        "mode": decoded.mode,
        "format": decoded.format,
        "checksum": zlib.crc32(pixels.data),
    }


def start_pool(workers: int) -> multiprocessing.pool.Pool | None:
    """Start the decoding processes (None for ``workers <= 1``: decode in this process).

    On Linux they are forked: they start at once, need no re-import of the caller's main
    module (spawn would, and fails for scripts without a main guard), and the build has opened
    no LMDB environment yet. Elsewhere they are spawned.
    """
    if workers <= 1:
        return None
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method).Pool(workers, initializer=_die_with_parent)


def _die_with_parent() -> None:
    """On Linux, ask the kernel to kill this worker when the build process dies (kill -9):
    otherwise it finishes its image and dies on a broken pipe with a traceback."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request was made
        os._exit(1)


_PR_SET_PDEATHSIG = 1
