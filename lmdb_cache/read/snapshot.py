"""A reader's snapshot: one LMDB read transaction, the store's databases and manifest, and the
one trip a read takes through them.

A read of ``key`` encodes the key once, loads and checks its metadata (kept as an
:class:`Entry` for the next reads of that key, up to :data:`ENTRIES_KEPT` of them), takes the
stored value once and returns the pixels: a zero-copy view, an owned copy, or a decode into
the caller's array. Every value LMDB hands out was first checked to lie inside the file
(``format.extents``).

Keys by position come from the store's key index (``format.keyindex``), read through the
mapping: one page-cache copy for every process, nothing per key in any of them.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import lmdb
import numpy as np

from ..errors import (
    CorruptRecordError,
    MissingImageError,
    NotACacheError,
    StoreDamagedError,
    damaged,
)
from ..format import codecs
from ..format.extents import ExtentError, Tree, describe
from ..format.keyindex import KeyList, KeyOrder
from ..format.schema import (
    DATABASES,
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
from ..format.settings import check_meta_fits
from . import environment, positions


class Entry(NamedTuple):
    """A record's checked metadata, with what a read of it needs: its LMDB key and codec."""

    ekey: bytes
    meta: dict[str, Any]
    codec: codecs.Codec


# Entries kept per snapshot: enough for a key's reads in a row (its metadata, then its pixels),
# bounded so that a long epoch does not keep a map per key read.
ENTRIES_KEPT = 1024


