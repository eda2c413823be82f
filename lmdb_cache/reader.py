"""Read-only access to a cache store, safe in DataLoader workers and across ranks.

Each process opens its own LMDB environment on first use (the process id is checked on every
access), so a reader created in the main process can be handed to ``fork``, ``spawn`` or
``forkserver`` workers. Every process maps the same file, so all workers and ranks share one
copy of the pixels in the page cache.

A reader reads from one snapshot (an LMDB read transaction) until :meth:`CacheReader.refresh`;
a build updating the store meanwhile does not change what it sees.

Fork: LMDB forbids using an environment in a child it did not open, and py-lmdb refuses to
open one twice in a process. So just before a ``fork`` every reader of the process ends its
snapshot (an aborted read transaction in the child would free the parent's reader slot); the
child then closes the inherited environments, which own no transaction any more, and opens its
own on first use. The parent takes a new snapshot on its next read.
"""

from __future__ import annotations

import errno
import os
import threading
import warnings
import weakref
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lmdb
import numpy as np

from .errors import (
    CacheError,
    CacheNotFoundError,
    CorruptRecordError,
    MissingImageError,
    NotACacheError,
)
from .schema import (
    DB_FAILURES,
    DB_MANIFEST,
    DB_META,
    DB_PIXELS,
    MANIFEST_KEY,
    MAX_DBS,
    MAX_READERS,
    check_format,
    check_manifest,
    check_meta,
    decode_key,
    encode_key,
    unpack,
)

# Handles inherited from a parent that could not be closed safely: kept referenced, never used.
_ORPHANS: list[Any] = []
# One environment per store path per process, shared by the readers of that path.
_ENVS: dict[str, list[Any]] = {}  # realpath -> [env, number of readers, locked]
_ENVS_PID = os.getpid()
_ENVS_LOCK = threading.Lock()
# Readers of this process, so a fork can end their snapshots first.
_READERS: weakref.WeakSet[CacheReader] = weakref.WeakSet()


def _before_fork() -> None:
    for reader in list(_READERS):
        reader._end_snapshot()


def _after_fork_in_child() -> None:
    global _ENVS_PID
    for env, *_ in _ENVS.values():
        try:
            env.close()  # owns no transaction (see _before_fork), so the parent is untouched
        except Exception:
            _ORPHANS.append(env)
    _ENVS.clear()
    _ENVS_PID = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _acquire_env(path: str, lock: bool | None) -> tuple[lmdb.Environment, bool]:
    """This process's environment for ``path`` (opened on first use) and whether it locks."""
    global _ENVS_PID
    real = os.path.realpath(path)
    with _ENVS_LOCK:
        if _ENVS_PID != os.getpid():
            _ORPHANS.append(list(_ENVS.values()))
            _ENVS.clear()
            _ENVS_PID = os.getpid()
        entry = _ENVS.get(real)
        if entry is None:
            env, locked = _open_env(path, lock)
            entry = _ENVS[real] = [env, 0, locked]
        entry[1] += 1
        return entry[0], entry[2]


def _release_env(path: str, env: lmdb.Environment) -> None:
    real = os.path.realpath(path)
    with _ENVS_LOCK:
        entry = _ENVS.get(real)
        if entry is None or entry[0] is not env:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _ENVS[real]
            env.close()


def _open_env(path: str, lock: bool | None) -> tuple[lmdb.Environment, bool]:
    if not os.path.exists(path):
        raise CacheNotFoundError(
            f"cache '{path}' does not exist; build it with 'build-cache SRC -o {path}'"
        )
    if not os.path.isfile(os.path.join(path, "data.mdb")):
        raise NotACacheError(
            f"'{path}' holds no LMDB store (no data.mdb); pass the folder build-cache wrote"
        )
    options: dict[str, Any] = dict(
        readonly=True, subdir=True, max_dbs=MAX_DBS, max_readers=MAX_READERS, map_size=0
    )
    if lock is not False:
        try:
            return lmdb.open(path, lock=True, **options), True
        except lmdb.Error as e:
            denied = (errno.EROFS, errno.EACCES, errno.EPERM)
            if (
                lock is True
                or getattr(e, "errno", None) not in denied
                and not isinstance(e, lmdb.ReadonlyError)
            ):
                raise CacheError(f"cannot open cache '{path}': {e}") from e
        warnings.warn(
            f"cache '{path}' is on a read-only location: opened without LMDB's lock file, which "
            "is only safe while no build-cache writes to it",
            stacklevel=4,
        )
    try:
        return lmdb.open(path, lock=False, **options), False
    except lmdb.Error as e:
        raise CacheError(f"cannot open cache '{path}': {e}") from e


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


