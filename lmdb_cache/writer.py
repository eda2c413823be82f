"""Write a cache store: :class:`CacheWriter` adds records decoded from files or given as arrays,
each with an optional ``extra`` map; ``build-cache`` (``lmdb_cache.build``) is one user of it.

Crash safety: writes are grouped into transactions of bounded size, each holding whole records
(metadata and pixels together) plus a manifest that agrees with them (``commits``), so a writer
killed at any moment leaves the last committed state: every record whole, the manifest marked
incomplete. Readers keep their own snapshot meanwhile (LMDB MVCC).

One writer at a time: a writer holds the store's build lock (``locking``) from before it reads
the store's settings to its last commit. A rebuild writes a new store beside the old one and
swaps it in when the writer closes (``store.replace_store``), so it works on a damaged store,
and an interrupted rebuild leaves the old store as it was.

Decoding runs in a pool of ``workers`` processes (``decoding``), at most ``2 * workers`` images
in flight, so memory stays bounded however many images are added; results are written in the
order they were added.
"""

from __future__ import annotations

import multiprocessing.pool
import os
import time
from collections import deque
from typing import Any

import numpy as np

from .codecs import RAW, encode, needs_recode
from .commits import Batch, NoProgress, Progress, recode, stored_records
from .decoding import decode_task, pixel_meta, start_pool
from .errors import ImageDecodeError
from .images import DecodedImage, cap_pixels, to_rgb_array
from .locking import BuildLock
from .results import BuildResult
from .schema import (
    COMPRESSED_FORMAT_VERSION,
    EXTENDED_FORMAT_VERSION,
    FORMAT_VERSION,
    check_extra,
    decode_key,
    display_key,
    encode_key,
    has_source,
    key_problem,
    pixel_ceiling,
)
from .settings import (
    KEEP,
    check_arguments,
    check_output,
    choose_settings,
    open_existing,
    start_manifest,
    stored_settings,
)
from .store import (
    WriteStore,
    rebuild_dir,
    remove_stale_rebuilds,
    remove_store_dir,
    replace_store,
    store_exists,
)

__all__ = ["KEEP", "BuildResult", "CacheWriter"]

# ``extra`` of a source decoded again by a build: the record keeps the extra it had.
_KEEP_EXTRA: Any = object()


