"""Build or update a cache store from a folder of images.

One process writes; a pool of worker processes reads, hashes and decodes the sources. Writes
are grouped into transactions of bounded size. Each transaction holds whole records (metadata
and pixels together) plus a manifest that agrees with them, so a build killed at any moment
leaves the last committed state: every record whole, the manifest marked incomplete, and a
re-run resumes from there. Readers of the store keep their own snapshot meanwhile (LMDB MVCC).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import multiprocessing.pool
import os
import sys
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import PIL

from . import __version__
from .errors import ImageDecodeError, NotACacheError, SettingsMismatchError
from .images import decode_bytes, resample_filter, scan_images
from .schema import (
    CHECKSUM_ALGORITHM,
    DB_FAILURES,
    DB_MANIFEST,
    DB_META,
    DB_PIXELS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_KEY,
    PIXEL_CHANNELS,
    check_format,
    check_manifest,
    encode_key,
    failure_key,
    pack,
)
from .store import WriteStore


class Progress(Protocol):
    """What the builder reports progress to; the CLI passes a tqdm bar."""

    def start(self, total: int) -> None: ...

    def advance(self, key: str) -> None: ...


class _NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, key: str) -> None:
        pass


@dataclass
class BuildResult:
    """What a build did.

    Attributes:
        output: Path of the store.
        added: Images decoded and stored that the store did not hold.
        updated: Images whose source changed and were decoded again.
        touched: Images whose file was touched but whose content is unchanged (metadata only).
        unchanged: Images skipped because size and mtime match the record.
        removed: Records deleted because their source is gone.
        failures: ``(key, reason)`` for each source that could not be stored.
        images: Records in the store at the end.
        total_bytes: Pixel bytes in the store at the end.
        seconds: Wall time of the build.
        warnings: Notes that do not make the build fail.
    """

    output: str
    added: int = 0
    updated: int = 0
    touched: int = 0
    unchanged: int = 0
    removed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    images: int = 0
    total_bytes: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def decoded(self) -> int:
        return self.added + self.updated

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "ok": self.ok,
            "images": self.images,
            "total_bytes": self.total_bytes,
            "added": self.added,
            "updated": self.updated,
            "touched": self.touched,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": len(self.failures),
            "failures": [{"key": k, "reason": r} for k, r in self.failures],
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.decoded / self.seconds, 2) if self.seconds else None,
            "warnings": self.warnings,
        }


def default_output(source: str | os.PathLike[str]) -> str:
    """``data/val`` -> ``data/val.lmdb`` (a trailing slash is ignored)."""
    text = os.fspath(source).rstrip("/\\") or os.fspath(source)
    return text + ".lmdb"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- work done in the decoding processes ------------------------------------------------------


def _decode_task(
    root: str, key: str, max_side: int | None, resample: str, known_sha256: str | None
) -> tuple[Any, ...]:
    """Read, fingerprint and decode one source; runs in a worker process.

    Returns ``("ok", key, meta, pixels)``, ``("same", key, fingerprint)`` when the content hash
    equals ``known_sha256``, or ``("fail", key, reason)``.
    """
    path = os.path.join(root, key)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as e:
        return ("fail", key, f"unreadable: {e.strerror or e}")
    fingerprint = {
        "source_size": len(data),
        "source_mtime_ns": st.st_mtime_ns,
        "source_sha256": hashlib.sha256(data).hexdigest(),
    }
    if known_sha256 is not None and fingerprint["source_sha256"] == known_sha256:
        return ("same", key, fingerprint)
    try:
        decoded = decode_bytes(data, path, max_side=max_side, resample=resample)
    except ImageDecodeError as e:
        return ("fail", key, e.reason)
    except MemoryError:
        return ("fail", key, "out of memory while decoding; lower --workers or set --max-side")
    pixels = decoded.pixels
    canonical_w, canonical_h = decoded.canonical_size
    meta = {
        "width": decoded.width,
        "height": decoded.height,
        "channels": PIXEL_CHANNELS,
        "nbytes": int(pixels.nbytes),
        "raw_width": decoded.raw_width,
        "raw_height": decoded.raw_height,
        "orientation": decoded.orientation,
        "scale": max(decoded.width, decoded.height) / max(canonical_w, canonical_h),
        "scale_x": decoded.width / canonical_w,
        "scale_y": decoded.height / canonical_h,
        "mode": decoded.mode,
        "format": decoded.format,
        **fingerprint,
        "checksum": zlib.crc32(pixels.data),
    }
    return ("ok", key, meta, pixels)


def _start_pool(workers: int) -> multiprocessing.pool.Pool | None:
    """Start the decoding processes, before the store is opened so none inherits it.

    On Linux they are forked: they start at once, need no re-import of the caller's main
    module (spawn would, and fails for scripts without a main guard), and the build has opened
    no LMDB environment yet. Elsewhere they are spawned.
    """
    if workers <= 1:
        return None
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method).Pool(workers)


def _run_tasks(
    tasks: list[tuple[str, str | None]],
    root: str,
    max_side: int | None,
    resample: str,
    pool: multiprocessing.pool.Pool | None,
    workers: int,
) -> Iterator[tuple[Any, ...]]:
    """Decode ``(key, known_sha256)`` tasks, yielding results in task order.

    At most ``2 * workers`` results are in flight, so memory stays bounded however large the
    set is and however slow the writer.
    """
    if pool is None:
        for key, sha in tasks:
            yield _decode_task(root, key, max_side, resample, sha)
        return
    window: deque[multiprocessing.pool.AsyncResult] = deque()
    pending = iter(tasks)
    for key, sha in pending:
        window.append(pool.apply_async(_decode_task, (root, key, max_side, resample, sha)))
        if len(window) >= 2 * workers:
            break
    while window:
        yield window.popleft().get()
        for key, sha in pending:
            window.append(pool.apply_async(_decode_task, (root, key, max_side, resample, sha)))
            break


# --- the store ---------------------------------------------------------------------------------


def _check_output(output: str, source: str) -> None:
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise NotACacheError(
            f"output '{output}' exists and is not a cache folder; choose another -o"
        )
    if out.is_dir():
        entries = {p.name for p in out.iterdir()}
        if entries and "data.mdb" not in entries:
            raise NotACacheError(
                f"output '{output}' is a folder that holds no cache (no data.mdb); "
                "choose another -o or remove it"
            )
    if os.path.realpath(output) == os.path.realpath(source):
        raise ValueError("the output must not be the source folder itself; pass -o elsewhere")


def build_cache(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    max_side: int | None = None,
    resample: str = "bilinear",
    workers: int | None = None,
    rebuild: bool = False,
    commit_bytes: int = 256 << 20,
    commit_images: int = 256,
    progress: Progress | None = None,
) -> BuildResult:
    """Build a cache of decoded images from ``source``, or bring an existing one up to date.

    Args:
        source: Folder scanned recursively for images; keys are paths relative to it.
        output: Store path (a folder); defaults to ``<source>.lmdb``.
        max_side: Longest-side cap; None stores full size. Images are never upscaled.
        resample: Filter for the cap, one of ``images.RESAMPLE_FILTERS``.
        workers: Decoding processes; defaults to the number of CPUs. 1 decodes in-process.
        rebuild: Drop every record first, e.g. to change ``max_side`` of an existing store.
        commit_bytes: A transaction is committed once it holds this many pixel bytes...
        commit_images: ...or this many images, whichever comes first.
        progress: Receives the number of sources to process and each one done.

    Returns:
        A :class:`BuildResult`; ``result.ok`` is False when any source failed.

    Raises:
        ValueError: bad arguments (unknown filter, non-positive cap, output is the source).
        NotADirectoryError: ``source`` is not a folder.
        SettingsMismatchError: the store exists with other settings and ``rebuild`` is False.
        FormatVersionError, NotACacheError: the output is not a store this version updates.
    """
    started = time.perf_counter()
    source = os.fspath(source)
    output = os.fspath(output) if output is not None else default_output(source)
    resample_filter(resample)  # raises ValueError naming the choices
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive integer, got {max_side}")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    progress = progress or _NoProgress()
    if not Path(source).is_dir():
        raise NotADirectoryError(f"source '{source}' is not a folder; pass the folder of images")
    _check_output(output, source)

    keys = scan_images(source, exclude=output)
    settings = {
        "max_side": max_side,
        "resample": resample,
        "pillow_version": PIL.__version__,
        "checksum": CHECKSUM_ALGORITHM,
    }
    result = BuildResult(output=output)
    pool = _start_pool(workers)
    try:
        store = WriteStore(output)
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    try:
        manifest = _prepare_manifest(store, source, output, settings, rebuild, result)
        _update(
            store,
            source,
            keys,
            settings,
            manifest,
            pool,
            workers,
            commit_bytes,
            commit_images,
            progress,
            result,
        )
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        store.close()
    result.seconds = time.perf_counter() - started
    return result


def _prepare_manifest(
    store: WriteStore, source: str, output: str, settings: dict, rebuild: bool, result: BuildResult
) -> dict:
    existing = store.manifest()
    if existing is not None and rebuild:
        store.clear()
        existing = None
    if existing is not None:
        check_format(existing, output)
        check_manifest(existing)
        old = existing["settings"]
        for name in ("max_side", "resample"):
            if old.get(name) != settings[name]:
                raise SettingsMismatchError(
                    f"cache '{output}' was built with {name}={old.get(name)!r}, this build asks "
                    f"{name}={settings[name]!r}; add --rebuild to rebuild it with the new "
                    "settings, or write to another -o"
                )
        if old.get("pillow_version") != settings["pillow_version"]:
            result.warnings.append(
                f"the cache holds images decoded with Pillow {old.get('pillow_version')}; new "
                f"ones use Pillow {settings['pillow_version']} (use --rebuild for uniform pixels)"
            )
        if os.path.realpath(existing["source_root"]) != os.path.realpath(source):
            result.warnings.append(
                f"the cache was built from '{existing['source_root']}', now updated from "
                f"'{os.path.realpath(source)}'"
            )
        manifest = dict(existing)
        manifest["settings"] = {**old, "pillow_version": settings["pillow_version"]}
    else:
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "settings": settings,
            "created": _now(),
            "writer": f"{FORMAT_NAME} {__version__}",
            "images": 0,
            "failed": 0,
            "total_bytes": 0,
        }
    manifest.update(complete=False, source_root=os.path.realpath(source), updated=_now())
    store.write([(DB_MANIFEST, MANIFEST_KEY, pack(manifest))], 0)
    return manifest


def _update(
    store: WriteStore,
    source: str,
    keys: list[str],
    settings: dict,
    manifest: dict,
    pool: multiprocessing.pool.Pool | None,
    workers: int,
    commit_bytes: int,
    commit_images: int,
    progress: Progress,
    result: BuildResult,
) -> None:
    metas = {k.decode("utf-8", "surrogateescape"): v for k, v in store.read_all(DB_META).items()}
    old_failures = {v["key"] for v in store.read_all(DB_FAILURES).values()}
    sizes = {key: int(meta.get("nbytes", 0)) for key, meta in metas.items()}
    failures: dict[str, str] = {}
    # Keys the failures database holds at each commit, so the manifest's count agrees with it.
    failed_keys = old_failures & set(keys)

    ops: list[tuple[bytes, bytes, bytes | None]] = []
    wanted = set(keys)
    for key in sorted(set(metas) - wanted):
        ekey = encode_key(key)
        ops += [(DB_META, ekey, None), (DB_PIXELS, ekey, None)]
        sizes.pop(key, None)
        result.removed += 1
    for key in sorted(old_failures - wanted):
        ops.append((DB_FAILURES, failure_key(key), None))

    tasks: list[tuple[str, str | None]] = []
    for key in keys:
        try:
            encode_key(key)
        except ValueError as e:
            failures[key] = str(e)
            failed_keys.add(key)
            continue
        meta = metas.get(key)
        if meta is not None:
            try:
                st = os.stat(os.path.join(source, key))
            except OSError as e:
                failures[key] = f"unreadable: {e.strerror or e}"
                failed_keys.add(key)
                continue
            if st.st_size == meta.get("source_size") and st.st_mtime_ns == meta.get(
                "source_mtime_ns"
            ):
                result.unchanged += 1
                continue
        tasks.append((key, meta.get("source_sha256") if meta else None))

    def commit(final: bool = False) -> None:
        manifest["images"] = len(sizes)
        manifest["total_bytes"] = sum(sizes.values())
        manifest["failed"] = len(failed_keys)
        manifest["complete"] = final
        manifest["updated"] = _now()
        ops.append((DB_MANIFEST, MANIFEST_KEY, pack(manifest)))
        store.write(ops, pending_bytes)
        ops.clear()

    progress.start(len(tasks))
    pending_bytes = 0
    pending_images = 0
    for key, reason in failures.items():
        ops.append((DB_FAILURES, failure_key(key), pack({"key": key, "reason": reason})))
    for outcome in _run_tasks(
        tasks, source, settings["max_side"], settings["resample"], pool, workers
    ):
        status, key = outcome[0], outcome[1]
        ekey = encode_key(key)  # tasks hold only keys that encode
        if status == "ok":
            meta, pixels = outcome[2], outcome[3]
            if key in metas:
                result.updated += 1
            else:
                result.added += 1
            ops += [
                (DB_PIXELS, ekey, pixels.data),
                (DB_META, ekey, pack(meta)),
                (DB_FAILURES, failure_key(key), None),
            ]
            sizes[key] = meta["nbytes"]
            metas[key] = meta
            failures.pop(key, None)
            failed_keys.discard(key)
            pending_bytes += meta["nbytes"]
        elif status == "same":
            meta = {**metas[key], **outcome[2]}
            metas[key] = meta
            ops.append((DB_META, ekey, pack(meta)))
            result.touched += 1
        else:
            reason = outcome[2]
            failures[key] = reason
            failed_keys.add(key)
            ops.append((DB_FAILURES, failure_key(key), pack({"key": key, "reason": reason})))
            if key in metas:
                # The source changed into something undecodable: its old pixels are stale.
                ops += [(DB_META, ekey, None), (DB_PIXELS, ekey, None)]
                del metas[key]
                sizes.pop(key, None)
        pending_images += 1
        progress.advance(key)
        if pending_bytes >= commit_bytes or pending_images >= commit_images:
            commit()
            pending_bytes = pending_images = 0
    commit(final=True)
    result.failures = sorted(failures.items())
    result.images = len(sizes)
    result.total_bytes = sum(sizes.values())