class CacheReader:
    """A read-only, per-process, memory-mapped view of a cache store.

    ``reader[key]`` returns a :class:`Record` whose image is an owned, writable copy (one
    memcpy from the page cache). ``reader.view(key)`` returns a read-only array that points
    into the mapped file (no copy); it stays valid until :meth:`refresh`, :meth:`close`, or a
    ``fork`` of the process (DataLoader workers starting), which each end the snapshot.

    A reader is not meant to be shared between threads; give each thread its own.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, lock: bool | None = None, verify: bool = False
    ) -> None:
        """Open a store and check its format.

        Args:
            path: The store's folder, as written by ``build-cache``.
            lock: None (default) uses LMDB's lock file and falls back to lock-free reading
                on a read-only filesystem; False never locks (only safe with no writer);
                True always locks.
            verify: Check each image's CRC-32 on read (costs one pass over its bytes).

        Raises:
            CacheNotFoundError: nothing at ``path``.
            NotACacheError: ``path`` is not a store written by this package.
            FormatVersionError: another format version.
        """
        self.path = os.fspath(path)
        self._lock = lock
        self.verify = verify
        self._pid: int | None = None
        self._env: lmdb.Environment | None = None
        self._txn: lmdb.Transaction | None = None
        self._dbs: dict[bytes, Any] = {}
        self._keys: list[str] | None = None
        self._metas: dict[str, dict[str, Any]] = {}
        self._manifest: dict[str, Any] | None = None
        _READERS.add(self)
        self._txn_for()

    # --- per-process opening ---------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_lock": self._lock, "verify": self.verify}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], lock=state["_lock"], verify=state["verify"])  # type: ignore[misc]

    def _txn_for(self) -> lmdb.Transaction:
        if self._pid == os.getpid():
            if self._txn is None:
                self._begin()
            return self._txn  # type: ignore[return-value]
        # A new process (first use, or a fork/spawn child): the after-fork hook closed any
        # inherited environment, so acquire this process's own.
        self._pid = os.getpid()
        self._env = self._txn = None
        self._env, self.locked = _acquire_env(self.path, self._lock)
        try:
            self._begin()
        except BaseException:
            self.close()
            raise
        return self._txn  # type: ignore[return-value]

    def _end_snapshot(self) -> None:
        if self._pid == os.getpid() and self._txn is not None:
            self._txn.abort()
            self._txn = None

    def _begin(self) -> None:
        env = self._env
        assert env is not None
        try:
            txn = env.begin(buffers=True)
        except lmdb.MapResizedError:
            env.set_mapsize(0)  # a writer grew the map: adopt its size
            txn = env.begin(buffers=True)
        try:
            dbs = {
                name: env.open_db(name, txn=txn, create=False)
                for name in (DB_MANIFEST, DB_META, DB_PIXELS, DB_FAILURES)
            }
        except lmdb.NotFoundError:
            txn.abort()
            raise NotACacheError(
                f"'{self.path}' is an LMDB store without the image cache's databases; "
                f"build one with 'build-cache SRC -o {self.path}'"
            ) from None
        raw = txn.get(MANIFEST_KEY, db=dbs[DB_MANIFEST])
        try:
            if raw is None:
                raise NotACacheError(
                    f"cache '{self.path}' has no manifest; rebuild it with build-cache"
                )
            manifest = unpack(raw)
            check_format(manifest, self.path)
            check_manifest(manifest)
        except ValueError as e:
            txn.abort()
            if isinstance(e, CacheError):
                raise
            raise NotACacheError(f"cache '{self.path}' has an unreadable manifest: {e}") from e
        except BaseException:
            txn.abort()
            raise
        self._txn, self._dbs, self._manifest = txn, dbs, manifest
        self._keys = None
        self._metas = {}

    def refresh(self) -> None:
        """Move to the newest committed state of the store.

        Arrays returned by :meth:`view` before the call must not be used after it.
        """
        self._end_snapshot()
        self._txn_for()

    def close(self) -> None:
        """Release this process's handles (views die with them). Safe to call twice."""
        if self._pid == os.getpid():
            self._end_snapshot()
            if self._env is not None:
                _release_env(self.path, self._env)
        self._env = self._txn = None
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
        self._txn_for()
        assert self._manifest is not None
        return self._manifest

    @property
    def settings(self) -> dict[str, Any]:
        """The settings the pixels were made with: ``max_side``, ``resample``, Pillow version."""
        return self.manifest["settings"]

    def keys(self) -> list[str]:
        """All image keys, sorted."""
        txn = self._txn_for()
        if self._keys is None:
            cursor = txn.cursor(db=self._dbs[DB_META])
            self._keys = [decode_key(k) for k in cursor.iternext(keys=True, values=False)]
        return self._keys

    def __len__(self) -> int:
        txn = self._txn_for()
        return int(txn.stat(self._dbs[DB_META])["entries"])

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            ekey = encode_key(key)
        except ValueError:
            return False
        return self._txn_for().get(ekey, db=self._dbs[DB_META]) is not None

    def failures(self) -> list[tuple[str, str]]:
        """``(key, reason)`` for each source the last build could not store."""
        txn = self._txn_for()
        out = []
        for _, value in txn.cursor(db=self._dbs[DB_FAILURES]):
            entry = unpack(value)
            out.append((str(entry.get("key")), str(entry.get("reason"))))
        return sorted(out)

    def meta(self, key: str) -> dict[str, Any]:
        """The metadata of one image without touching its pixels.

        Raises:
            MissingImageError: (a ``KeyError``) no such key.
            CorruptRecordError: the metadata does not pass the schema.
        """
        txn = self._txn_for()
        cached = self._metas.get(key)
        if cached is not None:
            return cached
        try:
            ekey = encode_key(key)
        except ValueError:
            raise MissingImageError(key, self.path) from None
        raw = txn.get(ekey, db=self._dbs[DB_META])
        if raw is None:
            raise MissingImageError(key, self.path)
        try:
            meta = check_meta(unpack(raw))
        except ValueError as e:
            raise CorruptRecordError(key, str(e), self.path) from e
        self._metas[key] = meta
        return meta

    def view(self, key: str) -> Record:
        """The image as a read-only array over the mapped file: no copy, no decode.

        The array is valid until :meth:`refresh` or :meth:`close` of this reader, or the next
        ``fork`` of the process.

        Raises:
            MissingImageError: (a ``KeyError``) no such key.
            CorruptRecordError: metadata and pixel bytes disagree, or (with ``verify``) the
                checksum does not match.
        """
        meta = self.meta(key)
        buf = self._txn_for().get(encode_key(key), db=self._dbs[DB_PIXELS])
        if buf is None:
            raise CorruptRecordError(key, "metadata present but pixels missing", self.path)
        if len(buf) != meta["nbytes"]:
            raise CorruptRecordError(
                key,
                f"pixel data is {len(buf)} bytes, metadata says {meta['width']}x{meta['height']}x3"
                f"={meta['nbytes']}",
                self.path,
            )
        if self.verify and zlib.crc32(buf) != meta["checksum"]:
            raise CorruptRecordError(key, "pixel checksum mismatch", self.path)
        image = np.frombuffer(buf, dtype=np.uint8).reshape(meta["height"], meta["width"], 3)
        return Record(key=key, image=image, meta=meta)

    def __getitem__(self, key: str) -> Record:
        """The image as an owned, writable array (one copy out of the page cache).

        Raises:
            MissingImageError: (a ``KeyError``) no such key.
            CorruptRecordError: see :meth:`view`.
        """
        record = self.view(key)
        image = np.empty_like(record.image)
        np.copyto(image, record.image)
        return Record(key=key, image=image, meta=dict(record.meta))

    def get(self, key: str, default: Any = None) -> Record | Any:
        """``reader[key]``, or ``default`` when the key is absent."""
        try:
            return self[key]
        except MissingImageError:
            return default

    def __repr__(self) -> str:
        return f"CacheReader({self.path!r})"


def open_cache(
    path: str | os.PathLike[str], *, lock: bool | None = None, verify: bool = False
) -> CacheReader:
    """Open a cache store for reading. See :class:`CacheReader` for the arguments."""
    return CacheReader(path, lock=lock, verify=verify)
