"""The write side of a store: one LMDB environment, its named databases, map growth.

Only ``writer`` uses it. The map starts at ``MIN_MAP_SIZE`` and grows ahead of each
transaction (or when LMDB reports it full, replaying the transaction whole), so a build never
needs to know its final size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmdb

from .errors import CacheError
from .schema import (
    DB_FAILURES,
    DB_MANIFEST,
    DB_META,
    DB_PIXELS,
    MANIFEST_KEY,
    MAX_DBS,
    MAX_READERS,
    unpack,
)

MIN_MAP_SIZE = 1 << 30
MAX_MAP_GROWTH = 1 << 40


class WriteStore:
    """A writable environment with the map grown on demand and batched commits."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
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
        used = self._used_bytes()
        if self.env.info()["map_size"] < 2 * used:
            self.env.set_mapsize(max(2 * used, MIN_MAP_SIZE))
        self.dbs = {
            name: self.env.open_db(name) for name in (DB_MANIFEST, DB_META, DB_PIXELS, DB_FAILURES)
        }

    def _used_bytes(self) -> int:
        return (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]

    def ensure_room(self, nbytes: int) -> None:
        """Grow the map ahead of a transaction that writes about ``nbytes``."""
        map_size = self.env.info()["map_size"]
        needed = self._used_bytes() + 2 * nbytes + (64 << 20)
        if needed > map_size:
            self.env.set_mapsize(max(needed, min(2 * map_size, map_size + MAX_MAP_GROWTH)))

    def write(self, ops: list[tuple[bytes, bytes, bytes | None]], nbytes: int) -> None:
        """Apply ``(db, key, value-or-None-to-delete)`` in one transaction, growing the map if
        LMDB reports it full (the transaction is replayed whole, so it lands whole or not at all).
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
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(2 * self.env.info()["map_size"])

    def read_all(self, db: bytes) -> dict[bytes, Any]:
        with self.env.begin() as txn:
            return {bytes(k): unpack(v) for k, v in txn.cursor(db=self.dbs[db])}

    def manifest(self) -> dict | None:
        with self.env.begin() as txn:
            raw = txn.get(MANIFEST_KEY, db=self.dbs[DB_MANIFEST])
        return None if raw is None else unpack(raw)

    def clear(self) -> None:
        with self.env.begin(write=True) as txn:
            for db in self.dbs.values():
                txn.drop(db, delete=False)

    def close(self) -> None:
        self.env.sync(True)
        self.env.close()
