"""Keys in storage order: the positional, streaming and batch half of ``CacheReader``.

Storage order is LMDB's: keys sorted by their UTF-8 bytes. ``reader[int]`` stays a
``TypeError`` (keyed and positional access are distinct); positions go through
:meth:`StorageOrder.key_at` and :meth:`StorageOrder.record_at`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import KeysChangedError, MissingImageError
from ..format.keyindex import KeyList, KeyOrder
from ..format.schema import decode_key
from .handle import StoreHandle
from .records import Record


class StorageOrder:
    """Keys, positions and streams of records for a reader over ``_handle`` (set by it)."""

    _handle: StoreHandle
    path: str

    def __getitem__(self, key: str) -> Record:
        raise NotImplementedError  # the reader's keyed read

    def keys(self) -> list[str]:
        """All image keys, sorted: a new list (a million keys take ~70 MB as ``str``; see
        :meth:`key_list` and :meth:`iter_keys` for what does not).

        Raises:
            StoreDamagedError: the key index is damaged, or LMDB cannot walk the keys.
        """
        return list(self._handle.snapshot().key_list())

    def key_list(self) -> KeyList:
        """All image keys, sorted, held compactly (one blob of their bytes and an offset each,
        ~20 bytes a key): ``keys[i]``, ``len(keys)``, iteration. The arrays are this
        process's own and nothing writes to them, so ``fork`` workers share their pages.

        Raises:
            StoreDamagedError: see :meth:`keys`.
        """
        return self._handle.snapshot().key_list().copy()

    def __len__(self) -> int:
        return self._handle.snapshot().count()

    def __iter__(self) -> Iterator[str]:
        return self.iter_keys()

    def key_order(self) -> KeyOrder:
        """Which keys the positions name now: their count and a digest of the key list. O(1)
        when the store holds its key index (written by every finished build).

        Raises:
            StoreDamagedError: see :meth:`keys`.
        """
        return self._handle.snapshot().key_order()

    def key_at(self, index: int, order: KeyOrder | None = None) -> str:
        """The key at position ``index`` in storage order (the order of :meth:`keys`: keys
        sorted by their UTF-8 bytes); negative positions count from the end.

        Args:
            index: The position.
            order: A :meth:`key_order` taken earlier: raise unless the positions still name
                the same keys (the store may be updated meanwhile).

        Raises:
            TypeError: ``index`` is not an int.
            IndexError: no such position.
            KeysChangedError: the keys are not those of ``order``.
        """
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"a position must be an int, got {type(index).__name__}")
        snap = self._handle.snapshot()
        if order is not None:
            now = snap.key_order()
            if now != order:
                raise KeysChangedError(self.path, order.count, now.count)
        keys = snap.key_list()
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
            found = self._handle.snapshot().keys_after(last, chunk)
            yield from (decode_key(k) for k in found)
            if len(found) < chunk:
                return
            last = found[-1]

    def prefetch(self, keys: list[str]) -> None:
        """Name the records of ``keys`` (a batch about to be read) to the kernel, so that the
        pages of those not in memory are read together, once each, before the first read
        faults on them (``posix_fadvise(WILLNEED)`` on each record's range). Worth it with
        ``readahead=False`` on a store larger than the page cache; keys that are absent or
        damaged are left to their reads, which report them."""
        self._handle.snapshot().will_need(list(keys))

    @property
    def readahead(self) -> bool:
        """Whether the kernel reads around each page fault (see ``readahead`` of the reader)."""
        return self._handle.readahead

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
