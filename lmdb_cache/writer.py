"""Build or update a cache store from a folder of images.

One process writes; a pool of worker processes reads, hashes and decodes the sources
(``decoding``). Writes are grouped into transactions of bounded size. Each transaction holds
whole records (metadata and pixels together) plus a manifest that agrees with them, so a build
killed at any moment leaves the last committed state: every record whole, the manifest marked
incomplete, and a re-run resumes from there. Readers of the store keep their own snapshot
meanwhile (LMDB MVCC).

One build at a time: a build holds the store's build lock (``locking``) from before it reads
the store's settings to its last commit. An update keeps the store's ``max_side`` and
``resample`` unless others are given (which needs ``rebuild``). A rebuild writes a new store
beside the old one and swaps it in when complete (``store.replace_store``), so it works on a
damaged store, and an interrupted rebuild leaves the old store as it was.
"""

from __future__ import annotations

import multiprocessing.pool
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import PIL

from . import __version__
from .codecs import DEFAULT_LEVEL, RAW, ZSTD, check_codec
from .decoding import start_pool
from .errors import NotACacheError, SettingsMismatchError
from .images import resample_filter, scan_images
from .isolated import ChildCrashed, call_isolated
from .locking import BuildLock
from .schema import (
    CHECKSUM_ALGORITHM,
    COMPRESSED_FORMAT_VERSION,
    DB_MANIFEST,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_KEY,
    MAX_DBS,
    check_manifest,
    decode_manifest,
    seal,
    unpack,
    unseal,
)
from .store import (
    WriteStore,
    existing_entries,
    rebuild_dir,
    remove_stale_rebuilds,
    remove_store_dir,
    replace_store,
    store_exists,
)
from .update import Progress, now, update


class _Keep:
    """The default of ``max_side`` and ``resample``: the store's own setting."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


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
        recoded: Records encoded again from their stored pixels (the codec or level changed).
        removed: Records deleted because their source is gone.
        failures: ``(key, reason)`` for each source that could not be stored.
        images: Records in the store at the end.
        total_bytes: Pixel bytes in the store at the end.
        settings: ``max_side`` and ``resample`` the store's pixels are made with.
        seconds: Wall time of the build.
        warnings: Notes that do not make the build fail.
    """

    output: str
    added: int = 0
    updated: int = 0
    touched: int = 0
    unchanged: int = 0
    recoded: int = 0
    removed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    images: int = 0
    total_bytes: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
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
            "max_side": self.settings.get("max_side"),
            "resample": self.settings.get("resample"),
            "codec": self.settings.get("codec", "raw"),
            "level": self.settings.get("level"),
            "added": self.added,
            "updated": self.updated,
            "touched": self.touched,
            "unchanged": self.unchanged,
            "recoded": self.recoded,
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


def _check_arguments(max_side: Any, resample: Any, workers: int, codec: Any, level: Any) -> None:
    if codec is not KEEP:
        check_codec(codec, DEFAULT_LEVEL if level is KEEP else level)
        if codec == RAW and level is not KEEP:
            raise ValueError(f"a zstd level ({level}) does not apply to codec 'raw'; drop it")
    elif level is not KEEP:
        check_codec(ZSTD, level)
    if resample is not KEEP:
        resample_filter(resample)  # raises ValueError naming the choices
    if max_side is not KEEP and max_side is not None:
        if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
            raise ValueError(f"max_side must be a positive integer or None, got {max_side!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")


