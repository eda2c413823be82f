"""Bring an open store up to date with a source folder: plan, decode, commit in batches.

Each transaction holds whole records (metadata and pixels together) plus a manifest that
agrees with them, so a build killed at any moment leaves the last committed state: every
record whole, the manifest marked incomplete, and a re-run resumes from there.
"""

from __future__ import annotations

import multiprocessing.pool
import os
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np

from .codecs import CODEC_FIELDS, DEFAULT_LEVEL, RAW, encode, needs_recode, stored_pixels
from .decoding import run_tasks
from .errors import DiskFullError, StoreDamagedError
from .schema import (
    DB_FAILURES,
    DB_MANIFEST,
    DB_META,
    DB_PIXELS,
    FORMAT_VERSION,
    MANIFEST_KEY,
    check_meta,
    decode_key,
    display_key,
    encode_key,
    failure_key,
    key_problem,
    seal,
    unseal,
)
from .store import WriteStore


class Progress(Protocol):
    """What the builder reports progress to; the CLI passes a tqdm bar."""

    def start(self, total: int) -> None: ...

    def advance(self, key: str) -> None: ...


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Batch:
    """Pending writes and the counts the manifest states, committed together."""

    def __init__(self, store: WriteStore, manifest: dict, failed: set[bytes]) -> None:
        self.store = store
        self.manifest = manifest
        self.sizes: dict[str, int] = {}  # key -> pixel bytes of every record the store holds
        self.failed = failed  # keys of the failures database (LMDB bytes) after these ops
        self.reasons: dict[str, str] = {}  # this build's failures
        self.ops: list[tuple[bytes, bytes, Any]] = []  # value: a buffer, or None to delete
        self.bytes = 0
        self.images = 0
        self.committed_images = 0

    def fail(self, key: str, reason: str) -> None:
        fkey = failure_key(key)
        entry = {"key": display_key(key), "reason": reason}
        self.ops.append((DB_FAILURES, fkey, seal(entry, fkey)))
        self.failed.add(fkey)
        self.reasons[key] = reason

    def succeed(self, key: str) -> None:
        fkey = failure_key(key)
        self.ops.append((DB_FAILURES, fkey, None))
        self.failed.discard(fkey)
        self.reasons.pop(key, None)

    def commit(self, final: bool = False) -> None:
        self.manifest.update(
            images=len(self.sizes),
            total_bytes=sum(self.sizes.values()),
            failed=len(self.failed),
            complete=final,
            updated=now(),
        )
        self.ops.append((DB_MANIFEST, MANIFEST_KEY, seal(self.manifest, MANIFEST_KEY)))
        try:
            self.store.write(self.ops, self.bytes)
        except DiskFullError as e:
            raise DiskFullError(
                f"{e}; {self.committed_images} images are stored and committed, nothing is "
                "damaged: free some space (or build elsewhere with -o) and re-run the same "
                "command, it resumes from there"
            ) from e
        self.committed_images = len(self.sizes)
        self.ops.clear()
        self.bytes = self.images = 0


def _recode(
    store: WriteStore, batch: _Batch, key: str, meta: dict, codec: str, level: int | None
) -> dict:
    """Queue ``key``'s record encoded with ``codec``/``level`` from its stored pixels.

    Raises:
        StoreDamagedError: the stored pixels fail their checks (they are never re-encoded:
            the checksum would then bless damaged pixels).
    """
    ekey = encode_key(key)
    raw = store.get(DB_PIXELS, ekey)
    pixels, problem = (None, "its pixels are missing") if raw is None else stored_pixels(raw, meta)
    if pixels is None:
        raise StoreDamagedError(
            f"record {display_key(key)!r} of cache '{store.path}' cannot be encoded again: "
            f"{problem}; rebuild the cache with 'build-cache SRC -o {store.path} --rebuild'"
        )
    data, fields = encode(pixels, codec, level or DEFAULT_LEVEL)
    new = {k: v for k, v in meta.items() if k not in CODEC_FIELDS} | fields
    batch.ops += [(DB_PIXELS, ekey, data), (DB_META, ekey, seal(new, ekey))]
    batch.bytes += len(data)
    batch.images += 1
    return new


def _stored_records(store: WriteStore) -> tuple[dict[str, dict], set[bytes], set[bytes]]:
    """What a store holds: valid metadata by key, every record key, every failure key.

    A record whose metadata fails its check is left out of the first, so it is decoded again.
    """
    metas = {}
    for raw_key, value in store.read_all(DB_META):
        try:
            metas[decode_key(raw_key)] = check_meta(unseal(value, raw_key))
        except ValueError:
            continue
    records = set(store.keys(DB_META)) | set(store.keys(DB_PIXELS))
    return metas, records, set(store.keys(DB_FAILURES))