class CacheWriter:
    """Write records into a cache store, from image files or from arrays.

    ::

        with CacheWriter("data/train.lmdb", max_side=640) as writer:
            writer.add("a.jpg", path="photos/a.jpg", extra={"label": 3})
            writer.add("b", image=rgb_uint8_array)

    A file is decoded exactly as ``build-cache`` decodes it (EXIF orientation, RGB uint8,
    the cap); an array is taken as upright RGB (``(H, W, 3)``), grey (``(H, W)``) or RGBA
    (``(H, W, 4)``, composited over white) uint8, and capped the same way. Adding a key again
    replaces its record. Nothing is visible to readers before the first commit, and the store
    is marked complete when the writer closes; leaving the ``with`` block by an exception
    keeps what was committed (a rerun resumes) and drops the rest.

    Args:
        path: The store's folder; created when absent.
        max_side: Longest-side cap, or None for full size. Default (``KEEP``): the existing
            store's, full size for a new store. Another cap than the store's needs
            ``rebuild``.
        resample: Filter of the cap (``lmdb_cache.images.RESAMPLE_FILTERS``). Default: the
            store's, ``"bilinear"`` for a new store.
        codec: ``"raw"`` or ``"zstd"``. Default: the store's, ``"raw"`` for a new store;
            another one encodes the kept records again from their pixels.
        level: zstd level 1..22 (default: the store's, else 5).
        rebuild: Start from an empty store and put it in place of the existing one when the
            writer closes (the old one stays until then).
        workers: Processes decoding files; 1 decodes in this process. None: one per CPU.
        errors: ``"raise"`` (default): a file that cannot be decoded raises
            :class:`ImageDecodeError` (from the ``add`` that stores it, or from ``close``);
            ``"record"``: it is listed in the store's failures and in ``result.failures``.
        max_pixels: The most pixels (raw width x height) an image may have; readers refuse
            a record claiming more as damage, which bounds the memory a forged record can
            make them allocate. Default: the store's, else Pillow's decompression-bomb limit
            (``schema.DEFAULT_MAX_PIXELS``, 178,956,970). Pillow's own limit
            (``PIL.Image.MAX_IMAGE_PIXELS``) still applies to files: raise both to store
            larger scans. Another ceiling than the store's needs ``rebuild``.
        commit_bytes, commit_images: A transaction is committed once it holds this many
            pixel bytes or images.
        progress: Told of each record stored (``start`` is the caller's to call).

    Raises:
        ValueError: a bad argument. SettingsMismatchError: settings other than the store's
        without ``rebuild``. BuildLockedError: another writer holds the store.
        NotACacheError, FormatVersionError, TruncatedStoreError, StoreDamagedError: the
        folder holds no store this version updates (``rebuild`` replaces a damaged one).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_side: int | None = KEEP,
        resample: str = KEEP,
        codec: str = KEEP,
        level: int = KEEP,
        rebuild: bool = False,
        workers: int | None = 1,
        errors: str = "raise",
        max_pixels: int = KEEP,
        commit_bytes: int = 256 << 20,
        commit_images: int = 256,
        progress: Progress | None = None,
        source_root: str | os.PathLike[str] | None = None,
    ) -> None:
        self._started = time.perf_counter()
        self.path = os.fspath(path)
        workers = (os.cpu_count() or 1) if workers is None else workers
        check_arguments(max_side, resample, workers, codec, level, max_pixels)
        if errors not in ("raise", "record"):
            raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
        check_output(self.path)
        self.result = BuildResult(output=self.path)
        self._errors = errors
        self._limits = (commit_bytes, commit_images)
        self._progress = progress or NoProgress()
        self._window: deque[tuple[Any, Any]] = deque()
        self._in_flight = 0 if workers <= 1 else 2 * workers
        self._store: WriteStore | None = None
        self._target = self.path
        self._closed = False
        self._pool: multiprocessing.pool.Pool | None = None
        self._lock = BuildLock(self.path)
        try:
            # The pool first: no decoding process inherits the lock or an LMDB environment.
            self._pool = start_pool(workers)
            self._lock.acquire()
            remove_stale_rebuilds(self.path)
            self._open((max_side, resample, codec, level), rebuild, source_root, max_pixels)
        except BaseException:
            self._abandon()
            raise

    def _open(
        self, asked: tuple[Any, Any, Any, Any], rebuild: bool, root: Any, max_pixels: Any
    ) -> None:
        replacing = rebuild and store_exists(self.path)
        self._store, existing = (None, None) if replacing else open_existing(self.path)
        stored = stored_settings(self.path) if replacing else (existing or {}).get("settings")
        warnings = self.result.warnings
        self.settings = choose_settings(
            asked, stored, rebuild, replacing, self.path, warnings, max_pixels
        )
        self.result.settings = self.settings
        if replacing:
            self._target = rebuild_dir(self.path)
        if self._store is None:
            self._store = WriteStore(self._target)
        root = None if root is None else os.fspath(root)
        manifest = start_manifest(self._store, self.settings, existing, root, warnings)
        metas, self._records, failed = stored_records(self._store, manifest["settings"])
        if len(metas) < len(self._records):
            warnings.append(
                f"{len(self._records) - len(metas)} record(s) of '{self.path}' are damaged "
                "(metadata that fails its checks, or half a record) and are not kept; a "
                "build decodes their sources again"
            )
        self._metas: dict[str, dict] = metas
        self._batch = Batch(self._store, manifest, failed)
        self._batch.sizes = {key: meta["nbytes"] for key, meta in metas.items()}
        self._batch.committed_images = len(metas)
        self._batch.before_commit = self._set_format_version
        self._extended = sum(1 for meta in metas.values() if _extended(meta))

    # --- the public interface -------------------------------------------------------------

    def add(
        self,
        key: str,
        *,
        path: str | os.PathLike[str] | None = None,
        image: np.ndarray | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Store one image under ``key``, from a file (``path``) or an array (``image``).

        Args:
            key: Any str LMDB can hold: not empty, at most 511 bytes in UTF-8.
            path: An image file, decoded like ``build-cache`` does (in a worker process
                when ``workers > 1``: its errors may then surface on a later call).
            image: uint8 pixels, ``(H, W, 3)`` RGB, ``(H, W)`` grey or ``(H, W, 4)`` RGBA,
                already upright; copied, so the caller may reuse it at once.
            extra: A map of your own (labels, ids...) stored with the record as msgpack:
                str keys; str, int, float, bool, bytes, None, lists and maps as values;
                at most 64 KiB. Read back as ``record.extra``.

        Raises:
            TypeError: ``key`` is not a str, not exactly one of ``path`` and ``image``, or
                ``image`` is not a uint8 array.
            ValueError: a key LMDB cannot hold, an array of another shape, or an ``extra``
                that cannot be stored.
            ImageDecodeError: (``errors="raise"``) this or an earlier file cannot be decoded.
            RuntimeError: the writer is closed.
        """
        self._check_open()
        _check_key(key)
        if (path is None) == (image is None):
            raise TypeError("give exactly one of path= (an image file) or image= (an array)")
        if extra is not None:
            try:
                extra = check_extra(extra)
            except ValueError as e:
                raise ValueError(f"{display_key(key)!r}: {e}") from None
        if path is not None:
            self._submit(key, os.fspath(path), None, extra)
        else:
            self._queue(self._array_outcome(key, image), extra)

    def remove(self, key: str) -> bool:
        """Delete ``key``'s record (and any failure noted for it); whether there was one."""
        self._check_open()
        self._drain(0)  # an add of this key still in flight must not land afterwards
        meta = self._metas.pop(key, None)
        self._batch.succeed(key)
        if meta is None:
            return False
        self._extended -= _extended(meta)
        self._batch.delete(encode_key(key))
        self.result.removed += 1
        return True

    def __contains__(self, key: object) -> bool:
        """Whether the store holds ``key`` (adds still decoding not counted)."""
        return key in self._metas

    def close(self) -> BuildResult:
        """Store what is in flight, encode kept records again if the codec changed, commit
        with the manifest marked complete, and put a rebuilt store in place.

        Returns:
            What the writer did (``result.failures`` lists files that could not be decoded
            with ``errors="record"``).

        Raises:
            ImageDecodeError: (``errors="raise"``) a file still in flight cannot be decoded;
                nothing of this writer's last transaction is committed then.
            DiskFullError: the device is full; what was committed stays.
        """
        if self._closed:
            return self.result
        try:
            self._drain(0)
            self._recode_kept()
            self._batch.commit(final=True)
        except BaseException:
            self._abandon()
            raise
        self.result.failures = sorted((display_key(k), r) for k, r in self._batch.reasons.items())
        self.result.images = len(self._batch.sizes)
        self.result.total_bytes = sum(self._batch.sizes.values())
        self._closed = True
        try:
            assert self._store is not None
            self._store.close()
            if self._target != self.path:
                self.result.warnings += replace_store(self._target, self.path)
        finally:
            self._release()
        self.result.seconds = time.perf_counter() - self._started
        return self.result

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:
            self.close()
        else:
            self._abandon()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self._abandon()
        except Exception:
            pass

    # --- for build-cache (same package) ----------------------------------------------------

    def _add_source(self, key: str, path: str, known_sha256: str | None) -> None:
        """Decode ``path`` unless its content hash is ``known_sha256`` (then only its
        fingerprint is refreshed); the record keeps its ``extra``."""
        self._submit(key, path, known_sha256, _KEEP_EXTRA)

    def _fail(self, key: str, reason: str) -> None:
        self._batch.fail(key, reason)

    def _delete_raw(self, ekey: bytes) -> None:
        """Remove whatever is stored under an LMDB key (a record whose metadata may be bad)."""
        meta = self._metas.pop(decode_key(ekey), None)
        self._batch.delete(ekey)
        if meta is not None:
            self._extended -= _extended(meta)
            self.result.removed += 1

    def _kept_to_recode(self, skip: set[str]) -> list[str]:
        codec, level = self.settings["codec"], self.settings["level"]
        return [
            k for k, m in self._metas.items() if k not in skip and needs_recode(m, codec, level)
        ]

    def _recode_kept(self, skip: set[str] | None = None) -> None:
        """Encode again, from their stored pixels, the records whose codec or level is not
        the writer's (never by decoding a source again)."""
        assert self._store is not None
        codec, level = self.settings["codec"], self.settings["level"]
        for key in self._kept_to_recode(skip or set()):
            self._metas[key] = recode(self._store, self._batch, key, self._metas[key], codec, level)
            self.result.recoded += 1
            self._progress.advance(key)
            self._maybe_commit()

    # --- the pipeline ---------------------------------------------------------------------

    def _submit(self, key: str, path: str, known_sha256: str | None, extra: Any) -> None:
        options = (
            self.settings["max_side"],
            self.settings["resample"],
            known_sha256,
            self.settings["codec"],
            self.settings["level"] or 0,
            pixel_ceiling(self.settings),
        )
        if self._pool is None:
            self._queue(decode_task(path, key, *options), extra)
            return
        self._window.append((self._pool.apply_async(decode_task, (path, key, *options)), extra))
        self._drain(self._in_flight)

    def _queue(self, outcome: tuple[Any, ...], extra: Any) -> None:
        self._window.append((outcome, extra))
        self._drain(self._in_flight)

    def _drain(self, limit: int) -> None:
        """Store the oldest results until at most ``limit`` are in flight (in add order)."""
        while len(self._window) > limit:
            pending, extra = self._window.popleft()
            outcome = pending if isinstance(pending, tuple) else pending.get()
            self._store_outcome(outcome, extra)

    def _store_outcome(self, outcome: tuple[Any, ...], extra: Any) -> None:
        status, key = outcome[0], outcome[1]
        old = self._metas.get(key)
        if status == "fail":
            if self._errors == "raise":
                raise ImageDecodeError(key, outcome[2])
            self._batch.fail(key, outcome[2])
            if old is not None:  # the source changed into something undecodable
                del self._metas[key]
                self._extended -= _extended(old)
                self._batch.delete(encode_key(key))
        elif status == "same":
            assert old is not None
            self._put(key, {**old, **outcome[2]}, None)
            self.result.touched += 1
        else:
            meta, stored = outcome[2], outcome[3]
            if extra is _KEEP_EXTRA:
                extra = None if old is None else old.get("extra")
            if extra is not None:
                meta["extra"] = extra
            self._put(key, meta, stored.data if isinstance(stored, np.ndarray) else stored)
            if old is None:
                self.result.added += 1
            else:
                self.result.updated += 1
        self._batch.images += 1
        self._progress.advance(key)
        self._maybe_commit()

    def _put(self, key: str, meta: dict, data: Any) -> None:
        """Queue a record; ``data`` None: the stored pixels stay (only the metadata changed)."""
        codec, level = self.settings["codec"], self.settings["level"]
        old = self._metas.get(key)
        self._extended += _extended(meta) - (0 if old is None else _extended(old))
        if data is None and needs_recode(meta, codec, level):
            assert self._store is not None
            meta = recode(self._store, self._batch, key, meta, codec, level)
            self.result.recoded += 1
        elif data is None:
            self._batch.put_meta(key, meta)
        else:
            self._batch.put(key, meta, data)
        self._batch.succeed(key)
        self._metas[key] = meta

    def _array_outcome(self, key: str, image: Any) -> tuple[Any, ...]:
        pixels, mode = to_rgb_array(image)
        height, width = pixels.shape[:2]
        ceiling = pixel_ceiling(self.settings)
        if width * height > ceiling:
            raise ValueError(
                f"image {display_key(key)!r} is {width}x{height} = {width * height} pixels, over "
                f"the store's ceiling of {ceiling} (max_pixels)"
            )
        capped = cap_pixels(pixels, self.settings["max_side"], self.settings["resample"])
        if capped is pixels or np.shares_memory(capped, image):
            capped = capped.copy()  # the caller may change its array before the commit
        decoded = DecodedImage(np.ascontiguousarray(capped), width, height, 1, mode, None)
        meta = pixel_meta(decoded)
        if self.settings["codec"] == RAW:
            return ("ok", key, meta, decoded.pixels)  # as a decoding worker returns it
        stored, fields = encode(decoded.pixels, self.settings["codec"], self.settings["level"])
        return ("ok", key, meta | fields, stored)

    def _maybe_commit(self) -> None:
        if self._batch.bytes >= self._limits[0] or self._batch.images >= self._limits[1]:
            self._batch.commit()

    def _set_format_version(self, final: bool) -> None:
        manifest = self._batch.manifest
        if self._extended > 0:
            manifest["format_version"] = EXTENDED_FORMAT_VERSION
        elif final and self.settings["codec"] == RAW:
            manifest["format_version"] = FORMAT_VERSION  # every record is raw: version 2
        elif self.settings["codec"] != RAW or manifest["format_version"] != FORMAT_VERSION:
            manifest["format_version"] = COMPRESSED_FORMAT_VERSION

    # --- ending -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the writer of '{self.path}' is closed")

    def _abandon(self) -> None:
        """End without the final commit: what was committed stays; a rebuild's new store goes."""
        self._closed = True
        self._window.clear()
        if self._store is not None:
            self._store.close()
            if self._target != self.path:
                remove_store_dir(self._target)  # the old store stays as it was
        self._release()

    def _release(self) -> None:
        self._lock.release()
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def _extended(meta: dict) -> int:
    """1 for a record that needs format version 4 (an ``extra``, or written from an array)."""
    return int("extra" in meta or not has_source(meta))


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise TypeError(f"a key must be a str, got {type(key).__name__}")
    problem = key_problem(key)
    if problem is not None:
        raise ValueError(f"key {display_key(key)!r} cannot be stored: {problem}")
