"""Prove a cache is intact and current. Returns a report; never prints, never dies.

Checks, in order:

1. the files: ``data.mdb`` as long as its meta pages require (a short file is reported, never
   mapped);
2. LMDB's structure, with LMDB's own offline verifier (``lmdb.verify``: plain reads, no
   mapping), while a read snapshot pins the pages it walks;
3. the records: the format and version, that the last build finished, every record's metadata
   checksum and schema, that every key a database lists can also be looked up, every pixel
   length and checksum, every failure entry, the manifest's counts and its records digest (the
   store's identity, ``format.identity``, worked out again from the records walked). Every
   LMDB error met is a problem naming the database and key. When step 2 found damage, this
   walk runs in a child process: if the damage faults it, the report says so and the caller
   lives on;
4. with a source folder: stale entries (changed, missing or new sources; a source recorded as
   failed at build time is a warning, not a problem); with an annotation file: that every
   annotated image is in the cache.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb

from ..annotations import annotated_keys
from ..errors import (
    CacheError,
    CacheNotFoundError,
    FormatVersionError,
    ImageDecodeError,
    NotACacheError,
    StoreDamagedError,
    TruncatedStoreError,
)
from ..format import codecs
from ..format.identity import DIGEST_FIELD, RecordsDigest, digest_problem, stored_digest
from ..format.keyindex import (
    KEYS_KEY,
    ORDER_KEY,
    KeyIndexError,
    index_stamp,
    read_index,
    read_order,
    same_keys,
)
from ..format.lmdbfile import check_data_file
from ..format.schema import (
    DB_FAILURES,
    DB_MANIFEST,
    DB_META,
    DB_PIXELS,
    SOURCE_FIELDS,
    check_failure,
    check_meta,
    decode_key,
    display_key,
    key_problem,
    unseal,
)
from ..format.settings import check_meta_fits
from ..images import read_source, scan_images
from ..read.environment import checked_structure
from ..read.reader import CacheReader
from ..reporting import Progress, as_progress
from .findings import REBUILD, RECOMMIT, UPDATE, Finding, Fixes, ValidationReport
from .isolated import ChildCrashed, call_isolated

__all__ = ["Finding", "ValidationReport", "validate_cache"]


def validate_cache(
    path: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    annotations: str | os.PathLike[str] | None = None,
    checksums: bool = True,
    progress: Progress | Callable[[int, int], Any] | None = None,
) -> ValidationReport:
    """Check a cache store and report every problem found.

    Args:
        path: The store.
        source: The folder it was built from, to find stale entries.
        annotations: A JSON annotation file (``{"images": {"<key>": ...}}``) whose images must
            all be cached.
        checksums: Verify each image's CRC-32 (reads every pixel byte once).
        progress: Told the bytes to checksum, then each record's bytes checked (a plain
            ``(bytes checked, bytes to check)`` callable works too).

    Returns:
        A :class:`ValidationReport`. A damaged store gives problems, never an exception.

    Raises:
        CacheNotFoundError: nothing at ``path``.
        ValueError: ``source`` is not a folder, or ``annotations`` is not a readable annotation
            file (the message names the file).
    """
    path = os.fspath(path)
    report = ValidationReport(path=path)
    annotated = annotated_keys(annotations) if annotations is not None else None
    report.annotations = os.fspath(annotations) if annotations is not None else None
    if source is not None and not Path(source).is_dir():
        raise ValueError(
            f"source '{source}' is not a folder; pass the folder the cache was built from"
        )
    fixes = Fixes(path, os.fspath(source) if source is not None else None)
    try:
        check_data_file(path)
    except CacheNotFoundError:
        raise
    except TruncatedStoreError as e:
        message = str(TruncatedStoreError(path, e.size, e.required, fixes.source))
        report.problems.append(Finding("truncated", None, message))
        return report
    except CacheError as e:
        report.problems.append(Finding("format", None, str(e)))
        return report
    structure = checked_structure(path)
    for problem in structure:
        report.problems.append(
            fixes.finding("lmdb-structure", None, f"LMDB structure: {problem}", REBUILD)
        )
    bar = as_progress(progress)
    if structure:
        try:
            walk = call_isolated(_walk, path, checksums, bar)
        except (ChildCrashed, RuntimeError) as e:
            message = f"reading the records of the damaged store failed ({e})"
            report.problems.append(fixes.finding("unreadable", None, message, REBUILD))
            return report
    else:
        walk = _walk(path, checksums, bar)
    _merge(report, walk, fixes)
    if report.manifest is None:
        return report
    failures = walk["failures"]
    metas = walk["metas"]
    if source is not None:
        report.source = os.fspath(source)
        _check_source(Path(source), path, metas, failures, report, fixes)
    if annotated is not None:
        for key in annotated:
            if key in metas:
                continue
            why = f" (failed at build time: {failures[key]})" if key in failures else ""
            message = f"{key}: annotated in '{annotations}' but not in the cache{why}"
            report.problems.append(Finding("not-cached", key, message))
    return report


def _walk(path: str, checksums: bool, progress: Progress) -> dict[str, Any]:
    """Check every record; returns plain data (it may run in a child process): each problem
    as ``[kind, key, message, fix kind]``."""
    out: dict[str, Any] = {
        "problems": [],
        "warnings": [],
        "manifest": None,
        "metas": {},
        "failures": {},
        "images": 0,
        "checked_bytes": 0,
    }
    try:
        reader = CacheReader(path, snapshot_seconds=None)
    except CacheNotFoundError:
        raise
    except CacheError as e:
        kind = "format" if isinstance(e, (NotACacheError, FormatVersionError)) else "damaged"
        out["problems"].append([kind, None, str(e), None])
        return out
    with reader:
        out["manifest"] = reader.info
        try:
            _RecordWalk(reader, checksums, progress, out).run()
        except CacheError as e:  # e.g. the store was replaced or cut while it was walked
            out["problems"].append(["damaged", None, str(e), None])
    return out


class _RecordWalk:
    """The record checks of :func:`_walk`, one step per method."""

    def __init__(
        self,
        reader: CacheReader,
        checksums: bool,
        progress: Progress,
        out: dict[str, Any],
    ) -> None:
        self.reader = reader
        self.checksums = checksums
        self.progress = progress
        self.out = out
        self.metas: dict[str, dict[str, Any]] = {}

    def problem(self, kind: str, key: str | None, message: str, fix: str | None = REBUILD) -> None:
        self.out["problems"].append([kind, key, message, fix])

    def run(self) -> None:
        meta_keys = self._list(DB_META)
        pixel_keys = self._list(DB_PIXELS)
        for raw_key in sorted(meta_keys):
            self._check_meta(raw_key)
        self.progress.start(sum(codecs.of(m).stored_length(m) for m in self.metas.values() if m))
        done = 0
        for raw_key in sorted(meta_keys | pixel_keys):
            checked = self._check_pixels(raw_key, raw_key in pixel_keys)
            if checked:
                done += checked
                self.progress.advance(checked)
        self.out["checked_bytes"] = done if self.checksums else 0
        self.out["images"] = len(self.metas)
        self._check_failures()
        self._check_manifest()
        self._check_digest()
        self._check_key_index(meta_keys)
        self.out["metas"] = {
            key: {n: m[n] for n in SOURCE_FIELDS if n in m} if m else {}
            for key, m in self.metas.items()
        }

    def _list(self, db: bytes) -> set[bytes]:
        keys: set[bytes] = set()
        last: bytes | None = None
        try:
            for last in self.reader.raw.keys(db):
                keys.add(last)
        except lmdb.Error as e:
            after = f" after key {decode_key(last)!r}" if last is not None else ""
            self.problem(
                "unreadable",
                None,
                f"database '{db.decode()}': LMDB failed while listing its keys{after} "
                f"({type(e).__name__}: {e}); every key past that point is unchecked",
            )
        return keys

    def _get(self, db: bytes, raw_key: bytes) -> tuple[Any, str | None]:
        try:
            return self.reader.raw.value(db, raw_key), None
        except lmdb.Error as e:
            return None, f"{type(e).__name__}: {e}"
        except StoreDamagedError as e:  # its page would make LMDB read past the file
            return None, str(e)

    def _check_meta(self, raw_key: bytes) -> None:
        key = decode_key(raw_key)
        problem = key_problem(key)
        if problem is not None:  # build-cache never stores one: a damaged or crafted key
            name = display_key(key)
            self.problem("bad-key", name, f"{name}: not a valid image key ({problem})")
            self.metas[key] = {}
            return
        raw, error = self._get(DB_META, raw_key)
        if raw is None:
            why = error or "listed by the database but not found by a lookup (a damaged page)"
            self.problem("unreadable", key, f"{key}: database 'meta' cannot read it: {why}")
            self.metas[key] = {}
            return
        try:
            meta = check_meta(unseal(raw, raw_key))
            self.metas[key] = check_meta_fits(meta, self.reader.info["settings"])
        except ValueError as e:
            self.problem("corrupt-meta", key, f"{key}: metadata is corrupt: {e}")
            self.metas[key] = {}

    def _check_pixels(self, raw_key: bytes, listed: bool) -> int:
        """Check one record's pixels; returns the bytes checked."""
        key = decode_key(raw_key)
        meta = self.metas.get(key)
        buf, error = self._get(DB_PIXELS, raw_key) if listed or meta else (None, None)
        if buf is None and (listed or error):
            why = error or "listed by the database but not found by a lookup (a damaged page)"
            self.problem("unreadable", key, f"{key}: database 'pixels' cannot read it: {why}")
            if meta:
                self.metas[key] = {}
            return 0
        if meta is None:
            self.problem("orphan-pixels", key, f"{key}: pixel data without metadata")
            return 0
        if not meta:
            return 0  # its metadata is already a problem
        if buf is None:
            self.problem("missing-pixels", key, f"{key}: metadata without pixel data")
            return 0
        codec = codecs.of(meta)
        length = codec.stored_length(meta)
        if len(buf) != length:  # checked before a byte is read
            self.problem(
                "size-mismatch",
                key,
                f"{key}: pixel data is {len(buf)} bytes, metadata says {length} "
                f"({meta['width']}x{meta['height']} pixels, codec {codec.name})",
            )
            self.metas[key] = {}  # its size is unknown: reported once, left out of the totals
            return 0
        if not self.checksums:
            return len(buf)
        if codec.view(buf, meta) is None:
            # Both checksums: the stored bytes (what the disk holds), then the pixels they
            # decode to (what a reader gets).
            _, problem = codecs.stored_pixels(buf, meta)
            if problem is not None:
                self.problem("checksum", key, f"{key}: compressed pixels are corrupt: {problem}")
        elif zlib.crc32(buf) != meta["checksum"]:
            self.problem("checksum", key, f"{key}: pixel checksum mismatch (data corrupted)")
        return len(buf)

    def _check_failures(self) -> None:
        failures: dict[str, str] = {}
        for raw_key in sorted(self._list(DB_FAILURES)):
            value, error = self._get(DB_FAILURES, raw_key)
            name = display_key(decode_key(raw_key))
            if value is None:
                why = error or "listed by the database but not found by a lookup"
                message = f"{name}: database 'failures' cannot read it: {why}"
                self.problem("unreadable", name, message)
                continue
            try:
                entry = check_failure(unseal(value, raw_key))
            except ValueError as e:
                self.problem("corrupt-failure", name, f"{name}: failure entry is corrupt: {e}")
                continue
            failures[entry["key"]] = entry["reason"]
        self.out["failures"] = failures
        for key, reason in sorted(failures.items()):
            self.out["warnings"].append(
                ["build-failure", key, f"{key}: failed at build time: {reason}"]
            )

    def _check_manifest(self) -> None:
        manifest = self.out["manifest"]
        if not manifest["complete"]:
            self.problem("incomplete", None, "the last build did not finish", UPDATE)
        metas = self.metas.values()
        total = sum(m.get("nbytes", 0) for m in metas)
        if any(not m for m in metas):
            total = manifest["total_bytes"]  # unknown: damaged records are reported on their own
        if manifest["images"] != len(self.metas) or manifest["total_bytes"] != total:
            self.problem(
                "manifest-mismatch",
                None,
                f"manifest says {manifest['images']} images / {manifest['total_bytes']} bytes, "
                f"the store holds {len(self.metas)} / {total}",
                UPDATE,
            )
        failed = len(self.out["failures"])
        if manifest["failed"] != failed:
            self.problem(
                "manifest-mismatch",
                None,
                f"manifest says {manifest['failed']} failed sources, the store lists {failed}",
                UPDATE,
            )

    def _check_digest(self) -> None:
        """The manifest's records digest against the records walked (a forged or stale one
        would give the store a wrong identity)."""
        manifest = self.out["manifest"]
        malformed = digest_problem(manifest)
        if malformed is not None:
            self.problem("identity", None, f"manifest {DIGEST_FIELD} {malformed}", RECOMMIT)
            return
        stored = stored_digest(manifest)
        if stored is None:
            self.out["warnings"].append(
                [
                    "identity",
                    None,
                    f"the manifest holds no {DIGEST_FIELD} for its last commit (written before "
                    "it was kept, or updated by such a writer): readers work out the store's "
                    "identity by reading every record's metadata; the next update writes it",
                ]
            )
            return
        if any(not meta for meta in self.metas.values()):
            return  # damaged records are reported on their own; their hashes are unknown
        if manifest["images"] != len(self.metas):
            return  # a manifest-mismatch already, with the same fix
        walked = RecordsDigest.of(self.metas.items())
        if walked != stored:
            self.problem(
                "identity",
                None,
                f"manifest {DIGEST_FIELD} is {stored.hex()}, the {len(self.metas)} records give "
                f"{walked.hex()}: the store's identity would be wrong (a forged or stale "
                "manifest)",
                RECOMMIT,
            )

    def _check_key_index(self, meta_keys: set[bytes]) -> None:
        """The key index and its order: intact whatever commit wrote them, and, when they
        describe the last commit (readers take keys by position from them), equal to the keys
        walked. Any commit writes them again (:data:`RECOMMIT`: a store no folder built is told
        to commit with ``CacheWriter``, never to run ``build-cache``, which would drop its
        records)."""
        manifest = self.out["manifest"]
        value, error = self._get(DB_MANIFEST, KEYS_KEY)
        keys = None
        if value is None and error is not None:
            self.problem("key-index", None, f"the key index cannot be read: {error}", RECOMMIT)
        elif value is not None:
            try:
                keys = read_index(value)
            except KeyIndexError as e:
                self.problem("key-index", None, f"the key index is damaged: {e}", RECOMMIT)
        order_value, error = self._get(DB_MANIFEST, ORDER_KEY)
        stamp, order = None, None
        if order_value is None and error is not None:
            self.problem("key-index", None, f"the key order cannot be read: {error}", RECOMMIT)
        elif order_value is not None:
            try:
                stamp, order = read_order(order_value)
            except KeyIndexError as e:
                self.problem("key-index", None, f"the key order is damaged: {e}", RECOMMIT)
        if keys is None or index_stamp(value) != manifest.get("updated"):
            return  # none, or an earlier commit's (a writer that keeps none), which readers skip
        if manifest["images"] != len(meta_keys):
            return  # a manifest-mismatch already (readers walk the keys), with the same fix
        if stamp == manifest.get("updated") and order != keys.order():
            self.problem("key-index", None, "the key order disagrees with the key index", RECOMMIT)
        differs = same_keys(keys, sorted(meta_keys))
        if differs is not None:
            self.problem(
                "key-index",
                None,
                f"the key index disagrees with the records ({differs}): records were written "
                "behind the manifest's back",
                RECOMMIT,
            )