def _check_output(output: str, source: str) -> None:
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise NotACacheError(
            f"output '{output}' exists and is not a cache folder; choose another -o"
        )
    if out.is_dir() and existing_entries(output) and not store_exists(output):
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
    max_side: int | None = KEEP,
    resample: str = KEEP,
    workers: int | None = None,
    rebuild: bool = False,
    codec: str = KEEP,
    level: int = KEEP,
    commit_bytes: int = 256 << 20,
    commit_images: int = 256,
    progress: Progress | None = None,
) -> BuildResult:
    """Build a cache of decoded images from ``source``, or bring an existing one up to date.

    Args:
        source: Folder scanned recursively for images; keys are paths relative to it.
        output: Store path (a folder); defaults to ``<source>.lmdb``.
        max_side: Longest-side cap, or None for full size. Default (``KEEP``): the existing
            store's cap, full size for a new store. Images are never upscaled.
        resample: Filter for the cap, one of ``images.RESAMPLE_FILTERS``. Default (``KEEP``):
            the existing store's, ``"bilinear"`` for a new store.
        workers: Decoding processes; defaults to the number of CPUs. 1 decodes in-process.
        rebuild: Build a new store from every source and put it in place of the existing one
            once complete: to change ``max_side``/``resample``, or to replace a damaged store.
        codec: How pixels are stored, ``"raw"`` or ``"zstd"`` (``lmdb_cache.codecs``).
            Default (``KEEP``): the existing store's, ``"raw"`` for a new store. Changing it
            (or ``level``) on an existing store encodes its records again from their stored
            pixels, without decoding any source.
        level: zstd level, 1..22. Default (``KEEP``): the store's, else 3.
        commit_bytes: A transaction is committed once it holds this many pixel bytes...
        commit_images: ...or this many images, whichever comes first.
        progress: Receives the number of sources to process and each one done.

    Returns:
        A :class:`BuildResult`; ``result.ok`` is False when any source failed.

    Raises:
        ValueError: bad arguments (unknown filter, non-positive cap, output is the source).
        NotADirectoryError: ``source`` is not a folder.
        SettingsMismatchError: settings other than the store's without ``rebuild``, or a
            rebuild of a store whose settings cannot be read without giving ``max_side``.
        BuildLockedError: another build is writing the store.
        FormatVersionError, NotACacheError: the output is not a store this version updates.
        TruncatedStoreError, StoreDamagedError: the store is damaged (``rebuild`` replaces it).
        DiskFullError: the device ran out of space; a re-run resumes.
    """
    started = time.perf_counter()
    source = os.fspath(source)
    output = os.fspath(output) if output is not None else default_output(source)
    workers = os.cpu_count() or 1 if workers is None else workers
    _check_arguments(max_side, resample, workers, codec, level)
    if not Path(source).is_dir():
        raise NotADirectoryError(f"source '{source}' is not a folder; pass the folder of images")
    _check_output(output, source)
    keys = scan_images(source, exclude=output)
    result = BuildResult(output=output)
    pool = start_pool(workers)
    try:
        with BuildLock(output):
            remove_stale_rebuilds(output)
            _build_locked(
                source, output, keys, (max_side, resample, codec, level), rebuild, pool, workers,
                (commit_bytes, commit_images), progress or _NoProgress(), result,
            )  # fmt: skip
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    result.seconds = time.perf_counter() - started
    return result


def _build_locked(
    source: str,
    output: str,
    keys: list[str],
    asked: tuple[Any, Any, Any, Any],
    rebuild: bool,
    pool: multiprocessing.pool.Pool | None,
    workers: int,
    batch: tuple[int, int],
    progress: Progress,
    result: BuildResult,
) -> None:
    """The build proper, with the store's build lock held."""
    replacing = rebuild and store_exists(output)
    store, existing = (None, None) if replacing else _open_existing(output)
    target = output
    try:
        stored = _stored_settings(output) if replacing else (existing or {}).get("settings")
        result.settings = settings = _settings(asked, stored, rebuild, replacing, output, result)
        if replacing:
            target = rebuild_dir(output)
        if store is None:
            store = WriteStore(target)
        manifest = _start_manifest(store, source, output, settings, existing, result)
        update(store, source, keys, settings, manifest, pool, workers, batch, progress, result)
    except BaseException:
        if store is not None:
            store.close()
        if target != output:
            remove_store_dir(target)  # the old store stays as it was
        raise
    store.close()
    if target != output:
        result.warnings += replace_store(target, output)


def _open_existing(output: str) -> tuple[WriteStore | None, dict | None]:
    """The store at ``output`` opened for writing, and its manifest; (None, None) if none.

    Raises:
        TruncatedStoreError, StoreDamagedError: the store is damaged.
        NotACacheError, FormatVersionError: it is not a store this version updates.
    """
    if not store_exists(output):
        return None, None
    store = WriteStore(output)  # refuses a truncated or structurally damaged store
    try:
        raw = store.get(DB_MANIFEST, MANIFEST_KEY)
        if raw is None and not store.is_empty():
            raise NotACacheError(
                f"output '{output}' is an LMDB store but not an image cache (it has no "
                "manifest); choose another -o"
            )
        return store, None if raw is None else decode_manifest(raw, output)
    except BaseException:
        store.close()
        raise