@dataclass
class Snapshot:
    """What one read transaction sees; cached per snapshot: the key list, the last entries
    read and the store's identity."""

    txn: lmdb.Transaction
    dbs: dict[bytes, Any]
    manifest: dict[str, Any]
    tracker: environment.ViewTracker
    started: float
    tree: Tree
    shared: environment.SharedEnv
    keys: KeyList | None = None
    order: KeyOrder | None = None
    entries: dict[str, Entry] = field(default_factory=dict)
    path: str = ""
    identity: str | None = None  # the store's, once asked (``read.identity``)

    def get(self, db: bytes, ekey: bytes, key: str) -> Any:
        """The stored value under ``ekey`` (a buffer of the snapshot), or None; its extent is
        checked first, so LMDB never reads past the end of the file.

        Raises:
            StoreDamagedError: the value would run past the end of data.mdb.
            lmdb.Error: LMDB reports damage.
        """
        guard(self.tree, self.path, db, ekey, key, self.manifest)
        return self.txn.get(ekey, db=self.dbs[db])

    def entry(self, key: str, keep: bool = True) -> Entry:
        """``key``'s entry: loaded and checked on the first ask of this snapshot, then kept
        (unless ``keep`` is False). The page of its pixels is checked along with it.

        Raises:
            MissingImageError: no such key.
            CorruptRecordError: LMDB cannot read it, or it fails its seal, the schema or the
                store's settings.
            StoreDamagedError: its value would make LMDB read past the file.
        """
        found = self.entries.get(key)
        if found is not None:
            return found
        try:
            ekey = encode_key(key)
        except ValueError:
            raise MissingImageError(key, self.path) from None
        try:
            raw = self.get(DB_META, ekey, key)
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
            meta = check_meta_fits(check_meta(unseal(raw, ekey)), self.manifest["settings"])
            found = Entry(ekey, meta, codecs.of(meta))
        except ValueError as e:
            raise CorruptRecordError(key, f"metadata: {e}", self.path) from e
        if keep:
            guard(self.tree, self.path, DB_PIXELS, ekey, key, self.manifest)
            if len(self.entries) >= ENTRIES_KEPT:
                del self.entries[next(iter(self.entries))]  # the oldest
            self.entries[key] = found
        return found

    def read(
        self, key: str, verify: bool, out: np.ndarray | None = None, owned: bool = False
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """``key``'s pixels and metadata, in one trip.

        Args:
            key: The image key.
            verify: Check the stored bytes' CRC-32 (and, for a codec that decodes, the
                pixels').
            out: Decode into this array (its shape already checked against the entry's).
            owned: With no ``out``: a new writable array, else a read-only view over the
                mapped file where the codec stores the pixels themselves (tracked, so the
                snapshot is kept while it lives) or a new read-only array.

        Raises:
            CorruptRecordError: the value is missing, disagrees with the metadata, or fails a
                checksum. Others: see :meth:`entry`.
        """
        ekey, meta, codec = self.entry(key)
        try:
            buf = self.txn.get(ekey, db=self.dbs[DB_PIXELS])  # its page checked with its entry
        except lmdb.Error as e:
            raise CorruptRecordError(key, f"LMDB cannot read its pixels ({e})", self.path) from e
        if buf is None:
            raise CorruptRecordError(key, "metadata present but pixels missing", self.path)
        # The length is checked before any byte is touched: a damaged length must not send a
        # read past the data.
        length = codec.stored_length(meta)
        if len(buf) != length:
            raise CorruptRecordError(
                key,
                f"stored value is {len(buf)} bytes, metadata says {length} "
                f"({meta['width']}x{meta['height']} pixels, codec {codec.name})",
                self.path,
            )
        if verify and zlib.crc32(buf) != codec.stored_checksum(meta):
            raise CorruptRecordError(key, "checksum mismatch of the stored bytes", self.path)
        view = codec.view(buf, meta) if out is None else None
        if view is not None:
            if owned:
                image = np.empty(view.shape, dtype=np.uint8)
                np.copyto(image, view)
                return image, meta
            self.tracker.track(_owner(view))  # every view and slice made from it keeps it
            return view, meta
        image = np.empty((meta["height"], meta["width"], 3), np.uint8) if out is None else out
        problem = codec.decode_into(buf, meta, image)
        if problem is not None:
            raise CorruptRecordError(key, problem, self.path)
        if verify and zlib.crc32(np.ascontiguousarray(image).data) != meta["checksum"]:
            raise CorruptRecordError(key, "pixel checksum mismatch", self.path)
        if out is None and not owned:
            image.flags.writeable = False
        return image, meta

    def will_need(self, keys: list[str]) -> None:
        """Name the pixels of ``keys`` to the kernel before they are read (absent or damaged
        keys are left to their read, which reports them)."""
        for key in keys:
            try:
                self.tree.will_need(DB_PIXELS, encode_key(key))
            except (ValueError, ExtentError, OSError):
                continue

    def count(self) -> int:
        """How many records the snapshot holds (LMDB's count; no key is read)."""
        return int(self.txn.stat(self.dbs[DB_META])["entries"])

    def contains(self, key: str) -> bool:
        """Whether ``key`` has a record (its metadata is not read).

        Raises:
            StoreDamagedError: LMDB fails to look it up, or its value would run past the file.
        """
        try:
            ekey = encode_key(key)
        except ValueError:
            return False
        try:
            return self.get(DB_META, ekey, key) is not None
        except lmdb.Error as e:
            raise damaged(self.path, f"to look up {key!r}", e) from e

    def keys_after(self, last: bytes | None, chunk: int) -> list[bytes]:
        """Up to ``chunk`` record keys (LMDB bytes) in storage order, after ``last``.

        Raises:
            StoreDamagedError: LMDB cannot walk the metadata database.
        """
        found: list[bytes] = []
        try:
            cursor = self.txn.cursor(db=self.dbs[DB_META])
            more = cursor.first() if last is None else cursor.set_range(last)
            if more and last is not None and cursor.key() == last:
                more = cursor.next()
            while more and len(found) < chunk:
                found.append(bytes(cursor.key()))
                more = cursor.next()
        except lmdb.Error as e:
            raise damaged(self.path, "to list the keys", e) from e
        return found

    def key_list(self) -> KeyList:
        """Every record key in storage order: the store's key index read through the mapping
        when it describes this snapshot's commit, else a walk of the keys (which the
        environment keeps while no commit follows). Valid while the snapshot lives.

        Raises:
            StoreDamagedError: the key index is damaged, or LMDB cannot walk the keys.
        """
        if self.keys is None:
            self.keys = positions.stored_keys(self)
            if self.keys is None:
                self.keys = positions.walked_keys(self)
        return self.keys

    def key_order(self) -> KeyOrder:
        """Which keys this snapshot's positions name (:class:`KeyOrder`): read from the store
        when its index describes this commit (a few bytes: the index itself is not touched),
        else worked out from :meth:`key_list`.

        Raises:
            StoreDamagedError: see :meth:`key_list`.
        """
        if self.order is None:
            self.order = positions.stored_order(self) or self.key_list().order()
        return self.order

    def raw_keys(self, database: str | bytes) -> Iterator[bytes]:
        """The LMDB keys of one of the store's databases, as stored."""
        db = self.dbs[_database(database)]
        for raw_key in self.txn.cursor(db=db).iternext(keys=True, values=False):
            yield bytes(raw_key)

    def raw_value(self, database: str | bytes, key: bytes) -> Any:
        """The stored value under ``key`` in ``database`` (unchecked but its extent), or None."""
        return self.get(_database(database), key, decode_key(key))

    def failures(self) -> list[tuple[str, str]]:
        """``(key, reason)`` of every failures entry, sorted.

        Raises:
            StoreDamagedError: an entry fails its seal or the schema, or LMDB cannot walk them.
        """
        out = []
        try:
            # Keys first, then each value through its extent check (a cursor walking the
            # values would let LMDB touch them unchecked).
            for raw_key in list(self.raw_keys(DB_FAILURES)):
                value = self.get(DB_FAILURES, raw_key, decode_key(raw_key))
                if value is None:
                    continue
                try:
                    entry = check_failure(unseal(value, raw_key))
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


def _owner(array: np.ndarray) -> np.ndarray:
    """The array whose memory ``array`` views (numpy collapses views onto it)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def guard(
    tree: Tree, path: str, db: bytes, ekey: bytes, key: str, manifest: dict[str, Any] | None
) -> None:
    """Raise unless LMDB can read ``ekey`` of ``db`` without touching bytes past the file.

    Raises:
        StoreDamagedError: naming the store, the key and the rebuild command.
    """
    try:
        tree.check(db, ekey)
    except ExtentError as e:
        root = (manifest or {}).get("source_root") or "SRC"
        fix = f"rebuild it with 'build-cache {root} -o {path} --rebuild'"
        raise StoreDamagedError(describe(e, path, db, display_key(key), fix)) from None


def verify_structure(path: str, shared: environment.SharedEnv) -> None:
    """Run LMDB's structural check once per environment of this process.

    Raises:
        StoreDamagedError: naming the first problems and the rebuild command.
    """
    if shared.verified:
        return
    problems = environment.checked_structure(path)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise StoreDamagedError(
            f"cache '{path}' fails LMDB's structural check: "
            + "; ".join(problems[:3])
            + f"{more}; rebuild it with 'build-cache SRC -o {path} --rebuild'"
        )
    shared.verified = True


def open_snapshot(
    path: str, shared: environment.SharedEnv, txn: lmdb.Transaction
) -> Snapshot | None:
    """The store's databases and checked manifest as seen by the read transaction ``txn``;
    None when the meta page of ``txn`` was overwritten by two commits since it began (begin
    another transaction).

    Raises:
        NotACacheError: an LMDB store that is not an image cache.
        StoreDamagedError: LMDB cannot open the databases, or the manifest is damaged.
        FormatVersionError: a format this version does not read.
    """
    try:
        tree = shared.extents.tree(txn.id())
    except ExtentError as e:
        raise StoreDamagedError(f"cache '{path}' is damaged: {e}") from None
    if tree is None:
        return None
    try:
        dbs = {
            name: shared.env.open_db(name, txn=txn, create=False)
            for name in (DB_MANIFEST, DB_META, DB_PIXELS, DB_FAILURES)
        }
        odd = {name: foreign_flags(dict(db.flags())) for name, db in dbs.items()}
        guard(tree, path, DB_MANIFEST, MANIFEST_KEY, "manifest", None)
        raw = txn.get(MANIFEST_KEY, db=dbs[DB_MANIFEST])
    except lmdb.NotFoundError:
        raise NotACacheError(
            f"'{path}' is an LMDB store without the image cache's databases; "
            f"build one with 'build-cache SRC -o {path}'"
        ) from None
    except lmdb.IncompatibleError:
        raise NotACacheError(
            f"'{path}' is an LMDB store whose databases were made with other flags "
            f"than an image cache's; build one with 'build-cache SRC -o {path}'"
        ) from None
    except lmdb.Error as e:
        raise damaged(path, "to open its databases", e) from e
    if any(odd.values()):
        raise NotACacheError(
            f"'{path}' is an LMDB store whose databases were made with other flags "
            f"than an image cache's ({odd}); build one with 'build-cache SRC -o {path}'"
        )
    if raw is None:
        raise NotACacheError(
            f"cache '{path}' has no manifest; rebuild it with 'build-cache SRC -o {path} --rebuild'"
        )
    manifest = decode_manifest(raw, path)
    tracker = environment.ViewTracker(shared)
    return Snapshot(txn, dbs, manifest, tracker, time.monotonic(), tree, shared, path=path)


def _database(name: str | bytes) -> bytes:
    data = name.encode() if isinstance(name, str) else name
    if data not in DATABASES:
        names = ", ".join(db.decode() for db in DATABASES)
        raise ValueError(f"unknown database {name!r}; choose one of {names}")
    return data
