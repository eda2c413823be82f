"""The store below its records, for integrity tools: LMDB keys and values exactly as stored,
and the environment itself (``validate-cache`` walks the first, ``lmdb-cache copy`` copies the
second, the slot statistics of the stress tool read its reader table)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lmdb

from .handle import StoreHandle


class RawAccess:
    """Raw access to the store a reader holds, through that reader's snapshot and process."""

    def __init__(self, handle: StoreHandle) -> None:
        self._handle = handle

    def keys(self, database: str | bytes) -> Iterator[bytes]:
        """The LMDB keys of one of the store's databases (``"manifest"``, ``"meta"``,
        ``"pixels"``, ``"failures"``), exactly as stored.

        Raises:
            ValueError: another database name.
            lmdb.Error: LMDB fails while walking (the store is damaged).
        """
        yield from self._handle.snapshot().raw_keys(database)

    def value(self, database: str | bytes, key: bytes) -> Any:
        """The stored value under ``key`` in ``database`` (a buffer of the snapshot, unchecked
        but for its extent: LMDB never reads past the file for it), or None.

        Raises:
            ValueError: another database name.
            StoreDamagedError: the value would run past the end of data.mdb.
            lmdb.Error: LMDB cannot read it (the store is damaged).
        """
        return self._handle.snapshot().raw_value(database, key)

    def environment(self) -> lmdb.Environment:
        """This process's LMDB environment of the store (read-only; shared by its readers)."""
        return self._handle.shared.env

    def copy_to(self, path: str, compact: bool) -> None:
        """LMDB's own consistent copy (``mdb_env_copy``) of the store's last commit into the
        folder ``path``; ``compact`` leaves out free pages.

        Raises:
            lmdb.Error: the copy failed (a full disk, a damaged page).
        """
        self._handle.shared.env.copy(path, compact=compact)
