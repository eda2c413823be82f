"""Keys held compactly: a :class:`KeyList` (every key's bytes in one blob, and their end offsets)
and the store's key index, a :class:`KeyList` of every record key written at a build's final
commit under ``b"keys"`` of the manifest database (docs/format.md, "Key index").

A Python list of a million keys costs ~70 MB of ``str`` objects, and every process that touches
them (a DataLoader worker does, through their reference counts) makes its own copy of those
pages. A ``KeyList`` is two numpy arrays: ~20 bytes a key, no object per key. Read through the
mapping, the store's index is one page-cache copy for every process of the machine; copied
into a process (``KeyList.copy``), it stays shared between ``fork`` workers, since nothing
writes to an array's memory when it is read.

The stored index is binary, little-endian::

    b"LCKI"  u32 version  u64 count  u64 blob length  u32 stamp length  stamp (UTF-8)
    zero padding to a multiple of 8 bytes
    u64 end offset of each key in the blob (count of them)
    blob: every key's LMDB bytes, in storage order
    u32 CRC-32 of b"keys" followed by every byte above (as a sealed msgpack value)

``stamp`` is the manifest's ``updated`` stamp of the commit that wrote it: an index whose
stamp differs from the manifest's (a later commit, by this version or an older one) describes
another state of the store and is not used.

Beside it, ``b"keys.order"`` holds the index's :class:`KeyOrder` as a sealed msgpack map
``{"stamp", "count", "digest"}``: a few bytes a process reads to learn which keys the positions
name without touching the index (LMDB's ``get`` faults in every page of a value it returns).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from .schema import decode_key, seal, unseal

KEYS_KEY = b"keys"  # under the manifest database
ORDER_KEY = b"keys.order"  # under the manifest database
_MAGIC = b"LCKI"
_VERSION = 1
_HEAD = struct.Struct("<4sIQQI")
_CRC = struct.Struct("<I")
_ENDS = np.dtype("<u8")


class KeyIndexError(ValueError):
    """A stored key index fails its checks (its CRC-32, its layout or its offsets)."""


@dataclass(frozen=True)
class KeyOrder:
    """Which keys the positions of a key list name: their count and a BLAKE2b-64 digest of the
    list's offsets and bytes. Equal orders name the same key at every position.

    Attributes:
        count: How many keys.
        digest: 16 hex digits.
        stored: Read from the store's index (not worked out from a walk); not compared.
    """

    count: int
    digest: str
    stored: bool = field(default=False, compare=False)


class KeyList(Sequence[str]):
    """Keys as one blob of their UTF-8 bytes and the end offset of each: ``keys[i]`` is a new
    ``str``, and nothing is kept per key.

    Args:
        ends: End offset of each key in ``blob`` (uint64, non-decreasing).
        blob: Every key's bytes, one after another (a uint8 array, or a buffer of a snapshot).
    """

    __slots__ = ("ends", "blob")

    def __init__(self, ends: np.ndarray, blob: Any) -> None:
        self.ends = ends
        self.blob = blob if isinstance(blob, np.ndarray) else np.frombuffer(blob, np.uint8)

    @classmethod
    def from_raw(cls, raw_keys: Iterable[bytes | memoryview]) -> KeyList:
        """A list of LMDB key bytes, in the order given (no object kept per key)."""
        blob = bytearray()
        ends = array("Q")
        for key in raw_keys:
            blob += key
            ends.append(len(blob))
        return cls(np.frombuffer(ends, np.uint64), np.frombuffer(blob, np.uint8))

    @classmethod
    def from_keys(cls, keys: Iterable[str]) -> KeyList:
        """A list of image keys (str), in the order given."""
        return cls.from_raw(k.encode("utf-8", "surrogateescape") for k in keys)

    def __len__(self) -> int:
        return len(self.ends)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return decode_key(self.raw(index))

    def raw(self, index: int) -> bytes:
        """The LMDB bytes of the key at ``index`` (negative counts from the end).

        Raises:
            IndexError: no such position.
        """
        n = len(self.ends)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"position {index} is outside the {n} keys")
        start = int(self.ends[i - 1]) if i else 0
        return self.blob[start : int(self.ends[i])].tobytes()

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    @property
    def nbytes(self) -> int:
        """The memory the list holds (its two arrays)."""
        return int(self.ends.nbytes + self.blob.nbytes)

    def order(self) -> KeyOrder:
        """This list's :class:`KeyOrder` (one pass over its arrays)."""
        digest = hashlib.blake2b(digest_size=8)
        digest.update(np.ascontiguousarray(self.ends, dtype=_ENDS).view(np.uint8).data)
        digest.update(np.ascontiguousarray(self.blob).data)
        return KeyOrder(len(self), digest.hexdigest())

    def copy(self) -> KeyList:
        """The same keys in arrays of this process (a list read through the mapping dies with
        its snapshot)."""
        return KeyList(np.array(self.ends, dtype=np.uint64), np.array(self.blob, dtype=np.uint8))

    def __reduce__(self) -> tuple[Any, ...]:
        return (KeyList, (np.asarray(self.ends), np.asarray(self.blob)))

    def __repr__(self) -> str:
        return f"KeyList({len(self)} keys, {self.nbytes} bytes)"


