"""``lmdb-cache merge``: join stores (the shards of one build, or several datasets) into one.

N machines each build a shard of one folder (``build-cache SRC --shard I/N -o part_I.lmdb``,
``format.shards``); ``merge_caches`` writes the store a single build of the folder would have:
the same keys, pixels, metadata and checksums, byte for byte (records are copied as stored,
never decoded or encoded again). Stores that are no shard merge the same way, as long as no
key is in two of them.

What is refused, before anything is written: parts whose settings differ (cap, filter,
codec, level, Pillow version, pixel ceiling), naming the parts and the values; shards of
different counts; a shard given twice; shards missing from a complete set; a part whose last
build did not finish. A key held by two parts is refused when the merge meets it.

Every database is streamed in key order, the parts' sorted keys merged, and written with
LMDB's append mode (no page splits, no search), in transactions of about 256 MiB. The output
is written into a hidden folder beside ``output``, validated (structure, every record, every
checksum, as ``copy_cache`` does) and only then renamed into place: ``output`` either holds
the complete store or does not exist.
"""

from __future__ import annotations

import errno
import heapq
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import lmdb

from .._version import __version__
from ..errors import CacheError, DiskFullError, SettingsMismatchError, StoreDamagedError
from ..format.identity import DIGEST_FIELD, RecordsDigest, digest_entry, settings_differences
from ..format.keyindex import KEYS_KEY, ORDER_KEY, pack_index
from ..format.schema import (
    DATABASES,
    DB_FAILURES,
    DB_MANIFEST,
    DB_META,
    DB_PIXELS,
    MANIFEST_KEY,
    MAX_DBS,
    MAX_READERS,
    check_meta,
    decode_key,
    seal,
    unseal,
)
from ..format.shards import SHARD_FIELD, check_shard, shard_text
from ..format.versions import FORMAT_NAME
from ..read.mapping import MADV_POPULATE_WRITE, advise, find_mapping
from ..read.reader import CacheReader, open_cache
from ..reporting import Progress, as_progress
from ..write.commits import now
from ..write.locking import NoBuild
from ..write.store import no_space, remove_store_dir
from .copy import check_destination, put_in_place, work_dir
from .findings import ValidationReport
from .validate import validate_cache

_TXN_BYTES = 256 << 20


class MergeError(CacheError, ValueError):
    """Parts that cannot be merged into one store (the message names them and why)."""


@dataclass
class MergeResult:
    """What ``merge_caches`` wrote."""

    parts: list[str]
    output: str
    images: int
    failed: int
    data_bytes: int  # size of the merged data.mdb
    seconds: float
    shards: int | None  # N when the parts were the N shards of one build
    report: ValidationReport | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "parts": self.parts,
            "output": self.output,
            "images": self.images,
            "failed": self.failed,
            "data_bytes": self.data_bytes,
            "seconds": self.seconds,
            "shards": self.shards,
            "validated": self.report is not None,
            "ok": self.report is None or self.report.ok,
        }


def check_parts(paths: list[str], manifests: list[dict[str, Any]]) -> int | None:
    """Raise unless these parts can be merged; the shard count when they are shards.

    Raises:
        MergeError: an unfinished part, shards of different counts, a shard given twice or
            one missing.
        SettingsMismatchError: parts whose settings differ.
    """
    if len(paths) < 1:
        raise MergeError("nothing to merge: name the stores (the parts) to join")
    for path, manifest in zip(paths, manifests, strict=True):
        if not manifest.get("complete", False):
            raise MergeError(
                f"'{path}' is incomplete: its last build did not finish; finish it (run the "
                "same build-cache again) and merge again"
            )
    for path, manifest in zip(paths[1:], manifests[1:], strict=True):
        differences = settings_differences(manifests[0]["settings"], manifest["settings"])
        if differences:
            shown = "; ".join(
                f"{name}: {values['a']!r} in '{paths[0]}', {values['b']!r} in '{path}'"
                for name, values in differences.items()
            )
            raise SettingsMismatchError(
                f"cannot merge stores built with different settings ({shown}); rebuild the "
                "odd part with the others' settings"
            )
    return _check_shards(paths, manifests)


def _check_shards(paths: list[str], manifests: list[dict[str, Any]]) -> int | None:
    shards: dict[int, list[tuple[int, str]]] = {}
    for path, manifest in zip(paths, manifests, strict=True):
        shard = check_shard(manifest.get(SHARD_FIELD))
        if shard is not None:
            shards.setdefault(shard[1], []).append((shard[0], path))
    if not shards:
        return None
    if len(shards) > 1:
        shown = "; ".join(
            f"of {n}: {', '.join(p for _, p in held)}" for n, held in sorted(shards.items())
        )
        raise MergeError(f"the parts are shards of different splits ({shown}); merge one split")
    ((count, held),) = shards.items()
    seen: dict[int, str] = {}
    for index, path in held:
        if index in seen:
            raise MergeError(
                f"shard {shard_text((index, count))} is given twice: '{seen[index]}' and "
                f"'{path}'; give each shard once"
            )
        seen[index] = path
    missing = [i for i in range(count) if i not in seen]
    if missing:
        names = ", ".join(shard_text((i, count)) for i in missing)
        raise MergeError(
            f"shard(s) {names} missing: the merge would lack their images; build them "
            f"(build-cache SRC --shard I/{count} -o PART) and merge all {count}"
        )
    return count


