"""The decoding processes of a build: read, fingerprint and decode sources in parallel.

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
from collections import deque
from collections.abc import Iterator
from typing import Any

from .codecs import DEFAULT_LEVEL, RAW, encode
from .errors import ImageDecodeError
from .images import decode_bytes, read_source
from .schema import PIXEL_CHANNELS


def decode_task(
    root: str,
    key: str,
    max_side: int | None,
    resample: str,
    known_sha256: str | None,
    codec: str = RAW,
    level: int = DEFAULT_LEVEL,
) -> tuple[Any, ...]:
    """Read, fingerprint, decode and encode (``codecs``) one source; runs in a worker process.

    Returns ``("ok", key, meta, stored)`` (``stored``: the pixel array for ``raw``, the
    compressed bytes otherwise), ``("same", key, fingerprint)`` when the content hash equals
    ``known_sha256``, or ``("fail", key, reason)``.
    """
    path = os.path.join(root, key)
    try:
        data, st = read_source(path)  # never blocks on a FIFO; refuses non-regular files
    except ImageDecodeError as e:
        return ("fail", key, e.reason)
    fingerprint = {
        "source_size": len(data),
        "source_mtime_ns": st.st_mtime_ns,
        "source_sha256": hashlib.sha256(data).hexdigest(),
    }
    if known_sha256 is not None and fingerprint["source_sha256"] == known_sha256:
        return ("same", key, fingerprint)
    try:
        decoded = decode_bytes(data, path, max_side=max_side, resample=resample)
    except ImageDecodeError as e:
        return ("fail", key, e.reason)
    except MemoryError:
        return ("fail", key, "out of memory while decoding; lower --workers or set --max-side")
    pixels = decoded.pixels
    canonical_w, canonical_h = decoded.canonical_size
    meta = {
        "width": decoded.width,
        "height": decoded.height,
        "channels": PIXEL_CHANNELS,
        "nbytes": int(pixels.nbytes),
        "raw_width": decoded.raw_width,
        "raw_height": decoded.raw_height,
        "orientation": decoded.orientation,
        "scale": max(decoded.width, decoded.height) / max(canonical_w, canonical_h),
        "scale_x": decoded.width / canonical_w,
        "scale_y": decoded.height / canonical_h,
        "mode": decoded.mode,
        "format": decoded.format,
        **fingerprint,
        "checksum": zlib.crc32(pixels.data),
    }
    if codec == RAW:
        return ("ok", key, meta, pixels)
    stored, fields = encode(pixels, codec, level)
    meta.update(fields)
    return ("ok", key, meta, stored)


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


def run_tasks(
    tasks: list[tuple[str, str | None]],
    root: str,
    settings: dict[str, Any],
    pool: multiprocessing.pool.Pool | None,
    workers: int,
) -> Iterator[tuple[Any, ...]]:
    """Decode ``(key, known_sha256)`` tasks, yielding results in task order.

    At most ``2 * workers`` results are in flight, so memory stays bounded however large the
    set is and however slow the writer.
    """
    options = (settings.get("codec", RAW), settings.get("level", DEFAULT_LEVEL))
    max_side, resample = settings["max_side"], settings["resample"]
    if pool is None:
        for key, sha in tasks:
            yield decode_task(root, key, max_side, resample, sha, *options)
        return
    window: deque[multiprocessing.pool.AsyncResult] = deque()
    pending = iter(tasks)
    for key, sha in pending:
        window.append(pool.apply_async(decode_task, (root, key, max_side, resample, sha, *options)))
        if len(window) >= 2 * workers:
            break
    while window:
        yield window.popleft().get()
        for key, sha in pending:
            window.append(
                pool.apply_async(decode_task, (root, key, max_side, resample, sha, *options))
            )
            break