def pack_index(raw_keys: Iterable[bytes | memoryview], stamp: str) -> tuple[bytearray, bytes]:
    """The stored key index of ``raw_keys`` (LMDB bytes, in storage order) and its order, the
    values of :data:`KEYS_KEY` and :data:`ORDER_KEY`, bound to the manifest stamp ``stamp``."""
    keys = KeyList.from_raw(raw_keys)
    order = keys.order()
    head = {"stamp": stamp, "count": order.count, "digest": order.digest}
    return _pack(keys, stamp), seal(head, ORDER_KEY)


def read_order(value: Any) -> tuple[str, KeyOrder]:
    """The stamp and order of a stored :data:`ORDER_KEY` value.

    Raises:
        KeyIndexError: it fails its seal or is not an order.
    """
    try:
        head = unseal(value, ORDER_KEY)
    except ValueError as e:
        raise KeyIndexError(f"key order: {e}") from None
    if (
        not isinstance(head, dict)
        or not isinstance(head.get("stamp"), str)
        or not isinstance(head.get("count"), int)
        or not isinstance(head.get("digest"), str)
    ):
        raise KeyIndexError(f"key order is not a map of stamp, count and digest: {head!r:.200}")
    return head["stamp"], KeyOrder(head["count"], head["digest"], stored=True)


def _pack(keys: KeyList, stamp: str) -> bytearray:
    stamp_bytes = stamp.encode("utf-8")
    head = _HEAD.pack(_MAGIC, _VERSION, len(keys), len(keys.blob), len(stamp_bytes))
    head += stamp_bytes
    head += b"\0" * (-len(head) % 8)
    ends = np.ascontiguousarray(keys.ends, dtype=_ENDS).view(np.uint8)
    out = bytearray(len(head) + len(ends) + len(keys.blob) + _CRC.size)
    view = memoryview(out)
    view[: len(head)] = head
    view[len(head) : len(head) + len(ends)] = ends.data
    body = len(out) - _CRC.size
    view[len(head) + len(ends) : body] = np.ascontiguousarray(keys.blob).data
    _CRC.pack_into(out, body, zlib.crc32(view[:body], zlib.crc32(KEYS_KEY)))
    view.release()
    return out


def index_stamp(value: Any) -> str | None:
    """The manifest stamp a stored index was written with, read from its head alone (nothing
    else is touched); None when the head is not an index's."""
    view = memoryview(value)
    if len(view) < _HEAD.size:
        return None
    magic, version, _count, _blob, stamp_len = _HEAD.unpack_from(view)
    if magic != _MAGIC or version != _VERSION or _HEAD.size + stamp_len > len(view):
        return None
    try:
        return bytes(view[_HEAD.size : _HEAD.size + stamp_len]).decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_index(value: Any, check: bool = True) -> KeyList:
    """The keys of a stored index, read in place (the list's arrays view ``value``).

    Args:
        value: The stored value (a buffer of a snapshot, or bytes).
        check: Check its CRC-32 (one pass over its bytes) as well as its layout and offsets.

    Raises:
        KeyIndexError: the value is not a whole, intact index.
    """
    view = memoryview(value)
    if len(view) < _HEAD.size + _CRC.size:
        raise KeyIndexError(f"key index is {len(view)} bytes, too short to hold its head")
    magic, version, count, blob_len, stamp_len = _HEAD.unpack_from(view)
    if magic != _MAGIC or version != _VERSION:
        raise KeyIndexError(f"key index starts {bytes(magic)!r} version {version}")
    start = _HEAD.size + stamp_len
    start += -start % 8
    size = start + 8 * count + blob_len + _CRC.size
    if size != len(view):
        raise KeyIndexError(
            f"key index of {count} keys and {blob_len} key bytes should be {size} bytes, "
            f"it is {len(view)}"
        )
    if check:
        body = view[: len(view) - _CRC.size]
        if zlib.crc32(body, zlib.crc32(KEYS_KEY)) != _CRC.unpack_from(view, len(body))[0]:
            raise KeyIndexError("key index fails its CRC-32")
    ends = np.frombuffer(view, _ENDS, count=count, offset=start)
    blob = np.frombuffer(view, np.uint8, count=blob_len, offset=start + 8 * count)
    if count and (
        int(ends[0]) == 0 or int(ends[-1]) != blob_len or bool((ends[1:] <= ends[:-1]).any())
    ):
        raise KeyIndexError("key index's offsets do not cut its blob into non-empty keys")
    return KeyList(ends, blob)


def same_keys(index: Sequence[str] | KeyList, raw_keys: Iterable[bytes]) -> str | None:
    """How a key list differs from ``raw_keys`` (the first difference), or None when equal."""
    n = 0
    for n, raw in enumerate(raw_keys, start=1):
        if n > len(index):
            return f"key {decode_key(raw)!r} is missing from the index"
        held = index.raw(n - 1) if isinstance(index, KeyList) else index[n - 1].encode()
        if held != raw:
            return f"position {n - 1} holds {decode_key(held)!r}, the store {decode_key(raw)!r}"
    if n != len(index):
        return f"the index holds {len(index)} keys, the store {n}"
    return None
