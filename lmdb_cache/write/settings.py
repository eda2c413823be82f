"""A writer's settings: the ones asked, the store's own for the others, and the manifest.

An update keeps the store's ``max_side`` and ``resample`` unless others are given (which needs
``rebuild``); the codec and level may change at any time (records are encoded again).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lmdb
import PIL

from .._version import __version__
from ..check.isolated import ChildCrashed, call_isolated
from ..errors import NotACacheError, SettingsMismatchError
from ..format import codecs
from ..format.schema import (
    CHECKSUM_ALGORITHM,
    DB_MANIFEST,
    MANIFEST_KEY,
    MAX_DBS,
    check_manifest,
    decode_manifest,
    seal,
    unpack,
    unseal,
)
from ..format.settings import DEFAULT_MAX_PIXELS, MAX_PIXELS_LIMIT
from ..format.versions import FORMAT_NAME
from ..images import resample_filter
from .commits import now
from .index import RecordIndex
from .store import WriteStore, existing_entries, store_exists


class _Keep:
    """The default of ``max_side`` and ``resample``: the store's own setting."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


def check_arguments(
    max_side: Any, resample: Any, workers: int, codec: Any, level: Any, max_pixels: Any = KEEP
) -> None:
    if codec is not KEEP:
        codecs.check_codec(codec, None if level is KEEP else level)
    elif level is not KEEP:
        codecs.check_codec(codecs.leveled().name, level)  # a level alone asks for compression
    if resample is not KEEP:
        resample_filter(resample)  # raises ValueError naming the choices
    if max_side is not KEEP and max_side is not None:
        if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
            raise ValueError(f"max_side must be a positive integer or None, got {max_side!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if max_pixels is not KEEP and (
        type(max_pixels) is not int or not 1 <= max_pixels <= MAX_PIXELS_LIMIT
    ):
        raise ValueError(
            f"max_pixels must be an integer in 1..{MAX_PIXELS_LIMIT}, got {max_pixels!r}"
        )


def check_output(output: str) -> None:
    """Refuse an output that is a file, or a folder that holds something but no cache."""
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


def open_existing(output: str) -> tuple[WriteStore | None, dict | None]:
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


def stored_settings(output: str) -> dict | None:
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


def choose_settings(
    asked: tuple[Any, Any, Any, Any],
    stored: dict | None,
    rebuild: bool,
    replacing: bool,
    output: str,
    warnings: list[str],
    max_pixels: Any = KEEP,
) -> dict[str, Any]:
    """The settings of this build: those asked, the store's for those not asked.

    ``max_pixels`` (the ceiling of an image's raw pixels) is kept as the store has it; a store
    written before it was recorded has none, which means :data:`DEFAULT_MAX_PIXELS`. Like the
    cap, another ceiling needs ``rebuild``.
    """
    max_side, resample, codec, level = asked
    if stored is None and replacing and max_side is KEEP:
        raise SettingsMismatchError(
            f"the settings of cache '{output}' cannot be read from the damaged store, so the "
            "rebuild cannot keep them: give them, e.g. 'build-cache SRC -o "
            f"{output} --rebuild --max-side 640' (or '--max-side none' for full size)"
        )
    if stored is None:
        if replacing and resample is KEEP:
            warnings.append(
                f"the settings of cache '{output}' could not be read: resampling with "
                "'bilinear' (pass --resample to choose)"
            )
        chosen = {
            "max_side": None if max_side is KEEP else max_side,
            "resample": "bilinear" if resample is KEEP else resample,
            "max_pixels": DEFAULT_MAX_PIXELS if max_pixels is KEEP else max_pixels,
        }
    else:
        chosen = {
            "max_side": stored.get("max_side") if max_side is KEEP else max_side,
            "resample": stored.get("resample") if resample is KEEP else resample,
        }
        old_pixels = stored.get("max_pixels") or DEFAULT_MAX_PIXELS
        if max_pixels is KEEP or max_pixels == old_pixels:
            chosen["max_pixels"] = old_pixels
        elif not rebuild:
            raise SettingsMismatchError(
                f"cache '{output}' was built with max_pixels={old_pixels}, this writer asks "
                f"max_pixels={max_pixels}; add rebuild=True to rebuild it with the new ceiling"
            )
        else:
            chosen["max_pixels"] = max_pixels
        for name in ("max_side", "resample"):
            if not rebuild and chosen[name] != stored.get(name):
                raise SettingsMismatchError(
                    f"cache '{output}' was built with {name}={stored.get(name)!r}, this build "
                    f"asks {name}={chosen[name]!r}; add --rebuild to rebuild it with the new "
                    "settings, or leave the option out to keep the cache's"
                )
    stored_codec = (stored or {}).get("codec", codecs.DEFAULT)
    chosen["codec"] = stored_codec if codec is KEEP else codec
    if level is not KEEP and codec is KEEP and codecs.get(stored_codec).levels is None:
        chosen["codec"] = codecs.leveled().name  # a level asks for compression
    writing = codecs.get(chosen["codec"])
    if writing.levels is None:
        chosen["level"] = None
    else:
        kept = (stored or {}).get("level") if writing.name == stored_codec else None
        chosen["level"] = (kept or writing.default_level) if level is KEEP else level
    return {
        **chosen,
        "pillow_version": PIL.__version__,
        "checksum": CHECKSUM_ALGORITHM,
    }


def start_manifest(
    store: WriteStore,
    settings: dict,
    existing: dict | None,
    source_root: str | None,
    warnings: list[str],
    index: RecordIndex,
) -> dict:
    """The manifest a writer maintains, written now with ``complete: false``.

    ``source_root``: the folder a build reads (its real path is recorded), or None to keep
    the store's (``""`` for a new store written from arrays and files named one by one).
    ``index``: what the store holds; its counts, format version and records digest
    (``index.RecordIndex.manifest_fields``) replace the old manifest's.
    """
    if existing is not None:
        old = existing["settings"]
        if old.get("pillow_version") != settings["pillow_version"]:
            warnings.append(
                f"the cache holds images decoded with Pillow {old.get('pillow_version')}; new "
                f"ones use Pillow {settings['pillow_version']} (use --rebuild for uniform pixels)"
            )
        if (
            source_root is not None
            and existing["source_root"]
            and os.path.realpath(existing["source_root"]) != os.path.realpath(source_root)
        ):
            warnings.append(
                f"the cache was built from '{existing['source_root']}', now updated from "
                f"'{os.path.realpath(source_root)}'"
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
            "settings": settings,
            "created": now(),
            "writer": f"{FORMAT_NAME} {__version__}",
            "images": 0,
            "failed": 0,
            "total_bytes": 0,
            "source_root": "",
        }
    if source_root is not None:
        manifest["source_root"] = os.path.realpath(source_root)
    manifest.update(complete=False, **index.manifest_fields(settings["codec"], now()))
    store.write([(DB_MANIFEST, MANIFEST_KEY, seal(manifest, MANIFEST_KEY))], 0)
    return manifest
