"""Pending writes, committed in bounded transactions that each leave the store whole.

Each transaction holds whole records (metadata and pixels together) plus a manifest that
agrees with them, so a writer killed at any moment leaves the last committed state: every
record whole, the manifest marked incomplete, and a re-run resumes from there.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..errors import DiskFullError, StoreDamagedError
from ..format import codecs
from ..format.schema import (
    DB_FAILURES,
    DB_MANIFEST,
    DB_META,
    DB_PIXELS,
    MANIFEST_KEY,
    check_meta,
    decode_key,
    display_key,
    encode_key,
    failure_key,
    seal,
    unseal,
)
from ..format.settings import check_meta_fits
from .index import RecordIndex
from .store import WriteStore


def now() -> str:
    """The UTC time to the microsecond: the manifest's stamp. Writers before the records digest
    wrote whole seconds, so a digest they copied forward never matches their stamp."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class Batch:
    """Pending writes, committed together with a manifest that agrees with them.

    Records go through the batch, which keeps the writer's :class:`~.index.RecordIndex` in
    step, so the manifest of each commit (record count, pixel bytes, format version: the
    index's rule for the records it holds and the writer's ``codec``; the records digest of
    the store's identity) is that of the store the transaction leaves.
    """

    def __init__(
        self, store: WriteStore, manifest: dict, failed: set[bytes], index: RecordIndex, codec: str
    ) -> None:
        self.store = store
        self.manifest = manifest
        self.index = index
        self.codec = codec
        self.failed = failed  # keys of the failures database (LMDB bytes) after these ops
        self.reasons: dict[str, str] = {}  # this writer's failures
        self.ops: list[tuple[bytes, bytes, Any]] = []  # value: a buffer, or None to delete
        self.bytes = 0
        self.images = 0
        self.committed_images = len(index)

    def fail(self, key: str, reason: str) -> None:
        fkey = failure_key(key)
        entry = {"key": display_key(key), "reason": reason}
        self.ops.append((DB_FAILURES, fkey, seal(entry, fkey)))
        self.failed.add(fkey)
        self.reasons[key] = reason

    def drop_failures(self, keep: set[bytes]) -> None:
        """Queue the removal of every failures entry whose key is not in ``keep``."""
        for fkey in sorted(self.failed - keep):
            self.ops.append((DB_FAILURES, fkey, None))
            self.failed.discard(fkey)

    def succeed(self, key: str) -> None:
        fkey = failure_key(key)
        if fkey in self.failed:
            self.ops.append((DB_FAILURES, fkey, None))
            self.failed.discard(fkey)
        self.reasons.pop(key, None)

    def put(self, key: str, meta: dict, data: Any) -> None:
        """Queue a whole record: its pixels (raw or encoded) and its sealed metadata."""
        ekey = encode_key(key)
        self.ops += [(DB_PIXELS, ekey, data), (DB_META, ekey, seal(meta, ekey))]
        self.index.put(key, meta)
        self.index.stored.add(ekey)
        self.bytes += len(data)

    def put_meta(self, key: str, meta: dict) -> None:
        """Queue new metadata for a record whose pixels stay as stored."""
        ekey = encode_key(key)
        self.ops.append((DB_META, ekey, seal(meta, ekey)))
        self.index.put(key, meta)

    def delete(self, ekey: bytes) -> dict | None:
        """Queue the removal of a record (both halves) under its LMDB key; its metadata (None
        for a damaged record)."""
        self.ops += [(DB_META, ekey, None), (DB_PIXELS, ekey, None)]
        self.index.stored.discard(ekey)
        return self.index.pop(decode_key(ekey))

    def commit(self, final: bool = False) -> None:
        self.manifest.update(
            failed=len(self.failed),
            complete=final,
            **self.index.manifest_fields(self.codec, now()),
        )
        self.ops.append((DB_MANIFEST, MANIFEST_KEY, seal(self.manifest, MANIFEST_KEY)))
        try:
            self.store.write(self.ops, self.bytes, self.manifest["updated"] if final else None)
        except DiskFullError as e:
            raise DiskFullError(
                f"{e}; {self.committed_images} images are stored and committed, nothing is "
                "damaged: free some space (or build elsewhere with -o) and re-run the same "
                "command, it resumes from there"
            ) from e
        self.committed_images = len(self.index)
        self.ops.clear()
        self.bytes = self.images = 0


def recode(
    store: WriteStore, batch: Batch, key: str, meta: dict, codec: str, level: int | None
) -> dict:
    """Queue ``key``'s record encoded with ``codec``/``level`` from its stored pixels.

    Raises:
        StoreDamagedError: the stored pixels fail their checks (they are never re-encoded:
            the checksum would then bless damaged pixels).
    """
    raw = store.get(DB_PIXELS, encode_key(key))
    pixels, problem = (
        (None, "its pixels are missing") if raw is None else codecs.stored_pixels(raw, meta)
    )
    if pixels is None:
        raise StoreDamagedError(
            f"record {display_key(key)!r} of cache '{store.path}' cannot be encoded again: "
            f"{problem}; rebuild the cache with 'build-cache SRC -o {store.path} --rebuild'"
        )
    data, fields = codecs.get(codec).encode(pixels, level)
    new = {k: v for k, v in meta.items() if k not in codecs.of(meta).fields} | fields
    batch.put(key, new, data)
    batch.images += 1
    return new


def stored_records(
    store: WriteStore, settings: dict
) -> tuple[dict[str, dict], set[bytes], set[bytes]]:
    """What a store holds: valid metadata by key, every record key, every failure key.

    A record whose metadata fails its checks (its seal, the schema, or the store's
    ``settings``: ``format.settings.check_meta_fits``) is left out of the first.
    """
    metas = {}
    for raw_key, value in store.read_all(DB_META):
        try:
            metas[decode_key(raw_key)] = check_meta_fits(
                check_meta(unseal(value, raw_key)), settings
            )
        except ValueError:
            continue
    records = set(store.keys(DB_META)) | set(store.keys(DB_PIXELS))
    return metas, records, set(store.keys(DB_FAILURES))
