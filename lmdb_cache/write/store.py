"""The write side of a store: one LMDB environment, its named databases, map growth, and the
atomic replacement of a store by a rebuilt one.

Only ``writer`` uses it. The map starts at ``MIN_MAP_SIZE`` and grows ahead of each
transaction (or when LMDB reports it full, replaying the transaction whole), so a build never
needs to know its final size. A rebuild writes a new environment beside the store and then
puts it in the store's place in one step (:func:`replace_store`), so it works whatever state
the old files are in and readers of the old store keep their snapshot.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
from pathlib import Path

import lmdb

from ..errors import CacheError, DiskFullError, NotACacheError, StoreDamagedError
from ..format.keyindex import KEYS_KEY, ORDER_KEY, pack_index
from ..format.lmdbfile import check_data_file, structure_problems
from ..format.schema import (
    DATABASES,
    DB_MANIFEST,
    DB_META,
    MAX_DBS,
    MAX_READERS,
    foreign_flags,
)
from .locking import LOCK_NAME

MIN_MAP_SIZE = 1 << 30
MAX_MAP_GROWTH = 1 << 40
# The files a store folder may hold; anything else in it is the user's and is never deleted.
STORE_FILES = ("data.mdb", "lock.mdb", LOCK_NAME)


def _damaged(path: str, detail: str) -> StoreDamagedError:
    return StoreDamagedError(
        f"cache '{path}' is damaged ({detail}); an update cannot continue on it: rebuild it "
        f"with 'build-cache SRC -o {path} --rebuild' (the damaged store is replaced only once "
        "the new one is complete)"
    )


class WriteStore:
    """A writable environment with the map grown on demand and batched commits.

    Opening an existing store first checks that ``data.mdb`` is as long as its meta pages
    require and that LMDB's structure is sound: updating a damaged store could spread the
    damage (a bad free list hands out live pages).

    Raises:
        TruncatedStoreError, StoreDamagedError: the existing store is damaged.
        CacheError: LMDB cannot open it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        if os.path.exists(os.path.join(path, "data.mdb")):
            check_data_file(path)
            problems = structure_problems(path)
            if problems:
                more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
                raise _damaged(path, f"LMDB's structural check: {problems[0]}{more}")
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            self.env = lmdb.open(
                path,
                map_size=MIN_MAP_SIZE,
                max_dbs=MAX_DBS,
                max_readers=MAX_READERS,
                subdir=True,
                readahead=False,
            )
        except (lmdb.Error, OSError) as e:
            hint = ""
            if "already open" in str(e):
                hint = "; close this process's readers of it (reader.close()) before building"
            raise CacheError(f"cannot open '{path}' for writing: {e}{hint}") from e
        # Slots of readers that died without closing pin old pages: the free space a build
        # could reuse would otherwise grow the file.
        self.env.reader_check()
        try:
            used = self._used_bytes()
            if self.env.info()["map_size"] < 2 * used:
                self.env.set_mapsize(max(2 * used, MIN_MAP_SIZE))
            self.dbs = {name: self.env.open_db(name) for name in DATABASES}
            odd = {name: foreign_flags(dict(db.flags())) for name, db in self.dbs.items()}
            if any(odd.values()):
                raise lmdb.IncompatibleError(f"databases with other flags: {odd}")
        except lmdb.IncompatibleError as e:
            self.env.close()
            raise NotACacheError(
                f"'{path}' is an LMDB store whose databases were made with other flags than an "
                "image cache's; choose another -o"
            ) from e
        except lmdb.Error as e:
            self.env.close()
            raise _damaged(path, f"LMDB: {e}") from e

    def _used_bytes(self) -> int:
        return (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]

    def ensure_room(self, nbytes: int) -> None:
        """Grow the map ahead of a transaction that writes about ``nbytes``."""
        map_size = self.env.info()["map_size"]
        needed = self._used_bytes() + 2 * nbytes + (64 << 20)
        if needed > map_size:
            self.env.set_mapsize(max(needed, min(2 * map_size, map_size + MAX_MAP_GROWTH)))

    def write(
        self,
        ops: list[tuple[bytes, bytes, bytes | None]],
        nbytes: int,
        index_stamp: str | None = None,
    ) -> None:
        """Apply ``(db, key, value-or-None-to-delete)`` in one transaction, growing the map if
        LMDB reports it full (the transaction is replayed whole, so it lands whole or not at all).

        With ``index_stamp`` (a final commit) the transaction also writes the key index of every
        record key it leaves, bound to that manifest stamp (``format.keyindex``); without, it
        removes any index, which would describe an earlier state.

        Raises:
            DiskFullError: the device ran out of space; the store keeps its last commit.
            StoreDamagedError: LMDB reports damage.
        """
        self.ensure_room(nbytes)
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for db, key, value in ops:
                        if value is None:
                            txn.delete(key, db=self.dbs[db])
                        else:
                            txn.put(key, value, db=self.dbs[db])
                    self._write_index(txn, index_stamp)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(2 * self.env.info()["map_size"])
            except lmdb.Error as e:
                full = no_space(self.path, e, nbytes)
                if full is not None:
                    raise full from e
                raise _damaged(self.path, f"LMDB: {e}") from e

    def _write_index(self, txn: lmdb.Transaction, stamp: str | None) -> None:
        manifest = self.dbs[DB_MANIFEST]
        if stamp is None:
            txn.delete(KEYS_KEY, db=manifest)
            txn.delete(ORDER_KEY, db=manifest)
            return
        cursor = txn.cursor(db=self.dbs[DB_META])
        index, order = pack_index(cursor.iternext(keys=True, values=False), stamp)
        txn.put(KEYS_KEY, index, db=manifest)
        txn.put(ORDER_KEY, order, db=manifest)

    def read_all(self, db: bytes) -> list[tuple[bytes, bytes]]:
        """Every ``(key, value)`` of one database, values copied out of the map."""
        try:
            with self.env.begin() as txn:
                return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self.dbs[db])]
        except lmdb.Error as e:
            raise _damaged(self.path, f"LMDB: {e}") from e

    def keys(self, db: bytes) -> list[bytes]:
        """Every key of one database (values are not touched)."""
        try:
            with self.env.begin() as txn:
                cursor = txn.cursor(db=self.dbs[db])
                return [bytes(k) for k in cursor.iternext(keys=True, values=False)]
        except lmdb.Error as e:
            raise _damaged(self.path, f"LMDB: {e}") from e

    def is_empty(self) -> bool:
        """Whether no database holds anything (a build killed before its first commit)."""
        with self.env.begin() as txn:
            return all(txn.stat(db)["entries"] == 0 for db in self.dbs.values())

    def get(self, db: bytes, key: bytes) -> bytes | None:
        try:
            with self.env.begin() as txn:
                value = txn.get(key, db=self.dbs[db])
                return None if value is None else bytes(value)
        except lmdb.Error as e:
            raise _damaged(self.path, f"LMDB: {e}") from e

    def clear(self) -> None:
        with self.env.begin(write=True) as txn:
            for db in self.dbs.values():
                txn.drop(db, delete=False)

    def close(self) -> None:
        try:
            self.env.sync(True)
        finally:
            self.env.close()