def _plan(
    store: WriteStore, source: str, keys: list[str], batch: _Batch, result: Any
) -> tuple[dict[str, dict], list[tuple[str, str | None]]]:
    """Queue what is known before decoding (removals, unusable names); return the records
    the store keeps and the sources to decode."""
    metas, records, failed = _stored_records(store)
    # Records of removed sources go, and so does any record under a key no source could have
    # (a damaged or crafted store): its source is then decoded again.
    wanted = {encode_key(k) for k in keys if key_problem(k) is None}
    for ekey in sorted(records - wanted):
        batch.ops += [(DB_META, ekey, None), (DB_PIXELS, ekey, None)]
        if decode_key(ekey) in metas:
            result.removed += 1
    for fkey in sorted(failed - {failure_key(k) for k in keys}):
        batch.ops.append((DB_FAILURES, fkey, None))
        failed.discard(fkey)
    batch.failed = failed
    metas = {key: meta for key, meta in metas.items() if encode_key(key) in wanted}
    batch.sizes = {key: meta["nbytes"] for key, meta in metas.items()}
    batch.committed_images = len(batch.sizes)
    tasks: list[tuple[str, str | None]] = []
    for key in keys:
        problem = key_problem(key)
        if problem is not None:
            batch.fail(key, problem)
            continue
        meta = metas.get(key)
        if meta is not None:
            try:
                st = os.stat(os.path.join(source, key))
            except OSError as e:
                batch.fail(key, f"unreadable: {e.strerror or e}")
                continue
            if (st.st_size, st.st_mtime_ns) == (meta["source_size"], meta["source_mtime_ns"]):
                result.unchanged += 1
                continue
        tasks.append((key, meta["source_sha256"] if meta else None))
    return metas, tasks


def update(
    store: WriteStore,
    source: str,
    keys: list[str],
    settings: dict,
    manifest: dict,
    pool: multiprocessing.pool.Pool | None,
    workers: int,
    limits: tuple[int, int],
    progress: Progress,
    result: Any,
) -> None:
    batch = _Batch(store, manifest, set())
    metas, tasks = _plan(store, source, keys, batch, result)
    codec, level = settings.get("codec", RAW), settings.get("level")
    decoding = {key for key, _ in tasks}
    # Records kept as they are but stored in another codec (or level): encoded again from
    # their stored pixels, never by decoding the sources again.
    recode = [k for k, m in metas.items() if k not in decoding and needs_recode(m, codec, level)]
    progress.start(len(tasks) + len(recode))
    for key in recode:
        metas[key] = _recode(store, batch, key, metas[key], codec, level)
        result.recoded += 1
        progress.advance(key)
        if batch.bytes >= limits[0] or batch.images >= limits[1]:
            batch.commit()
    for outcome in run_tasks(tasks, source, settings, pool, workers):
        status, key = outcome[0], outcome[1]
        ekey = encode_key(key)  # tasks hold only keys that encode
        if status == "ok":
            meta, stored = outcome[2], outcome[3]
            if key in metas:
                result.updated += 1
            else:
                result.added += 1
            data = stored.data if isinstance(stored, np.ndarray) else stored
            batch.ops += [(DB_PIXELS, ekey, data), (DB_META, ekey, seal(meta, ekey))]
            batch.succeed(key)
            batch.sizes[key] = meta["nbytes"]
            metas[key] = meta
            batch.bytes += len(data)
        elif status == "same":
            meta = {**metas[key], **outcome[2]}
            if needs_recode(meta, codec, level):
                meta = _recode(store, batch, key, meta, codec, level)
                result.recoded += 1
            else:
                batch.ops.append((DB_META, ekey, seal(meta, ekey)))
            metas[key] = meta
            result.touched += 1
        else:
            batch.fail(key, outcome[2])
            if key in metas:
                # The source changed into something undecodable: its old pixels are stale.
                batch.ops += [(DB_META, ekey, None), (DB_PIXELS, ekey, None)]
                del metas[key]
                batch.sizes.pop(key, None)
        batch.images += 1
        progress.advance(key)
        if batch.bytes >= limits[0] or batch.images >= limits[1]:
            batch.commit()
    if codec == RAW:  # every record is raw now: readable by version-2 code again
        manifest["format_version"] = FORMAT_VERSION
    batch.commit(final=True)
    result.failures = sorted((display_key(k), r) for k, r in batch.reasons.items())
    result.images = len(batch.sizes)
    result.total_bytes = sum(batch.sizes.values())