def _merged_keys(
    parts: list[CacheReader], paths: list[str], db: bytes
) -> Iterator[tuple[bytes, int]]:
    """Every key of ``db`` over the parts, in LMDB's order, with the part holding it.

    Raises:
        MergeError: a key held by two parts.
    """
    streams = [_tagged(part.raw.keys(db), i) for i, part in enumerate(parts)]
    previous: tuple[bytes, int] | None = None
    for key, i in heapq.merge(*streams):
        if previous is not None and previous[0] == key:
            shown = key.decode("utf-8", "replace") if key.startswith(b"\x00") else decode_key(key)
            raise MergeError(
                f"'{shown}' is in both "
                f"'{paths[previous[1]]}' and '{paths[i]}'; a merged store holds one record per "
                "key: merge stores of different images (or the shards of one build)"
            )
        previous = (key, i)
        yield key, i


def _tagged(keys: Iterator[bytes], index: int) -> Iterator[tuple[bytes, int]]:
    for key in keys:
        yield key, index


class _Appender:
    """Puts in key order, with LMDB's append mode, committed every ~256 MiB."""

    def __init__(self, store: _Output) -> None:
        self.store = store
        self.txn: lmdb.Transaction | None = None
        self.pending = 0

    def put(self, db: bytes, key: bytes, value: Any) -> None:
        if self.txn is None:
            self.store.ensure_room(_TXN_BYTES)
            self.txn = self.store.env.begin(write=True)
        self.txn.put(key, value, db=self.store.dbs[db], append=True)
        self.pending += len(value) + len(key)
        if self.pending >= _TXN_BYTES:
            self.commit()

    def commit(self) -> None:
        if self.txn is not None:
            self.txn.commit()
        self.txn, self.pending = None, 0

    def abort(self) -> None:
        if self.txn is not None:
            self.txn.abort()
        self.txn = None


def _copy_records(
    parts: list[CacheReader], paths: list[str], out: _Appender, progress: Progress
) -> tuple[list[bytes], int, int, RecordsDigest]:
    """Stream the meta, pixels and failures databases; returns (the record keys, failed, pixel
    bytes, records digest)."""
    digest = RecordsDigest()
    keys: list[bytes] = []
    total = failed = 0
    for key, i in _merged_keys(parts, paths, DB_META):
        value = parts[i].raw.value(DB_META, key)
        meta = check_meta(unseal(value, key))
        digest.add(key, meta)
        keys.append(key)
        out.put(DB_META, key, value)
    for key, i in _merged_keys(parts, paths, DB_PIXELS):
        value = parts[i].raw.value(DB_PIXELS, key)
        total += len(value)
        out.put(DB_PIXELS, key, value)
        progress.advance(1)
    for key, i in _merged_keys(parts, paths, DB_FAILURES):
        out.put(DB_FAILURES, key, parts[i].raw.value(DB_FAILURES, key))
        failed += 1
    return keys, failed, total, digest


def _manifest(
    manifests: list[dict[str, Any]], images: int, failed: int, total: int, digest: RecordsDigest
) -> dict[str, Any]:
    roots = {os.path.realpath(m["source_root"]) if m.get("source_root") else "" for m in manifests}
    stamp = now()
    return {
        "format": FORMAT_NAME,
        "format_version": max(m["format_version"] for m in manifests),
        "settings": dict(manifests[0]["settings"]),
        "created": stamp,
        "updated": stamp,
        "writer": f"{FORMAT_NAME} {__version__} (merge)",
        "images": images,
        "failed": failed,
        "total_bytes": total,
        "source_root": roots.pop() if len(roots) == 1 else "",
        "complete": True,
        DIGEST_FIELD: digest_entry(digest, stamp),
    }


