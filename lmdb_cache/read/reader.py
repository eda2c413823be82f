"""``CacheReader``: the mapping API of a store (keys, records, views, copies into your arrays).

A reader stands on a :class:`~.handle.StoreHandle`, which owns everything per process (the
environment, the snapshot and its renewal, forks, pickling); every read is one trip through
the handle's current snapshot (``snapshot.Snapshot.read``). All workers and ranks of a
machine map the same file, so they share one copy of the pixels in the page cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import MissingImageError, key_type_error
from .facts import StoreFacts
from .handle import DEFAULT_SNAPSHOT_SECONDS, StoreHandle
from .order import StorageOrder
from .raw import RawAccess
from .records import Record


class CacheReader(StoreFacts, StorageOrder):
    """A read-only, per-process, memory-mapped view of a cache store.

    ``reader[key]`` returns a :class:`Record` whose image is an owned, writable copy (one
    memcpy from the page cache). ``reader.view(key)`` returns a read-only array that points
    into the mapped file (no copy); it shows this reader's snapshot until :meth:`refresh`,
    :meth:`close` or a ``fork`` of the process (DataLoader workers starting). The mapping
    stays open while a view lives, so a view never faults, but after those events it may show
    newer bytes.

    A reader is not meant to be shared between threads; give each thread its own.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock: bool | None = None,
        verify: bool = False,
        snapshot_seconds: float | None = DEFAULT_SNAPSHOT_SECONDS,
        readahead: bool = True,
    ) -> None:
        """Open a store and check its format.

        Args:
            path: The store's folder, as written by ``build-cache``.
            lock: None (default) uses LMDB's lock file and falls back to lock-free reading
                on a read-only filesystem; False never locks (only safe with no writer);
                True always locks.
            verify: Check the store's LMDB structure when a process opens it, and each
                image's CRC-32 on read (costs one pass over its bytes).
            snapshot_seconds: Renew the snapshot on the next read once it is this old and no
                view from it is alive, so a long-lived reader does not pin old pages while
                the store is updated. None keeps it until :meth:`refresh`.
            readahead: Let the kernel read around each page fault (its default). False suits a
                store larger than the page cache read in random order: give each batch to
                :meth:`prefetch` first (``CacheDataset`` does), and the device reads each
                record once instead of its neighbours too (docs/sizing.md). It holds for every
                reader of the store in this process.

        Raises:
            CacheNotFoundError: nothing at ``path``.
            NotACacheError: ``path`` is not a store written by this package.
            FormatVersionError: another format version.
            TruncatedStoreError: ``data.mdb`` is shorter than its meta page requires.
            StoreDamagedError: the manifest or LMDB's pages are damaged.
        """
        self.path = os.fspath(path)
        self.verify = verify
        self._handle = StoreHandle(self.path, lock, verify, snapshot_seconds, readahead)
        self.snapshot_seconds = snapshot_seconds
        self._handle.snapshot()

    def __getstate__(self) -> dict[str, Any]:
        return self._handle.state()  # the path and options: each process opens its own

    def __setstate__(self, state: dict[str, Any]) -> None:
        seconds = state.get("snapshot_seconds", DEFAULT_SNAPSHOT_SECONDS)
        self.__init__(  # type: ignore[misc]
            state["path"],
            lock=state["_lock"],
            verify=state["verify"],
            snapshot_seconds=seconds,
            readahead=state.get("readahead", True),
        )

    @property
    def locked(self) -> bool:
        """Whether this process reads with LMDB's lock file (False on read-only storage)."""
        return self._handle.shared.locked

    @property
    def raw(self) -> RawAccess:
        """The store below its records, for integrity tools (see :mod:`.raw`)."""
        return RawAccess(self._handle)

    def refresh(self) -> None:
        """Move to the newest committed state of the store (a rebuilt store included).

        Arrays returned by :meth:`view` before the call may show newer bytes after it.
        """
        self._handle.refresh()

    def close(self) -> None:
        """Release this process's handles. Safe to call twice.

        The mapping stays open while views from this reader live, so they never fault.
        """
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # --- the mapping interface -------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._handle.snapshot().contains(key)

    def failures(self) -> list[tuple[str, str]]:
        """``(key, reason)`` for each source the last build could not store.

        Raises:
            StoreDamagedError: an entry fails its checksum or the schema, or LMDB cannot walk
                the failures database.
        """
        return self._handle.snapshot().failures()

    def meta(self, key: str) -> dict[str, Any]:
        """The metadata of one image without touching its pixels.

        Raises:
            TypeError: ``key`` is not a str.
            MissingImageError: (a ``KeyError``) no such key.
            CorruptRecordError: the metadata fails its checksum or the schema.
        """
        if not isinstance(key, str):
            raise key_type_error(key)
        return self._handle.snapshot().entry(key).meta

    def meta_uncached(self, key: str) -> dict[str, Any]:
        """:meth:`meta` without keeping the result: for one pass over many keys (a start-up
        check of every record) that should not hold them all in memory.

        Raises:
            See :meth:`meta`.
        """
        if not isinstance(key, str):
            raise key_type_error(key)
        return self._handle.snapshot().entry(key, keep=False).meta

    def view(self, key: str) -> Record:
        """The image as a read-only array over the mapped file: no copy, no decode.

        The array shows this reader's snapshot until :meth:`refresh` or :meth:`close` of this
        reader, or the next ``fork`` of the process; while it lives, the snapshot is not
        renewed by itself. A compressed record (``codec: zstd``) cannot be viewed in place: it
        is decompressed into a new read-only array (use ``reader[key]`` for a writable one).

        Raises:
            TypeError: ``key`` is not a str.
            MissingImageError: (a ``KeyError``) no such key.
            CorruptRecordError: metadata and pixel bytes disagree, or (with ``verify``) the
                checksum does not match.
        """
        if not isinstance(key, str):
            raise key_type_error(key)
        image, meta = self._handle.snapshot().read(key, self.verify)
        return Record(key=key, image=image, meta=meta)

    def __getitem__(self, key: str) -> Record:
        """The image as an owned, writable array (one copy out of the page cache).

        Raises:
            TypeError: ``key`` is not a str (a position goes to :meth:`record_at`).
            MissingImageError: (a ``KeyError``) no such key.
            CorruptRecordError: see :meth:`view`.
        """
        if not isinstance(key, str):
            raise key_type_error(key)
        image, meta = self._handle.snapshot().read(key, self.verify, owned=True)
        return Record(key=key, image=image, meta=dict(meta))

    def read_into(self, key: str, out: np.ndarray) -> dict[str, Any]:
        """Copy the image into the caller's array (e.g. a batch slot, pinned or shared).

        Args:
            key: The image key.
            out: A writable uint8 array of the image's shape ``(height, width, 3)``, any
                strides (``tensor.numpy()`` of a torch tensor works); checked before any pixel
                is read.

        Returns:
            The record's metadata.

        Raises:
            TypeError: ``key`` is not a str, or ``out`` is not a writable uint8 numpy array.
            ValueError: ``out`` does not have the image's shape (both are named).
            MissingImageError: (a ``KeyError``) no such key.
            CorruptRecordError: see :meth:`view`.
        """
        if not isinstance(key, str):
            raise key_type_error(key)
        _check_out(out)
        snap = self._handle.snapshot()  # one snapshot for the shape check and the read
        meta = snap.entry(key).meta
        shape = (meta["height"], meta["width"], 3)
        if out.shape != shape:
            raise ValueError(f"out has shape {out.shape}, image {key!r} is {shape}")
        return dict(snap.read(key, self.verify, out=out)[1])

    def get(self, key: str, default: Any = None) -> Record | Any:
        """``reader[key]``, or ``default`` when the key is absent."""
        try:
            return self[key]
        except MissingImageError:
            return default

    def __repr__(self) -> str:
        return f"CacheReader({self.path!r})"

    # --- low-level access, for integrity tools ---------------------------------------------

    def raw_keys(self, database: str | bytes) -> Iterator[bytes]:
        """``reader.raw.keys(database)`` (see :class:`~.raw.RawAccess`)."""
        yield from self.raw.keys(database)

    def raw_value(self, database: str | bytes, key: bytes) -> Any:
        """``reader.raw.value(database, key)`` (see :class:`~.raw.RawAccess`)."""
        return self.raw.value(database, key)


def open_cache(
    path: str | os.PathLike[str],
    *,
    lock: bool | None = None,
    verify: bool = False,
    snapshot_seconds: float | None = DEFAULT_SNAPSHOT_SECONDS,
    readahead: bool = True,
) -> CacheReader:
    """Open a cache store for reading. See :class:`CacheReader` for the arguments."""
    return CacheReader(
        path, lock=lock, verify=verify, snapshot_seconds=snapshot_seconds, readahead=readahead
    )


def _check_out(out: Any) -> None:
    """Raise ``TypeError`` unless ``out`` is a writable uint8 numpy array."""
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8:
        found = out.dtype if isinstance(out, np.ndarray) else type(out).__name__
        raise TypeError(f"out must be a uint8 numpy array, got {found}")
    if not out.flags.writeable:
        raise TypeError("out is read-only; pass a writable array")