def _stored_settings(output: str) -> dict | None:
    """The settings of the store at ``output``, or None if they cannot be read.

    The store may be damaged in any way (that is why it is rebuilt), so LMDB reads its
    manifest in a child process: a fault there costs only the child.
    """
    try:
        raw = call_isolated(_read_manifest_bytes, output)
    except (ChildCrashed, RuntimeError):
        return None
    if raw is None:
        return None
    try:
        manifest = check_manifest(unseal(raw, MANIFEST_KEY))
    except ValueError:
        try:  # a manifest of format version 1 (no seal)
            manifest = check_manifest(unpack(raw))
        except ValueError:
            return None
    return dict(manifest["settings"])


def _read_manifest_bytes(output: str) -> bytes | None:
    # No size check: in this child a read past the end of a short file costs only the child,
    # and the manifest's pages may well lie before the cut.
    env = lmdb.open(output, readonly=True, lock=False, subdir=True, max_dbs=MAX_DBS)
    with env.begin() as txn:
        raw = txn.get(MANIFEST_KEY, db=env.open_db(DB_MANIFEST, txn=txn, create=False))
        return None if raw is None else bytes(raw)


def _settings(
    asked: tuple[Any, Any, Any, Any],
    stored: dict | None,
    rebuild: bool,
    replacing: bool,
    output: str,
    result: BuildResult,
) -> dict[str, Any]:
    """The settings of this build: those asked, the store's for those not asked."""
    max_side, resample, codec, level = asked
    if stored is None and replacing and max_side is KEEP:
        raise SettingsMismatchError(
            f"the settings of cache '{output}' cannot be read from the damaged store, so the "
            "rebuild cannot keep them: give them, e.g. 'build-cache SRC -o "
            f"{output} --rebuild --max-side 640' (or '--max-side none' for full size)"
        )
    if stored is None:
        if replacing and resample is KEEP:
            result.warnings.append(
                f"the settings of cache '{output}' could not be read: resampling with "
                "'bilinear' (pass --resample to choose)"
            )
        chosen = {
            "max_side": None if max_side is KEEP else max_side,
            "resample": "bilinear" if resample is KEEP else resample,
        }
    else:
        chosen = {
            "max_side": stored.get("max_side") if max_side is KEEP else max_side,
            "resample": stored.get("resample") if resample is KEEP else resample,
        }
        for name in ("max_side", "resample"):
            if not rebuild and chosen[name] != stored.get(name):
                raise SettingsMismatchError(
                    f"cache '{output}' was built with {name}={stored.get(name)!r}, this build "
                    f"asks {name}={chosen[name]!r}; add --rebuild to rebuild it with the new "
                    "settings, or leave the option out to keep the cache's"
                )
    stored_codec = (stored or {}).get("codec", RAW)
    chosen["codec"] = stored_codec if codec is KEEP else codec
    if level is not KEEP and codec is KEEP and stored_codec == RAW:
        chosen["codec"] = ZSTD  # a level asks for compression
    if chosen["codec"] == ZSTD:
        kept = (stored or {}).get("level") if stored_codec == ZSTD else None
        chosen["level"] = (kept or DEFAULT_LEVEL) if level is KEEP else level
    else:
        chosen["level"] = None
    return {
        **chosen,
        "pillow_version": PIL.__version__,
        "checksum": CHECKSUM_ALGORITHM,
    }


def _start_manifest(
    store: WriteStore,
    source: str,
    output: str,
    settings: dict,
    existing: dict | None,
    result: BuildResult,
) -> dict:
    """The manifest this build maintains, written now with ``complete: false``."""
    if existing is not None:
        old = existing["settings"]
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
        manifest["settings"] = {
            **old,
            "pillow_version": settings["pillow_version"],
            "codec": settings["codec"],
            "level": settings["level"],
        }
    else:
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "settings": settings,
            "created": now(),
            "writer": f"{FORMAT_NAME} {__version__}",
            "images": 0,
            "failed": 0,
            "total_bytes": 0,
        }
    if settings["codec"] != RAW:
        manifest["format_version"] = COMPRESSED_FORMAT_VERSION
    manifest.update(complete=False, source_root=os.path.realpath(source), updated=now())
    store.write([(DB_MANIFEST, MANIFEST_KEY, seal(manifest, MANIFEST_KEY))], 0)
    return manifest
