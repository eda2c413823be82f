"""``build-cache``: bring a store up to date with a folder of images, through ``CacheWriter``.

The folder decides what the store holds: a source not stored (or changed) is decoded, a record
whose source is gone is removed, an unchanged source (same size and mtime) is skipped, a
touched one (new mtime, same bytes) only gets its fingerprint refreshed. Keys are paths
relative to the folder, the names annotation files use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import SettingsMismatchError
from ..format.schema import encode_key, failure_key, has_source, key_problem
from ..format.shards import SHARD_FIELD, check_shard, shard_entry, shard_of, shard_text
from ..images import scan_images
from ..reporting import Progress
from .session import KEEP_EXTRA, WriteSession
from .settings import KEEP, check_arguments
from .writer import BuildResult, CacheWriter


def default_output(source: str | os.PathLike[str]) -> str:
    """``data/val`` -> ``data/val.lmdb`` (a trailing slash is ignored)."""
    text = os.fspath(source).rstrip("/\\") or os.fspath(source)
    return text + ".lmdb"


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
    shard: tuple[int, int] | None = None,
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
        codec: How pixels are stored, ``"raw"`` or ``"zstd"`` (``format.codecs``).
            Default (``KEEP``): the existing store's, ``"raw"`` for a new store. Changing it
            (or ``level``) on an existing store encodes its records again from their stored
            pixels, without decoding any source.
        level: zstd level, 1..22. Default (``KEEP``): the store's, else 5.
        commit_bytes: A transaction is committed once it holds this many pixel bytes...
        commit_images: ...or this many images, whichever comes first.
        progress: Receives the number of sources to process and each one done.
        shard: ``(I, N)``: build only shard I of N of the folder (``format.shards``; the part
            a machine of N builds, for ``merge_caches``). The store records it, and later
            updates keep it (None); another shard than the store's needs ``rebuild``.

    Returns:
        A :class:`BuildResult`; ``result.ok`` is False when any source failed.

    Raises:
        ValueError: bad arguments (unknown filter, non-positive cap, output is the source).
        NotADirectoryError: ``source`` is not a folder.
        SettingsMismatchError: settings other than the store's without ``rebuild``, or a
            rebuild of a store whose settings cannot be read without giving ``max_side``; or a
            shard other than the store's without ``rebuild``.
        BuildLockedError: another build is writing the store.
        FormatVersionError, NotACacheError: the output is not a store this version updates.
        TruncatedStoreError, StoreDamagedError: the store is damaged (``rebuild`` replaces it).
        DiskFullError: the device ran out of space; a re-run resumes.
    """
    source = os.fspath(source)
    output = os.fspath(output) if output is not None else default_output(source)
    check_arguments(max_side, resample, (os.cpu_count() or 1) if workers is None else workers,
                    codec, level)  # fmt: skip
    if not Path(source).is_dir():
        raise NotADirectoryError(f"source '{source}' is not a folder; pass the folder of images")
    if os.path.realpath(output) == os.path.realpath(source):
        raise ValueError("the output must not be the source folder itself; pass -o elsewhere")
    keys = scan_images(source, exclude=output)
    with CacheWriter(
        output,
        max_side=max_side,
        resample=resample,
        codec=codec,
        level=level,
        rebuild=rebuild,
        workers=workers,
        errors="record",
        commit_bytes=commit_bytes,
        commit_images=commit_images,
        progress=progress,
        source_root=source,
    ) as writer:
        shard = _choose_shard(writer.session, shard, rebuild, output)
        if shard is not None:
            keys = [key for key in keys if shard_of(key, shard[1]) == shard[0]]
        _sync(writer.session, source, keys, progress)
    return writer.result


def _choose_shard(
    session: WriteSession, asked: tuple[int, int] | None, rebuild: bool, output: str
) -> tuple[int, int] | None:
    """The shard this build writes: the one asked for, else the store's; recorded in the
    manifest the session commits."""
    manifest = session.batch.manifest
    held = check_shard(manifest.get(SHARD_FIELD))
    if asked is None or asked == held:
        return held
    if not rebuild and (held is not None or len(session.index) > 0):
        what = f"shard {shard_text(held)}" if held is not None else "a whole folder"
        raise SettingsMismatchError(
            f"cache '{output}' holds {what}, not shard {shard_text(asked)}; build the shard "
            f"into a new path, or replace the store with --rebuild"
        )
    manifest[SHARD_FIELD] = shard_entry(asked)
    return asked


def _sync(session: WriteSession, source: str, keys: list[str], progress: Any) -> None:
    """Queue removals, decode what changed, encode kept records again if the codec changed."""
    tasks = _plan(session, source, keys)
    decoding = {key for key, _ in tasks}
    if progress is not None:
        progress.start(len(tasks) + len(session.pending_recodes(decoding)))
    session.recode_kept(decoding)
    for key, known_sha256 in tasks:
        session.add_file(key, os.path.join(source, key), known_sha256, KEEP_EXTRA)


def _plan(session: WriteSession, source: str, keys: list[str]) -> list[tuple[str, str | None]]:
    """Queue what is known before decoding (removals, unusable names, unreadable files);
    return the ``(key, known sha256)`` of the sources to decode."""
    # Records of removed sources go, and so does any record under a key no source could have
    # (a damaged or crafted store): its source is then decoded again.
    wanted = {encode_key(k) for k in keys if key_problem(k) is None}
    for ekey in sorted(session.index.stored - wanted):
        session.delete(ekey)
    session.keep_failures({failure_key(k) for k in keys})
    tasks: list[tuple[str, str | None]] = []
    for key in keys:
        problem = key_problem(key)
        if problem is not None:
            session.fail(key, problem)
            continue
        meta = session.index.meta(key)
        known = meta["source_sha256"] if meta is not None and has_source(meta) else None
        if meta is not None and known is not None:
            try:
                st = os.stat(os.path.join(source, key))
            except OSError as e:
                session.fail(key, f"unreadable: {e.strerror or e}")
                continue
            if (st.st_size, st.st_mtime_ns) == (meta["source_size"], meta["source_mtime_ns"]):
                session.result.unchanged += 1
                continue
        tasks.append((key, known))
    return tasks