def merge_caches(
    parts: list[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    validate: bool = True,
    progress: Progress | None = None,
) -> MergeResult:
    """Merge the stores ``parts`` into a new store at ``output`` (see the module docstring).

    Args:
        parts: The stores to join: the N shards of one build, or stores of distinct images.
        output: A path that does not exist yet (or an empty folder).
        validate: Check the merged store (``validate_cache``) before it is put in place.
        progress: Told the number of records, then each one copied.

    Returns:
        A :class:`MergeResult`; ``output`` holds the store.

    Raises:
        MergeError: parts that cannot be merged (see ``check_parts``), or a key in two parts.
        SettingsMismatchError: parts built with different settings.
        FileExistsError: ``output`` holds a store or other files.
        CacheNotFoundError, NotACacheError, FormatVersionError, StoreDamagedError: a part
            is not a store this version reads, or is damaged.
        DiskFullError: the disk filled up (nothing is left at ``output``).
    """
    paths = [os.fspath(p) for p in parts]
    output = os.fspath(output)
    check_destination(output)
    start = time.perf_counter()
    bar = as_progress(progress)
    with ExitStack() as stack:
        readers = []
        for path in paths:
            stack.enter_context(NoBuild(path, None))
            readers.append(stack.enter_context(open_cache(path)))
        manifests = [reader.manifest for reader in readers]
        shards = check_parts(paths, manifests)
        bar.start(sum(m["images"] for m in manifests))
        work = work_dir(output, "merge")
        try:
            images, failed, total = _write(readers, paths, manifests, work, bar)
        except BaseException:
            remove_store_dir(work)
            raise
    try:
        report = validate_cache(work) if validate else None
        if report is not None and not report.ok:
            raise StoreDamagedError(
                f"the merge of {', '.join(paths)} failed validation ({report.problems[0].message}"
                f"); nothing was written to '{output}'; check each part with validate-cache"
            )
        data_bytes = put_in_place(work, output, "merging")
    except BaseException:
        remove_store_dir(work)
        raise
    return MergeResult(
        parts=paths,
        output=output,
        images=images,
        failed=failed,
        data_bytes=data_bytes,
        seconds=time.perf_counter() - start,
        shards=shards,
        report=report,
    )


class _Output:
    """The merged store's environment: mapped for writing (``writemap``: records go straight
    into the file's pages, no copy into LMDB's dirty-page buffers and no ``pwrite`` at
    commit), sized up front to hold every part, synced once at the end, and cut back to its
    last page when closed."""

    def __init__(self, path: str, map_size: int) -> None:
        self.path = path
        self.base: int | None = None  # the map's address, once found
        self.populated = 0  # bytes of the map populated from its start
        self.env = lmdb.open(
            path,
            map_size=map_size,
            max_dbs=MAX_DBS,
            max_readers=MAX_READERS,
            subdir=True,
            readahead=False,
            writemap=True,
            sync=False,
            metasync=False,
        )
        self.dbs = {name: self.env.open_db(name) for name in DATABASES}
        # The file's blocks allocated at once (it keeps its pages: fallocate fills holes):
        # faulting in each new page of the map would otherwise allocate its block on the spot.
        fd = os.open(os.path.join(path, "data.mdb"), os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, map_size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                self.env.close()
                raise DiskFullError(
                    f"the disk of '{path}' has no room for the merged store (up to "
                    f"{map_size >> 20} MiB); free space and merge again"
                ) from e
            # a file system without fallocate: blocks come as pages are written
        finally:
            os.close(fd)

    def ensure_room(self, nbytes: int) -> None:
        """The map holds every part already; fault in, writable, the pages the next ``nbytes``
        will fill, in one call (``MADV_POPULATE_WRITE``) instead of one fault per page."""
        if os.environ.get("LMDB_CACHE_MERGE_POPULATE", "1") == "0":
            return
        if self.base is None:
            found = find_mapping(os.path.join(self.path, "data.mdb"), writable=True)
            self.base = found[0] if found is not None else 0
        if not self.base:
            return
        info = self.env.info()
        psize = self.env.stat()["psize"]
        start = max((info["last_pgno"] + 1) * psize, self.populated)
        end = min((info["last_pgno"] + 1) * psize + 2 * nbytes, info["map_size"])
        if end > start and advise(self.base + start, end - start, MADV_POPULATE_WRITE):
            self.populated = end
        elif end > start:
            self.base = 0  # the kernel cannot: fault page by page

    def close(self) -> None:
        """Sync, close, and give back the file beyond the last page."""
        used = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        self.env.sync(True)
        self.env.close()
        data = os.path.join(self.path, "data.mdb")
        if os.path.getsize(data) > used:
            os.truncate(data, used)


def _write(
    readers: list[CacheReader],
    paths: list[str],
    manifests: list[dict[str, Any]],
    work: str,
    bar: Progress,
) -> tuple[int, int, int]:
    """Write the merged store into ``work``; returns (images, failed, pixel bytes)."""
    # The merged store holds at most what the parts hold: the sum of their files bounds it.
    bound = sum(os.path.getsize(os.path.join(p, "data.mdb")) for p in paths)
    store = _Output(work, bound + bound // 64 + (64 << 20))
    out = _Appender(store)
    try:
        keys, failed, total, digest = _copy_records(readers, paths, out, bar)
        images = len(keys)
        manifest = _manifest(manifests, images, failed, total, digest)
        # The manifest database in key order (append mode): b"keys" < b"keys.order" <
        # b"manifest".
        index, order = pack_index(keys, manifest["updated"])
        del keys
        out.put(DB_MANIFEST, KEYS_KEY, index)
        out.put(DB_MANIFEST, ORDER_KEY, order)
        out.put(DB_MANIFEST, MANIFEST_KEY, seal(manifest, MANIFEST_KEY))
        out.commit()
    except lmdb.Error as e:
        out.abort()
        store.env.close()
        full = no_space(work, e, _TXN_BYTES)
        if full is not None:
            raise full from e
        raise StoreDamagedError(f"merging into '{work}': LMDB: {e}") from e
    except BaseException:
        out.abort()
        store.env.close()
        raise
    store.close()
    return images, failed, total
