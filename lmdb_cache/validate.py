"""Prove a cache is intact and current. Returns a report; never prints.

Checks, in order: the format and version; that the last build finished; every record's
metadata against the schema and against its pixel byte length; every pixel checksum; that the
manifest's counts agree with the records. With a source folder: entries that are stale
(changed, missing or new sources; a source recorded as failed at build time is a warning, not
a problem). With an annotation file: that every annotated image is in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CacheError, CacheNotFoundError
from .images import scan_images
from .reader import CacheReader
from .schema import DB_META, DB_PIXELS, check_meta, decode_key, unpack


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
        A :class:`ValidationReport`.

    Raises:
        CacheNotFoundError: nothing at ``path``.
        ValueError: ``source`` is not a folder, or ``annotations`` is not a readable annotation
            file (the message names the file).
    """
    path = os.fspath(path)
    report = ValidationReport(path=path)
    annotated = _annotated_keys(annotations) if annotations is not None else None
    report.annotations = os.fspath(annotations) if annotations is not None else None
    if source is not None and not Path(source).is_dir():
        raise ValueError(
            f"source '{source}' is not a folder; pass the folder the cache was built from"
        )
    try:
        reader = CacheReader(path)
    except CacheNotFoundError:
        raise
    except CacheError as e:
        report.problem("format", None, str(e))
        return report
    with reader:
        report.manifest = reader.manifest
        metas = _check_records(reader, report, checksums, progress)
        _check_manifest(reader, report, metas)
        failures = dict(reader.failures())
        for key, reason in failures.items():
            report.warn("build-failure", key, f"{key}: failed at build time: {reason}")
        if source is not None:
            report.source = os.fspath(source)
            _check_source(Path(source), path, metas, failures, report)
        if annotated is not None:
            for key in annotated:
                if key in metas:
                    continue
                why = f" (failed at build time: {failures[key]})" if key in failures else ""
                report.problem(
                    "not-cached",
                    key,
                    f"{key}: annotated in '{annotations}' but not in the cache{why}",
                )
    return report


def _check_records(
    reader: CacheReader,
    report: ValidationReport,
    checksums: bool,
    progress: ProgressFn | None,
) -> dict[str, dict[str, Any]]:
    txn = reader._txn_for()
    meta_db, pixel_db = reader._dbs[DB_META], reader._dbs[DB_PIXELS]
    metas: dict[str, dict[str, Any]] = {}
    for raw_key, raw in txn.cursor(db=meta_db):
        key = decode_key(raw_key)
        try:
            metas[key] = check_meta(unpack(raw))
        except ValueError as e:
            report.problem("corrupt-meta", key, f"{key}: metadata is corrupt: {e}")
            metas[key] = {}
    total = sum(m.get("nbytes", 0) for m in metas.values())
    done = 0
    for raw_key, buf in txn.cursor(db=pixel_db):
        key = decode_key(raw_key)
        meta = metas.get(key)
        if meta is None:
            report.problem("orphan-pixels", key, f"{key}: pixel data without metadata")
            continue
        if not meta:
            continue
        if len(buf) != meta["nbytes"]:
            report.problem(
                "size-mismatch",
                key,
                f"{key}: pixel data is {len(buf)} bytes, metadata says "
                f"{meta['width']}x{meta['height']}x3={meta['nbytes']}",
            )
            metas[key] = {}  # its size is unknown: reported once, left out of the totals
            continue
        if checksums and zlib.crc32(buf) != meta["checksum"]:
            report.problem("checksum", key, f"{key}: pixel checksum mismatch (data corrupted)")
        meta["_has_pixels"] = True
        done += len(buf)
        if progress is not None:
            progress(done, total)
    report.checked_bytes = done if checksums else 0
    for key, meta in metas.items():
        if meta and not meta.pop("_has_pixels", False):
            report.problem("missing-pixels", key, f"{key}: metadata without pixel data")
    report.images = len(metas)
    return metas


def _check_manifest(reader: CacheReader, report: ValidationReport, metas: dict[str, dict]) -> None:
    manifest = reader.manifest
    fix = f"re-run 'build-cache SRC -o {reader.path}' to finish it"
    if not manifest["complete"]:
        report.problem("incomplete", None, f"the last build did not finish; {fix}")
    total = sum(m.get("nbytes", 0) for m in metas.values())
    if any(not m for m in metas.values()):
        total = manifest["total_bytes"]  # unknown: corrupt records are reported on their own
    if manifest["images"] != len(metas) or manifest["total_bytes"] != total:
        report.problem(
            "manifest-mismatch",
            None,
            f"manifest says {manifest['images']} images / {manifest['total_bytes']} bytes, "
            f"the store holds {len(metas)} / {total}; {fix}",
        )
    failed = len(reader.failures())
    if manifest["failed"] != failed:
        report.problem(
            "manifest-mismatch",
            None,
            f"manifest says {manifest['failed']} failed sources, the store lists {failed}; {fix}",
        )


def _check_source(
    source: Path,
    cache_path: str,
    metas: dict[str, dict[str, Any]],
    failures: dict[str, str],
    report: ValidationReport,
) -> None:
    fix = f"run 'build-cache {source} -o {cache_path}' to update"
    present = set(scan_images(source, exclude=cache_path))
    for key, meta in metas.items():
        if not meta:
            continue
        if key not in present:
            report.problem(
                "stale-missing", key, f"{key}: cached but no longer in the source; {fix}"
            )
            continue
        file = source / key
        try:
            st = file.stat()
        except OSError as e:
            report.problem(
                "stale-unreadable", key, f"{key}: source unreadable ({e.strerror}); {fix}"
            )
            continue
        if st.st_size == meta["source_size"] and st.st_mtime_ns == meta["source_mtime_ns"]:
            continue
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        if digest != meta["source_sha256"]:
            report.problem(
                "stale-changed", key, f"{key}: the source changed since it was cached; {fix}"
            )
    for key in sorted(present - metas.keys()):
        if key in failures:
            continue  # already a warning
        report.problem("stale-new", key, f"{key}: in the source but not in the cache; {fix}")


def _annotated_keys(annotations: str | os.PathLike[str]) -> list[str]:
    try:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read annotation file '{annotations}': {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"annotation file '{annotations}' is not valid JSON: {e}") from e
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict):
        raise ValueError(
            f"annotation file '{annotations}' has no 'images' object; expected "
            '{"images": {"<filename>": {"words": {...}}}}'
        )
    return sorted(images)
