"""Write a cache store: :class:`CacheWriter` adds records decoded from files or given as arrays,
each with an optional ``extra`` map; ``build-cache`` (``build``) is one user of it.

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

import os
import time
from typing import Any

import numpy as np

from ..format.schema import check_extra, display_key, key_problem
from ..reporting import NoProgress, Progress
from .commits import Batch, stored_records
from .index import RecordIndex
from .locking import BuildLock
from .pipeline import DecodePipeline
from .results import BuildResult
from .session import WriteSession
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
        self._target = self.path
        self._closed = False
        self._store: WriteStore | None = None
        self._pipeline: DecodePipeline | None = None
        self._lock = BuildLock(self.path)
        try:
            # The pool first: no decoding process inherits the lock or an LMDB environment.
            self._pipeline = DecodePipeline(workers)
            self._lock.acquire()
            remove_stale_rebuilds(self.path)
            self.session = self._open(
                (max_side, resample, codec, level, max_pixels),
                rebuild,
                source_root,
                errors=errors,
                limits=(commit_bytes, commit_images),
                progress=progress or NoProgress(),
            )
        except BaseException:
            self._abandon()
            raise

    def _open(
        self, asked: tuple[Any, ...], rebuild: bool, root: Any, **options: Any
    ) -> WriteSession:
        """The settings, the store (a new one beside it for a rebuild), what it holds, and a
        manifest marked incomplete: a session ready to write."""
        replacing = rebuild and store_exists(self.path)
        self._store, existing = (None, None) if replacing else open_existing(self.path)
        stored = stored_settings(self.path) if replacing else (existing or {}).get("settings")
        warnings = self.result.warnings
        max_side, resample, codec, level, max_pixels = asked
        self.settings = choose_settings(
            (max_side, resample, codec, level),
            stored,
            rebuild,
            replacing,
            self.path,
            warnings,
            max_pixels,
        )
        self.result.settings = self.settings
        if replacing:
            self._target = rebuild_dir(self.path)
        if self._store is None:
            self._store = WriteStore(self._target)
        old_settings = (existing or {}).get("settings", self.settings)
        metas, records, failed = stored_records(self._store, old_settings)
        index = RecordIndex(metas, records)
        if index.damaged:
            warnings.append(
                f"{index.damaged} record(s) of '{self.path}' are damaged (metadata that fails "
                "its checks, or half a record) and are not kept; a build decodes their sources "
                "again"
            )
        root = None if root is None else os.fspath(root)
        manifest = start_manifest(self._store, self.settings, existing, root, warnings, index)
        batch = Batch(self._store, manifest, failed, index, self.settings["codec"])
        assert self._pipeline is not None
        return WriteSession(
            self._store, batch, self._pipeline, self.settings, self.result, **options
        )

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
            ValueError: a key LMDB cannot hold, an array of another shape or over the store's
                pixel ceiling, or an ``extra`` that cannot be stored.
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
            self.session.add_file(key, os.fspath(path), None, extra)
        else:
            self.session.add_array(key, image, extra)

    def remove(self, key: str) -> bool:
        """Delete ``key``'s record (and any failure noted for it); whether there was one."""
        self._check_open()
        return self.session.remove(key)

    def __contains__(self, key: object) -> bool:
        """Whether the store holds ``key`` (adds still decoding not counted)."""
        return key in self.session.index

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
            self.session.finish()
        except BaseException:
            self._abandon()
            raise
        self._closed = True
        try:
            if self._store is not None:
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

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the writer of '{self.path}' is closed")

    def _abandon(self) -> None:
        """End without the final commit: what was committed stays; a rebuild's new store goes."""
        self._closed = True
        if self._pipeline is not None:
            self._pipeline.clear()
        if self._store is not None:
            self._store.close()
            if self._target != self.path:
                remove_store_dir(self._target)  # the old store stays as it was
        self._release()

    def _release(self) -> None:
        self._lock.release()
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise TypeError(f"a key must be a str, got {type(key).__name__}")
    problem = key_problem(key)
    if problem is not None:
        raise ValueError(f"key {display_key(key)!r} cannot be stored: {problem}")
