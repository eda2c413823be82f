"""Prove a cache is intact and current. Returns a report; never prints, never dies.

Checks, in order:

1. the files: ``data.mdb`` as long as its meta pages require (a short file is reported, never
   mapped);
2. LMDB's structure, with LMDB's own offline verifier (``lmdb.verify``: plain reads, no
   mapping), while a read snapshot pins the pages it walks;
3. the records: the format and version, that the last build finished, every record's metadata
   checksum and schema, that every key a database lists can also be looked up, every pixel
   length and checksum, every failure entry, and the manifest's counts. Every LMDB error met is
   a problem naming the database and key. When step 2 found damage, this walk runs in a child
   process: if the damage faults it, the report says so and the caller lives on;
4. with a source folder: stale entries (changed, missing or new sources; a source recorded as
   failed at build time is a warning, not a problem); with an annotation file: that every
   annotated image is in the cache.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from . import environment
from .annotations import annotated_keys
from .codecs import RAW, codec_of, stored_length, stored_pixels
from .environment import check_data_file
from .errors import (
    CacheError,
    CacheNotFoundError,
    FormatVersionError,
    ImageDecodeError,
    NotACacheError,
    StoreDamagedError,
    TruncatedStoreError,
)
from .images import read_source, scan_images
from .isolated import ChildCrashed, call_isolated
from .reader import CacheReader
from .schema import (
    DB_FAILURES,
    DB_META,
    DB_PIXELS,
    SOURCE_FIELDS,
    check_failure,
    check_meta,
    check_meta_fits,
    decode_key,
    display_key,
    key_problem,
    unseal,
)


@dataclass(frozen=True)
class Finding:
    """One problem or warning.

    Attributes:
        kind: A short category such as ``"checksum"``, ``"stale-changed"``, ``"incomplete"``.
        key: The image key concerned, or None for store-wide findings.
        message: A sentence a person can act on.
    """

    kind: str
    key: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "message": self.message}


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_cache`; ``ok`` when no problem was found."""

    path: str
    images: int = 0
    checked_bytes: int = 0
    manifest: dict[str, Any] | None = None
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    source: str | None = None
    annotations: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, kind: str, key: str | None, message: str) -> None:
        self.problems.append(Finding(kind, key, message))

    def warn(self, kind: str, key: str | None, message: str) -> None:
        self.warnings.append(Finding(kind, key, message))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for finding in self.problems:
            out[finding.kind] = out.get(finding.kind, 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "images": self.images,
            "checked_bytes": self.checked_bytes,
            "source": self.source,
            "annotations": self.annotations,
            "problem_counts": self.counts(),
            "problems": [f.as_dict() for f in self.problems],
            "warnings": [f.as_dict() for f in self.warnings],
            "manifest": self.manifest,
        }


ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total)


