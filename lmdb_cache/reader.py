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
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lmdb
import numpy as np

from . import environment
from .codecs import RAW, codec_of, decode_into
from .errors import (
    CorruptRecordError,
    MissingImageError,
    NotACacheError,
    StoreDamagedError,
    damaged,
    key_type_error,
)
from .schema import (
    DB_FAILURES,
    DB_MANIFEST,
    DB_META,
    DB_PIXELS,
    MANIFEST_KEY,
    check_failure,
    check_meta,
    decode_key,
    decode_manifest,
    display_key,
    encode_key,
    foreign_flags,
    unseal,
)

# Readers of this process, so a fork can end their snapshots first.
_READERS: weakref.WeakSet[CacheReader] = weakref.WeakSet()

DEFAULT_SNAPSHOT_SECONDS = 60.0


def _before_fork() -> None:
    for reader in list(_READERS):
        reader._end_snapshot()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork)


@dataclass(frozen=True)
class Record:
    """One cached image.

    Attributes:
        key: The image's key (POSIX path relative to the build's source folder).
        image: ``(height, width, 3)`` uint8 array, upright (EXIF applied), RGB.
        meta: The record's metadata: ``width``, ``height``, ``raw_width``, ``raw_height``,
            ``orientation``, ``scale`` (and ``scale_x``/``scale_y``), source fingerprint and
            pixel checksum. See ``docs/format.md``.
    """

    key: str
    image: np.ndarray
    meta: dict[str, Any]