# --- running out of space -----------------------------------------------------------------------


def no_space(path: str, error: BaseException, nbytes: int) -> DiskFullError | None:
    """A :class:`DiskFullError` naming the device if ``error`` came from a full disk, else None.

    LMDB reports a short write as EIO rather than ENOSPC, so the free space is checked too.
    """
    try:
        vfs = os.statvfs(path)
        free = vfs.f_bavail * vfs.f_frsize
    except OSError:
        free = None
    code = getattr(error, "errno", None)
    if code not in (errno.ENOSPC, errno.EDQUOT) and (free is None or free > 2 * nbytes + (1 << 20)):
        return None
    data_file = os.path.join(path, "data.mdb")
    try:
        written = os.path.getsize(data_file)
    except OSError:
        written = 0
    return DiskFullError(
        f"no space left on {device_of(path)} while writing '{data_file}' "
        f"({written} bytes written, {free if free is not None else 'unknown'} bytes free)"
    )


def device_of(path: str) -> str:
    """'<device> mounted at <mount point>' for the filesystem holding ``path``."""
    real = os.path.realpath(path)
    while not os.path.exists(real):
        real = os.path.dirname(real)
    try:
        dev = os.stat(real).st_dev
        mount = real
        while mount != os.path.dirname(mount) and os.stat(os.path.dirname(mount)).st_dev == dev:
            mount = os.path.dirname(mount)
    except OSError:
        return f"the device holding '{path}'"
    source = "the device"
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 1 and fields[1] == mount:
                    source = fields[0]
    except OSError:
        pass
    return f"{source} mounted at {mount}"


# --- rebuilding beside the store and swapping it in ---------------------------------------------


def rebuild_dir(output: str) -> str:
    """A fresh folder beside ``output`` (same filesystem, so it can be renamed over it)."""
    parent, name = os.path.split(os.path.abspath(output))
    path = os.path.join(parent, f".{name}.rebuild-{os.getpid()}")
    remove_store_dir(path)
    os.mkdir(path)
    return path


def remove_stale_rebuilds(output: str) -> None:
    """Remove the folders of rebuilds that were killed before they finished.

    Call with the store's build lock held: no other build can be writing them then.
    """
    parent, name = os.path.split(os.path.abspath(output))
    for pattern in (f".{name}.rebuild-*", f".{name}.old-*"):
        for path in glob.glob(os.path.join(glob.escape(parent), pattern)):
            remove_store_dir(path)


def remove_store_dir(path: str) -> bool:
    """Delete a store folder's own files and the folder; anything else in it is kept.

    Returns:
        True if the folder is gone.
    """
    for name in STORE_FILES:
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> None:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    Raises:
        OSError: the system or the filesystem cannot (ENOSYS, EINVAL, ENOTSUP...).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def replace_store(new: str, output: str) -> list[str]:
    """Put the complete store at ``new`` in the place of the one at ``output``.

    Readers that already mapped the old store keep reading its (now unlinked) files; every
    store opened afterwards is the new one. Where the system cannot swap two folders in one
    step, the old one is renamed aside first (a reader opening at that instant finds nothing).

    Returns:
        Warnings (e.g. files of the user's left in the old folder).
    """
    try:
        _exchange(new, output)
        old = new
    except OSError:
        parent, name = os.path.split(os.path.abspath(output))
        old = os.path.join(parent, f".{name}.old-{os.getpid()}")
        os.rename(output, old)
        os.rename(new, output)
    if remove_store_dir(old):
        return []
    kept = sorted(set(os.listdir(old)) - set(STORE_FILES))
    return [f"the old store folder held other files ({', '.join(kept)}): they are kept in '{old}'"]


def existing_entries(path: str) -> list[str]:
    """Names in a folder other than a store's own lock files."""
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return [n for n in names if n not in ("lock.mdb", LOCK_NAME)]


def store_exists(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "data.mdb"))