def validate_cache(
    path: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    annotations: str | os.PathLike[str] | None = None,
    checksums: bool = True,
    progress: ProgressFn | None = None,
) -> ValidationReport:
    """Check a cache store and report every problem found.

    Args:
        path: The store.
        source: The folder it was built from, to find stale entries.
        annotations: A JSON annotation file (``{"images": {"<key>": ...}}``) whose images must
            all be cached.
        checksums: Verify each image's CRC-32 (reads every pixel byte once).
        progress: Called with (bytes checked, bytes to check) while checksumming.

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
    fixes = _Fixes(path, os.fspath(source) if source is not None else None)
    try:
        check_data_file(path)
    except CacheNotFoundError:
        raise
    except TruncatedStoreError as e:
        report.problem(
            "truncated", None, str(TruncatedStoreError(path, e.size, e.required, fixes.source))
        )
        return report
    except CacheError as e:
        report.problem("format", None, str(e))
        return report
    structure = environment.checked_structure(path)
    for problem in structure:
        report.problem("lmdb-structure", None, f"LMDB structure: {problem}; {fixes.rebuild}")
    if structure:
        try:
            walk = call_isolated(_walk, path, checksums, progress)
        except (ChildCrashed, RuntimeError) as e:
            report.problem(
                "unreadable",
                None,
                f"reading the records of the damaged store failed ({e}); {fixes.rebuild}",
            )
            return report
    else:
        walk = _walk(path, checksums, progress)
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
            report.problem(
                "not-cached", key, f"{key}: annotated in '{annotations}' but not in the cache{why}"
            )
    return report


class _Fixes:
    """The commands a finding tells the user to run, with the real paths where known."""

    def __init__(self, path: str, source: str | None) -> None:
        self.path = path
        self.source = source or "SRC"

    def learn_source(self, manifest: dict[str, Any]) -> None:
        if self.source == "SRC" and manifest.get("source_root"):
            self.source = manifest["source_root"]

    @property
    def update(self) -> str:
        return f"run 'build-cache {self.source} -o {self.path}' to update it"

    @property
    def rebuild(self) -> str:
        return f"rebuild it with 'build-cache {self.source} -o {self.path} --rebuild'"


def _walk(path: str, checksums: bool, progress: ProgressFn | None) -> dict[str, Any]:
    """Check every record; returns plain data (it may run in a child process)."""
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
        out["problems"].append([kind, None, str(e)])
        return out
    with reader:
        out["manifest"] = reader.info
        try:
            _RecordWalk(reader, checksums, progress, out).run()
        except CacheError as e:  # e.g. the store was replaced or cut while it was walked
            out["problems"].append(["damaged", None, str(e)])
    return out


class _RecordWalk:
    """The record checks of :func:`_walk`, one step per method."""

    def __init__(
        self,
        reader: CacheReader,
        checksums: bool,
        progress: ProgressFn | None,
        out: dict[str, Any],
    ) -> None:
        self.reader = reader
        self.checksums = checksums
        self.progress = progress
        self.out = out
        self.metas: dict[str, dict[str, Any]] = {}

    def problem(self, kind: str, key: str | None, message: str) -> None:
        self.out["problems"].append([kind, key, message])

    def run(self) -> None:
        meta_keys = self._list(DB_META)
        pixel_keys = self._list(DB_PIXELS)
        for raw_key in sorted(meta_keys):
            self._check_meta(raw_key)
        total = sum(stored_length(m) for m in self.metas.values() if m)
        done = 0
        for raw_key in sorted(meta_keys | pixel_keys):
            done += self._check_pixels(raw_key, raw_key in pixel_keys)
            if self.progress is not None and done:
                self.progress(done, total)
        self.out["checked_bytes"] = done if self.checksums else 0
        self.out["images"] = len(self.metas)
        self._check_failures()
        self._check_manifest()
        self.out["metas"] = {
            key: {n: m[n] for n in SOURCE_FIELDS if n in m} if m else {}
            for key, m in self.metas.items()
        }

    def _list(self, db: bytes) -> set[bytes]:
        keys: set[bytes] = set()
        last: bytes | None = None
        try:
            for last in self.reader.raw_keys(db):
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
            return self.reader.raw_value(db, raw_key), None
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
        compressed = codec_of(meta) != RAW
        if len(buf) != stored_length(meta):  # checked before a byte is read
            says = (
                f"{meta['stored_nbytes']} (compressed)"
                if compressed
                else f"{meta['width']}x{meta['height']}x3={meta['nbytes']}"
            )
            self.problem(
                "size-mismatch", key, f"{key}: pixel data is {len(buf)} bytes, metadata says {says}"
            )
            self.metas[key] = {}  # its size is unknown: reported once, left out of the totals
            return 0
        if not self.checksums:
            return len(buf)
        if compressed:
            # Both checksums: the stored bytes (what the disk holds), then the pixels the
            # frame decompresses to (what a reader gets).
            _, problem = stored_pixels(buf, meta)
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
            self.problem("incomplete", None, "the last build did not finish; {update}")
        metas = self.metas.values()
        total = sum(m.get("nbytes", 0) for m in metas)
        if any(not m for m in metas):
            total = manifest["total_bytes"]  # unknown: damaged records are reported on their own
        if manifest["images"] != len(self.metas) or manifest["total_bytes"] != total:
            self.problem(
                "manifest-mismatch",
                None,
                f"manifest says {manifest['images']} images / {manifest['total_bytes']} bytes, "
                f"the store holds {len(self.metas)} / {total}; {{update}}",
            )
        failed = len(self.out["failures"])
        if manifest["failed"] != failed:
            self.problem(
                "manifest-mismatch",
                None,
                f"manifest says {manifest['failed']} failed sources, the store lists {failed}; "
                "{update}",
            )


def _merge(report: ValidationReport, walk: dict[str, Any], fixes: _Fixes) -> None:
    """Fold the walk's plain data into the report, with the fixes spelled out."""
    report.manifest = walk["manifest"]
    if report.manifest is not None:
        fixes.learn_source(report.manifest)
    record_kinds = {"unreadable", "corrupt-meta", "checksum", "size-mismatch", "orphan-pixels",
                    "missing-pixels", "corrupt-failure", "bad-key"}  # fmt: skip
    for kind, key, message in walk["problems"]:
        message = message.replace("{update}", fixes.update)
        if kind in record_kinds:
            message = f"{message}; {fixes.rebuild}"
        report.problem(kind, key, message)
    for kind, key, message in walk["warnings"]:
        report.warn(kind, key, message)
    report.images = walk["images"]
    report.checked_bytes = walk["checked_bytes"]


def _check_source(
    source: Path,
    cache_path: str,
    metas: dict[str, dict[str, Any]],
    failures: dict[str, str],
    report: ValidationReport,
    fixes: _Fixes,
) -> None:
    present = {display_key(k) for k in scan_images(source, exclude=cache_path)}
    for key, meta in metas.items():
        if not meta:  # damaged (reported already), or written from an array: no source
            continue
        if key not in present:
            report.problem(
                "stale-missing", key, f"{key}: cached but no longer in the source; {fixes.update}"
            )
            continue
        file = source / key
        try:
            st = file.stat()
        except OSError as e:
            report.problem(
                "stale-unreadable", key, f"{key}: source unreadable ({e.strerror}); {fixes.update}"
            )
            continue
        if st.st_size == meta["source_size"] and st.st_mtime_ns == meta["source_mtime_ns"]:
            continue
        try:
            digest = hashlib.sha256(read_source(file)[0]).hexdigest()
        except ImageDecodeError as e:
            report.problem("stale-unreadable", key, f"{key}: source {e.reason}; {fixes.update}")
            continue
        if digest != meta["source_sha256"]:
            message = f"{key}: the source changed since it was cached; {fixes.update}"
            report.problem("stale-changed", key, message)
    for key in sorted(present - metas.keys()):
        if key in failures:
            continue  # already a warning
        message = f"{key}: in the source but not in the cache; {fixes.update}"
        report.problem("stale-new", key, message)
