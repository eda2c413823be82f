"""Read-only access to a cache store, safe in DataLoader workers and across ranks.

Each process opens its own LMDB environment on first use (the process id is checked on every
access; see ``environment``), so a reader created in the main process can be handed to
``fork``, ``spawn`` or ``forkserver`` workers. Every process maps the same file, so all
workers and ranks share one copy of the pixels in the page cache.

A reader reads from one snapshot (an LMDB read transaction). A snapshot pins the pages it can
see: while it lives, a build updating the store cannot reuse them and the file grows. So a
snapshot is renewed by :meth:`CacheReader.refresh`, and by itself on the next read once it is
older than ``snapshot_seconds`` and no view handed out from it is alive.

Fork: just before a ``fork`` every reader of the process ends its snapshot (closing an
environment that still owns a read transaction in the child would free the parent's reader
slot); the child then closes the inherited environments and opens its own on first use.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterator
from typing import Any

import lmdb
import numpy as np

from . import environment
from .codecs import RAW, codec_of
from .errors import (
    CacheError,
    MissingImageError,
    damaged,
    key_type_error,
)
from .records import Record
from .schema import (
    DB_META,
    decode_key,
    encode_key,
)
from .settings import check_reproduces
from .snapshot import Snapshot, decompress_checked, open_snapshot, verify_structure

# Readers of this process, so a fork can end their snapshots first.
_READERS: weakref.WeakSet[CacheReader] = weakref.WeakSet()

DEFAULT_SNAPSHOT_SECONDS = 60.0
# Snapshots begun before a build's commits let one be opened (see ``open_snapshot``).
_BEGIN_TRIES = 100


def _before_fork() -> None:
    for reader in list(_READERS):
        reader._end_snapshot()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork)


class CacheReader:
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

        Raises:
            CacheNotFoundError: nothing at ``path``.
            NotACacheError: ``path`` is not a store written by this package.
            FormatVersionError: another format version.
            TruncatedStoreError: ``data.mdb`` is shorter than its meta page requires.
            StoreDamagedError: the manifest or LMDB's pages are damaged.
        """
        if snapshot_seconds is not None and snapshot_seconds < 0:
            raise ValueError(f"snapshot_seconds must be >= 0 or None, got {snapshot_seconds}")
        self.path = os.fspath(path)
        self._lock = lock
        self.verify = verify
        self.snapshot_seconds = snapshot_seconds
        self._pid: int | None = None
        self._shared: environment.SharedEnv | None = None
        self._snap: Snapshot | None = None
        _READERS.add(self)
        self._snapshot()

    # --- per-process opening ---------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "_lock": self._lock,
            "verify": self.verify,
            "snapshot_seconds": self.snapshot_seconds,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"],
            lock=state["_lock"],
            verify=state["verify"],
            snapshot_seconds=state.get("snapshot_seconds", DEFAULT_SNAPSHOT_SECONDS),
        )

    @property
    def locked(self) -> bool:
        """Whether this process reads with LMDB's lock file (False on read-only storage)."""
        self._snapshot()
        assert self._shared is not None
        return self._shared.locked

    def _snapshot(self) -> Snapshot:
        """The current snapshot, opened or renewed as needed (every read goes through here)."""
        snap = self._snap
        if snap is not None and self._pid == os.getpid():
            if (
                self.snapshot_seconds is None
                or snap.tracker.live
                or time.monotonic() - snap.started < self.snapshot_seconds
            ):
                return snap
            self._end_snapshot()
        elif self._pid != os.getpid():
            # A new process (first use, or a fork/spawn child): the after-fork hook closed any
            # inherited environment, so acquire this process's own.
            self._pid = os.getpid()
            self._shared = self._snap = None
        return self._begin()

    def _end_snapshot(self) -> None:
        if self._pid == os.getpid() and self._snap is not None:
            txn = self._snap.txn
            self._snap = None
            txn.abort()  # and drop the last reference: that frees the reader slot

    def _begin(self) -> Snapshot:
        shared = self._shared
        try:
            if shared is None or shared.identity != environment.file_identity(self.path):
                # First use in this process, or the store was replaced on disk (a rebuild).
                self._shared = None
                if shared is not None:
                    environment.release(shared)
                shared = self._shared = environment.acquire(self.path, self._lock)
                if self.verify:
                    verify_structure(self.path, shared)
            else:
                environment.check_data_file(self.path)
        except BaseException:
            self.close()
            raise
        for _ in range(_BEGIN_TRIES):
            try:
                txn = shared.begin_read()
            except BaseException:
                self.close()
                raise
            try:
                snap = open_snapshot(self.path, shared, txn)
            except BaseException:
                txn.abort()
                self.close()
                raise
            if snap is not None:
                self._snap = snap
                return snap
            txn.abort()  # two commits overwrote its meta page meanwhile: begin another
        self.close()
        raise CacheError(
            f"cache '{self.path}': a build committed faster than a snapshot could begin "
            f"({_BEGIN_TRIES} tries); read again"
        )

    def refresh(self) -> None:
        """Move to the newest committed state of the store (a rebuilt store included).

        Arrays returned by :meth:`view` before the call may show newer bytes after it.
        """
        self._end_snapshot()
        self._snapshot()

    def close(self) -> None:
        """Release this process's handles. Safe to call twice.

        The mapping stays open while views from this reader live, so they never fault.
        """
        if self._pid == os.getpid():
            self._end_snapshot()
            if self._shared is not None:
                environment.release(self._shared)
        self._shared = self._snap = None
        self._pid = None

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

    @property
    def info(self) -> dict[str, Any]:
        """The store's manifest as of this reader's snapshot: ``format``, ``format_version``,
        ``settings``, ``images``, ``failed``, ``total_bytes``, ``complete``, ``source_root``,
        ``created``, ``updated``, ``writer`` (``docs/format.md``). A copy: changing it changes
        nothing."""
        return dict(self._snapshot().manifest)

    @property
    def manifest(self) -> dict[str, Any]:
        """The same as :attr:`info` (kept for code written against version 0.1)."""
        return self.info

    @property
    def settings(self) -> dict[str, Any]:
        """The settings the pixels were made with: ``max_side``, ``resample``, Pillow version,
        ``codec`` and ``level``."""
        return dict(self._snapshot().manifest["settings"])

    @property
    def source_root(self) -> str | None:
        """The folder the store was last built from (absolute), or None for a store written
        only from arrays."""
        return self._snapshot().manifest.get("source_root") or None

    def check_settings(self, max_side: int | None = None, resample: str = "bilinear") -> None:
        """Raise unless this store's pixels, capped by ``max_side`` with ``resample``, are
        exactly what decoding the sources with those settings gives.

        A full-size store reproduces any cap (apply ``lmdb_cache.images.cap_pixels`` with the
        same settings after reading); a capped store only its own cap and filter.

        Raises:
            SettingsMismatchError: naming both settings and the ``build-cache`` that fixes it.
        """
        check_reproduces(self._snapshot().manifest["settings"], max_side, resample, self.path)

    def keys(self) -> list[str]:
        """All image keys, sorted.

        Raises:
            StoreDamagedError: LMDB cannot walk the metadata database.
        """
        snap = self._snapshot()
        if snap.keys is None:
            try:
                cursor = snap.txn.cursor(db=snap.dbs[DB_META])
                snap.keys = [decode_key(k) for k in cursor.iternext(keys=True, values=False)]
            except lmdb.Error as e:
                raise damaged(self.path, "to list the keys", e) from e
        return snap.keys

    def __len__(self) -> int:
        snap = self._snapshot()
        return int(snap.txn.stat(snap.dbs[DB_META])["entries"])

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def key_at(self, index: int) -> str:
        """The key at position ``index`` in storage order (the order of :meth:`keys`: keys
        sorted by their UTF-8 bytes); negative positions count from the end.

        Raises:
            TypeError: ``index`` is not an int.
            IndexError: no such position.
        """
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"a position must be an int, got {type(index).__name__}")
        keys = self.keys()
        if not -len(keys) <= index < len(keys):
            raise IndexError(
                f"position {index} is outside the {len(keys)} records of cache '{self.path}'"
            )
        return keys[index]

    def record_at(self, index: int) -> Record:
        """``reader[reader.key_at(index)]``: the record at a position in storage order.

        Raises:
            TypeError, IndexError: see :meth:`key_at`; others: see :meth:`__getitem__`.
        """
        return self[self.key_at(index)]

    def iter_keys(self, chunk: int = 1024) -> Iterator[str]:
        """Every key in storage order, read ``chunk`` at a time (never the whole list at once).

        Each chunk is read from the reader's current snapshot, so a store updated during a
        long walk shows its new state from the next chunk on: a key is never given twice.

        Raises:
            StoreDamagedError: LMDB cannot walk the metadata database.
        """
        last: bytes | None = None
        while True:
            found = self._snapshot().keys_after(last, chunk)
            yield from (decode_key(k) for k in found)
            if len(found) < chunk:
                return
            last = found[-1]

    def items(self) -> Iterator[tuple[str, Record]]:
        """``(key, reader[key])`` for every record in storage order, streamed (see
        :meth:`iter_keys`): one owned image at a time.

        Raises:
            See :meth:`iter_keys` and :meth:`__getitem__`.
        """
        for key in self.iter_keys():
            try:
                yield key, self[key]
            except MissingImageError:
                continue  # removed by an update since its chunk was listed

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            ekey = encode_key(key)
        except ValueError:
            return False
        snap = self._snapshot()
        try:
            return snap.get(DB_META, ekey, key) is not None
        except lmdb.Error as e:
            raise damaged(self.path, f"to look up {key!r}", e) from e

    def failures(self) -> list[tuple[str, str]]:
        """``(key, reason)`` for each source the last build could not store.

        Raises:
            StoreDamagedError: an entry fails its checksum or the schema, or LMDB cannot walk
                the failures database.
        """
        return self._snapshot().failures()

    def meta(self, key: str) -> dict[str, Any]:
        """The metadata of one image without touching its pixels.

        Raises:
            TypeError: ``key`` is not a str.
            MissingImageError: (a ``KeyError``) no such key.
            CorruptRecordError: the metadata fails its checksum or the schema.
        """
        if not isinstance(key, str):
            raise key_type_error(key)
        snap = self._snapshot()
        return snap.metas.get(key) or snap.load_meta(key)

    def meta_uncached(self, key: str) -> dict[str, Any]:
        """:meth:`meta` without keeping the result: for one pass over many keys (a start-up
        check of every record) that should not hold them all in memory.

        Raises:
            See :meth:`meta`.
        """
        if not isinstance(key, str):
            raise key_type_error(key)
        snap = self._snapshot()
        return snap.metas.get(key) or snap.load_meta(key, keep=False)

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
        snap = self._snapshot()
        meta = snap.metas.get(key) or snap.load_meta(key)
        buf = snap.stored(key)
        if codec_of(meta) != RAW:
            image = np.empty((meta["height"], meta["width"], 3), dtype=np.uint8)
            decompress_checked(self.path, key, meta, self.verify, buf, image)
            image.flags.writeable = False
            return Record(key=key, image=image, meta=meta)
        return Record(key=key, image=snap.raw_view(key, meta, buf, self.verify), meta=meta)

    def __getitem__(self, key: str) -> Record:
        """The image as an owned, writable array (one copy out of the page cache).

        Raises:
            TypeError: ``key`` is not a str (a position goes to :meth:`record_at`).
            MissingImageError: (a ``KeyError``) no such key.
            CorruptRecordError: see :meth:`view`.
        """
        if codec_of(self.meta(key)) != RAW:
            record = self.view(key)  # decompressed into a new array already
            record.image.flags.writeable = True
            return Record(key=key, image=record.image, meta=dict(record.meta))
        record = self.view(key)
        image = np.empty_like(record.image)
        np.copyto(image, record.image)
        return Record(key=key, image=image, meta=dict(record.meta))

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
        if not isinstance(out, np.ndarray) or out.dtype != np.uint8:
            found = out.dtype if isinstance(out, np.ndarray) else type(out).__name__
            raise TypeError(f"out must be a uint8 numpy array, got {found}")
        if not out.flags.writeable:
            raise TypeError("out is read-only; pass a writable array")
        meta = self.meta(key)
        shape = (meta["height"], meta["width"], 3)
        if out.shape != shape:
            raise ValueError(f"out has shape {out.shape}, image {key!r} is {shape}")
        if codec_of(meta) != RAW:
            # Straight into ``out``: no intermediate array.
            snap = self._snapshot()
            meta = snap.metas.get(key) or snap.load_meta(key)
            if (meta["height"], meta["width"], 3) != shape:
                raise ValueError(f"out has shape {out.shape}, image {key!r} changed shape")
            decompress_checked(self.path, key, meta, self.verify, snap.stored(key), out)
            return dict(meta)
        record = self.view(key)
        if record.image.shape != shape:  # an update replaced it as the snapshot was renewed
            raise ValueError(f"out has shape {out.shape}, image {key!r} is {record.image.shape}")
        np.copyto(out, record.image)
        return dict(record.meta)

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
        """The LMDB keys of one of the store's databases (``"manifest"``, ``"meta"``,
        ``"pixels"``, ``"failures"``), exactly as stored: what ``validate-cache`` walks.

        Raises:
            ValueError: another database name.
            lmdb.Error: LMDB fails while walking (the store is damaged).
        """
        yield from self._snapshot().raw_keys(database)

    def raw_value(self, database: str | bytes, key: bytes) -> Any:
        """The stored value under ``key`` in ``database`` (a buffer of the snapshot, unchecked),
        or None.

        Raises:
            ValueError: another database name.
            lmdb.Error: LMDB cannot read it (the store is damaged).
        """
        return self._snapshot().raw_value(database, key)


def open_cache(
    path: str | os.PathLike[str],
    *,
    lock: bool | None = None,
    verify: bool = False,
    snapshot_seconds: float | None = DEFAULT_SNAPSHOT_SECONDS,
) -> CacheReader:
    """Open a cache store for reading. See :class:`CacheReader` for the arguments."""
    return CacheReader(path, lock=lock, verify=verify, snapshot_seconds=snapshot_seconds)