@dataclass
class _Snapshot:
    txn: lmdb.Transaction
    dbs: dict[bytes, Any]
    manifest: dict[str, Any]
    tracker: environment.ViewTracker
    started: float
    keys: list[str] | None = None
    metas: dict[str, dict[str, Any]] = field(default_factory=dict)


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
        self._snap: _Snapshot | None = None
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

    def _snapshot(self) -> _Snapshot:
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

    def _begin(self) -> _Snapshot:
        shared = self._shared
        try:
            if shared is None or shared.identity != environment.file_identity(self.path):
                # First use in this process, or the store was replaced on disk (a rebuild).
                self._shared = None
                if shared is not None:
                    environment.release(shared)
                shared = self._shared = environment.acquire(self.path, self._lock)
                if self.verify:
                    self._verify_structure(shared)
            else:
                environment.check_data_file(self.path)
            txn = shared.begin_read()
        except BaseException:
            self.close()
            raise
        try:
            snap = self._open_snapshot(shared, txn)
        except BaseException:
            txn.abort()
            self.close()
            raise
        self._snap = snap
        return snap

    def _verify_structure(self, shared: environment.SharedEnv) -> None:
        if shared.verified:
            return
        problems = environment.checked_structure(self.path)
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise StoreDamagedError(
                f"cache '{self.path}' fails LMDB's structural check: "
                + "; ".join(problems[:3])
                + f"{more}; rebuild it with 'build-cache SRC -o {self.path} --rebuild'"
            )
        shared.verified = True

    def _open_snapshot(self, shared: environment.SharedEnv, txn: lmdb.Transaction) -> _Snapshot:
        try:
            dbs = {
                name: shared.env.open_db(name, txn=txn, create=False)
                for name in (DB_MANIFEST, DB_META, DB_PIXELS, DB_FAILURES)
            }
            odd = {name: foreign_flags(dict(db.flags())) for name, db in dbs.items()}
            raw = txn.get(MANIFEST_KEY, db=dbs[DB_MANIFEST])
        except lmdb.NotFoundError:
            raise NotACacheError(
                f"'{self.path}' is an LMDB store without the image cache's databases; "
                f"build one with 'build-cache SRC -o {self.path}'"
            ) from None
        except lmdb.IncompatibleError:
            raise NotACacheError(
                f"'{self.path}' is an LMDB store whose databases were made with other flags "
                f"than an image cache's; build one with 'build-cache SRC -o {self.path}'"
            ) from None
        except lmdb.Error as e:
            raise damaged(self.path, "to open its databases", e) from e
        if any(odd.values()):
            raise NotACacheError(
                f"'{self.path}' is an LMDB store whose databases were made with other flags "
                f"than an image cache's ({odd}); build one with 'build-cache SRC -o {self.path}'"
            )
        if raw is None:
            raise NotACacheError(
                f"cache '{self.path}' has no manifest; rebuild it with 'build-cache SRC -o "
                f"{self.path} --rebuild'"
            )
        manifest = decode_manifest(raw, self.path)
        return _Snapshot(
            txn, dbs, manifest, environment.ViewTracker(shared), started=time.monotonic()
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
    def manifest(self) -> dict[str, Any]:
        """The store's manifest (format, settings, counts) as of this reader's snapshot."""
        return self._snapshot().manifest

    @property
    def settings(self) -> dict[str, Any]:
        """The settings the pixels were made with: ``max_side``, ``resample``, Pillow version."""
        return self.manifest["settings"]

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

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            ekey = encode_key(key)
        except ValueError:
            return False
        snap = self._snapshot()
        try:
            return snap.txn.get(ekey, db=snap.dbs[DB_META]) is not None
        except lmdb.Error as e:
            raise damaged(self.path, f"to look up {key!r}", e) from e

    def failures(self) -> list[tuple[str, str]]:
        """``(key, reason)`` for each source the last build could not store.

        Raises:
            StoreDamagedError: an entry fails its checksum or the schema, or LMDB cannot walk
                the failures database.
        """
        snap = self._snapshot()
        out = []
        try:
            for raw_key, value in snap.txn.cursor(db=snap.dbs[DB_FAILURES]):
                try:
                    entry = check_failure(unseal(value, bytes(raw_key)))
                except ValueError as e:
                    raise StoreDamagedError(
                        f"cache '{self.path}' has a damaged failures entry "
                        f"{decode_key(raw_key)!r} ({e}); re-run 'build-cache SRC -o "
                        f"{self.path}' to record it again"
                    ) from e
                out.append((entry["key"], entry["reason"]))
        except lmdb.Error as e:
            raise damaged(self.path, "to list the failed sources", e) from e
        return sorted(out)

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
        return snap.metas.get(key) or self._load_meta(snap, key)

    def meta_uncached(self, key: str) -> dict[str, Any]:
        """:meth:`meta` without keeping the result: for one pass over many keys (a start-up
        check of every record) that should not hold them all in memory.

        Raises:
            See :meth:`meta`.
        """
        if not isinstance(key, str):
            raise key_type_error(key)
        snap = self._snapshot()
        return snap.metas.get(key) or self._load_meta(snap, key, keep=False)

    def _load_meta(self, snap: _Snapshot, key: str, keep: bool = True) -> dict[str, Any]:
        try:
            ekey = encode_key(key)
        except ValueError:
            raise MissingImageError(key, self.path) from None
        try:
            raw = snap.txn.get(ekey, db=snap.dbs[DB_META])
        except lmdb.Error as e:
            raise CorruptRecordError(key, f"LMDB cannot read its metadata ({e})", self.path) from e
        if raw is None:
            raise MissingImageError(key, self.path)
        if not key.isascii():
            try:
                ekey.decode("utf-8")
            except UnicodeDecodeError:
                raise CorruptRecordError(
                    display_key(key),
                    "its stored key is not valid UTF-8 (build-cache never stores one: the store "
                    "is damaged or was written by something else)",
                    self.path,
                ) from None
        try:
            meta = check_meta(unseal(raw, ekey))
        except ValueError as e:
            raise CorruptRecordError(key, f"metadata: {e}", self.path) from e
        if keep:
            snap.metas[key] = meta
        return meta

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
        meta = snap.metas.get(key) or self._load_meta(snap, key)
        buf = self._stored(snap, key)
        if codec_of(meta) != RAW:
            image = np.empty((meta["height"], meta["width"], 3), dtype=np.uint8)
            self._decompressed(key, meta, buf, image)
            image.flags.writeable = False
            return Record(key=key, image=image, meta=meta)
        # The length is checked before any byte is touched: a damaged length must not send a
        # read past the data.
        if len(buf) != meta["nbytes"]:
            raise CorruptRecordError(
                key,
                f"pixel data is {len(buf)} bytes, metadata says {meta['width']}x{meta['height']}x3"
                f"={meta['nbytes']}",
                self.path,
            )
        if self.verify and zlib.crc32(buf) != meta["checksum"]:
            raise CorruptRecordError(key, "pixel checksum mismatch", self.path)
        flat = np.frombuffer(buf, dtype=np.uint8)
        snap.tracker.track(flat)  # every view and slice made from it keeps it alive
        return Record(key=key, image=flat.reshape(meta["height"], meta["width"], 3), meta=meta)

    def __getitem__(self, key: str) -> Record:
        """The image as an owned, writable array (one copy out of the page cache).

        Raises:
            TypeError: ``key`` is not a str.
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

    def _stored(self, snap: _Snapshot, key: str) -> Any:
        """The stored pixels value of ``key`` (a buffer of the snapshot)."""
        try:
            buf = snap.txn.get(encode_key(key), db=snap.dbs[DB_PIXELS])
        except lmdb.Error as e:
            raise CorruptRecordError(key, f"LMDB cannot read its pixels ({e})", self.path) from e
        if buf is None:
            raise CorruptRecordError(key, "metadata present but pixels missing", self.path)
        return buf

    def _decompressed(self, key: str, meta: dict[str, Any], buf: Any, out: np.ndarray) -> None:
        """A compressed record's pixels into ``out``, every length checked first."""
        if len(buf) != meta["stored_nbytes"]:
            raise CorruptRecordError(
                key,
                f"stored value is {len(buf)} bytes, metadata says {meta['stored_nbytes']}",
                self.path,
            )
        if self.verify and zlib.crc32(buf) != meta["stored_checksum"]:
            raise CorruptRecordError(key, "stored-bytes checksum mismatch", self.path)
        problem = decode_into(buf, meta, out)
        if problem is not None:
            raise CorruptRecordError(key, problem, self.path)
        if self.verify and zlib.crc32(np.ascontiguousarray(out).data) != meta["checksum"]:
            raise CorruptRecordError(key, "pixel checksum mismatch", self.path)

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
            meta = snap.metas.get(key) or self._load_meta(snap, key)
            if (meta["height"], meta["width"], 3) != shape:
                raise ValueError(f"out has shape {out.shape}, image {key!r} changed shape")
            self._decompressed(key, meta, self._stored(snap, key), out)
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

    # --- raw access for validate ------------------------------------------------------------

    def _raw_keys(self, db: bytes) -> Iterator[bytes]:
        snap = self._snapshot()
        for raw_key in snap.txn.cursor(db=snap.dbs[db]).iternext(keys=True, values=False):
            yield bytes(raw_key)

    def _raw_get(self, db: bytes, key: bytes) -> Any:
        snap = self._snapshot()
        return snap.txn.get(key, db=snap.dbs[db])


def open_cache(
    path: str | os.PathLike[str],
    *,
    lock: bool | None = None,
    verify: bool = False,
    snapshot_seconds: float | None = DEFAULT_SNAPSHOT_SECONDS,
) -> CacheReader:
    """Open a cache store for reading. See :class:`CacheReader` for the arguments."""
    return CacheReader(path, lock=lock, verify=verify, snapshot_seconds=snapshot_seconds)