def _merge(report: ValidationReport, walk: dict[str, Any], fixes: Fixes) -> None:
    """Fold the walk's plain data into the report, with the fixes spelled out."""
    report.manifest = walk["manifest"]
    if report.manifest is not None:
        fixes.learn_source(report.manifest)
    for kind, key, message, fix in walk["problems"]:
        report.problems.append(fixes.finding(kind, key, message, fix))
    for kind, key, message in walk["warnings"]:
        report.warnings.append(Finding(kind, key, message))
    report.images = walk["images"]
    report.checked_bytes = walk["checked_bytes"]


def _check_source(
    source: Path,
    cache_path: str,
    metas: dict[str, dict[str, Any]],
    failures: dict[str, str],
    report: ValidationReport,
    fixes: Fixes,
) -> None:
    def stale(kind: str, key: str, message: str) -> None:
        report.problems.append(fixes.finding(kind, key, f"{key}: {message}", UPDATE))

    present = {display_key(k) for k in scan_images(source, exclude=cache_path)}
    for key, meta in metas.items():
        if not meta:  # damaged (reported already), or written from an array: no source
            continue
        if key not in present:
            stale("stale-missing", key, "cached but no longer in the source")
            continue
        file = source / key
        try:
            st = file.stat()
        except OSError as e:
            stale("stale-unreadable", key, f"source unreadable ({e.strerror})")
            continue
        if st.st_size == meta["source_size"] and st.st_mtime_ns == meta["source_mtime_ns"]:
            continue
        try:
            digest = hashlib.sha256(read_source(file)[0]).hexdigest()
        except ImageDecodeError as e:
            stale("stale-unreadable", key, f"source {e.reason}")
            continue
        if digest != meta["source_sha256"]:
            stale("stale-changed", key, "the source changed since it was cached")
    for key in sorted(present - metas.keys()):
        if key not in failures:  # a failed source is already a warning
            stale("stale-new", key, "in the source but not in the cache")
