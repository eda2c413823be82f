"""The on-disk schema: database names, keys, sealed msgpack records and their checks.

See ``docs/format.md`` for the prose version of this module. Every msgpack value of a store is
*sealed*: followed by a CRC-32 of the value's key and its bytes (:func:`seal`), so a flipped
byte in metadata, the manifest or a failure entry is detected, not believed. Everything read
goes through :func:`unseal` (checksum, bounded msgpack, no extension types, no pickle) and the
``check_*`` functions, so a crafted store can raise an error but never run code or make the
reader allocate more than the bytes the store really holds.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from typing import Any

import msgpack

from ..errors import StoreDamagedError
from . import codecs
from .settings import MAX_PIXELS_LIMIT
from .shards import SHARD_FIELD, check_shard
from .versions import check_format, readable_versions

# Named LMDB databases inside the environment.
DB_MANIFEST = b"manifest"  # one key, MANIFEST_KEY -> manifest map
DB_META = b"meta"  # image key -> record metadata map
DB_PIXELS = b"pixels"  # image key -> HxWx3 uint8 bytes, row-major (raw, or one zstd frame)
DB_FAILURES = b"failures"  # source key -> {"key": str, "reason": str}: sources not stored
MAX_DBS = 8
DATABASES = (DB_MANIFEST, DB_META, DB_PIXELS, DB_FAILURES)


def foreign_flags(flags: dict[str, Any]) -> list[str]:
    """The LMDB flags (of ``_Database.flags()``) a cache database must not have."""
    return sorted(name for name, on in flags.items() if on)


# Reader slots in the lock file; set by whoever creates it, so writer and readers agree.
MAX_READERS = 2048

MANIFEST_KEY = b"manifest"

# LMDB's compiled-in key limit.
MAX_KEY_BYTES = 511
# No side this long has ever been a real image; it bounds every shape read from a store.
MAX_SIDE = 1 << 18
MAX_RECORD_BYTES = 1 << 20

PIXEL_CHANNELS = 3
CHECKSUM_ALGORITHM = "crc32"

# Fields of a record's metadata and the types they must have.
META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "width": int,
    "height": int,
    "channels": int,
    "nbytes": int,
    "raw_width": int,
    "raw_height": int,
    "orientation": int,
    "scale": float,
    "scale_x": float,
    "scale_y": float,
    "mode": str,
    "format": (str, type(None)),
    "checksum": int,
}

# The fingerprint of the file a record was decoded from: all three, or none for a record
# written from an array (``CacheWriter.add(key, image=...)``).
SOURCE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "source_size": int,
    "source_mtime_ns": int,
    "source_sha256": str,
}

# A record's ``extra`` map (labels, per-image fields of the writer's caller): plain msgpack
# (like every stored value) of at most this many bytes packed.
MAX_EXTRA_BYTES = 64 << 10

MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "settings": dict,
    "complete": bool,
    "images": int,
    "failed": int,
    "total_bytes": int,
    "source_root": str,
    "created": str,
    "updated": str,
    "writer": str,
}


def encode_key(key: str) -> bytes:
    """Encode an image key (a relative POSIX path) to LMDB key bytes.

    Raises:
        ValueError: the key is empty or longer than LMDB's 511-byte key limit.
    """
    data = key.encode("utf-8", "surrogateescape")
    if not data:
        raise ValueError("an image key cannot be empty")
    if len(data) > MAX_KEY_BYTES:
        raise ValueError(
            f"path {key!r} is {len(data)} bytes in UTF-8, over LMDB's {MAX_KEY_BYTES}-byte key "
            "limit; shorten the folder or file names"
        )
    return data


def key_problem(key: str) -> str | None:
    """Why a source path cannot be an image key, or None when it can.

    Keys are UTF-8 strings (the names annotation files use), at most 511 bytes.
    """
    try:
        data = key.encode("utf-8")
    except UnicodeEncodeError:
        return (
            "the file name is not valid UTF-8, so no annotation file can name it; rename it "
            "to UTF-8"
        )
    if not data:
        return "an image key cannot be empty"
    if len(data) > MAX_KEY_BYTES:
        return (
            f"path is {len(data)} bytes in UTF-8, over LMDB's {MAX_KEY_BYTES}-byte key limit; "
            "shorten the folder or file names"
        )
    return None


def display_key(key: str) -> str:
    """A key as text that can always be printed and stored (undecodable bytes as ``\\xNN``)."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def failure_key(key: str) -> bytes:
    """The key of a source in the failures database.

    A path too long to be an LMDB key still gets an entry (under a hash of it); the value of
    every failure entry holds the full path, so readers never depend on this encoding.
    """
    data = key.encode("utf-8", "surrogateescape")
    if 0 < len(data) <= MAX_KEY_BYTES:
        return data
    return b"\x00sha256:" + hashlib.sha256(data).hexdigest().encode()


def decode_key(data: bytes | memoryview) -> str:
    return bytes(data).decode("utf-8", "surrogateescape")


def pack(obj: Any) -> bytes:
    """Serialize a record with msgpack (never pickle)."""
    return msgpack.packb(obj, use_bin_type=True)


_SEAL = struct.Struct("<I")
SEAL_BYTES = _SEAL.size
# Types a plain msgpack document decodes to; anything else (a Timestamp, which msgpack decodes
# natively without asking ext_hook) is refused. msgpack builds exactly these types, so a type
# lookup (no isinstance) keeps the check cheap on the read path.
_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})
_MAX_NESTING = 8


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of this format")


def _check_plain(obj: Any, depth: int = 0) -> None:
    kind = type(obj)
    if kind in _PLAIN:
        return
    if depth >= _MAX_NESTING:
        raise ValueError(f"nested deeper than {_MAX_NESTING} levels")
    if kind is dict:
        for key, value in obj.items():
            if type(key) not in _PLAIN:
                _check_plain(key, depth + 1)
            if type(value) not in _PLAIN:
                _check_plain(value, depth + 1)
    elif kind is list:
        for value in obj:
            if type(value) not in _PLAIN:
                _check_plain(value, depth + 1)
    else:
        raise ValueError(f"holds a {kind.__name__}, which is not part of this format")


def unpack(data: bytes | memoryview, limit: int = MAX_RECORD_BYTES) -> Any:
    """Deserialize a record with bounded sizes and no extension types.

    Raises:
        ValueError: the bytes are not a small, plain msgpack document; the message is never
            empty.
    """
    if len(data) > limit:
        raise ValueError(f"record is {len(data)} bytes, over the {limit}-byte limit")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            ext_hook=_no_ext,
        )
    except Exception as e:  # msgpack raises several unrelated types for bad input
        detail = str(e) or "no detail"
        if isinstance(e, ValueError) and str(e).startswith("msgpack extension type"):
            raise
        raise ValueError(f"not valid msgpack ({type(e).__name__}: {detail})") from e
    _check_plain(obj)
    return obj


def seal(obj: Any, key: bytes) -> bytes:
    """msgpack ``obj`` and append a CRC-32 of ``key`` and those bytes (4 bytes, little-endian).

    Binding the key means a value moved or copied under another key fails its check too.
    """
    payload = pack(obj)
    return payload + _SEAL.pack(zlib.crc32(payload, zlib.crc32(key)))


def unseal(data: bytes | memoryview, key: bytes, limit: int = MAX_RECORD_BYTES) -> Any:
    """The inverse of :func:`seal`: check the CRC-32 first, then :func:`unpack`.

    Raises:
        ValueError: the checksum does not match (a flipped byte, a value written by something
            else) or the payload is not a plain msgpack document.
    """
    if len(data) > limit + SEAL_BYTES:
        raise ValueError(f"record is {len(data)} bytes, over the {limit}-byte limit")
    if len(data) <= SEAL_BYTES:
        raise ValueError(f"record is {len(data)} bytes, too short to hold a sealed value")
    payload = data[:-SEAL_BYTES]
    if zlib.crc32(payload, zlib.crc32(key)) != _SEAL.unpack_from(data, len(data) - SEAL_BYTES)[0]:
        raise ValueError("checksum mismatch (the value was damaged or not written by build-cache)")
    return unpack(payload, limit)


def _check_fields(record: Any, fields: dict[str, type | tuple[type, ...]], what: str) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"{what} is a {type(record).__name__}, expected a map")
    for name, kind in fields.items():
        if name not in record:
            raise ValueError(f"{what} lacks the field {name!r}")
        value = record[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if isinstance(value, bool) and kind is not bool:
            raise ValueError(f"{what} field {name!r} is a bool, expected {kind}")
        if not isinstance(value, kind):
            raise ValueError(f"{what} field {name!r} is a {type(value).__name__}, expected {kind}")
    return record


def check_meta(meta: Any) -> dict:
    """Check a record's metadata against the schema and its own arithmetic.

    Returns:
        The metadata map, unchanged.

    Raises:
        ValueError: a field is missing, mistyped or out of range, or the sizes disagree.
    """
    _check_fields(meta, META_FIELDS, "metadata")
    present = [name for name in SOURCE_FIELDS if name in meta]
    if present:
        _check_fields(meta, SOURCE_FIELDS, "metadata")
    if "extra" in meta:
        extra = meta["extra"]
        if type(extra) is not dict or not all(type(name) is str for name in extra):
            raise ValueError("metadata field 'extra' is not a map with str keys")
    width, height = meta["width"], meta["height"]
    for name in ("width", "height", "raw_width", "raw_height"):
        if not 1 <= meta[name] <= MAX_SIDE:
            raise ValueError(f"metadata {name}={meta[name]} is outside 1..{MAX_SIDE}")
    if meta["channels"] != PIXEL_CHANNELS:
        raise ValueError(f"metadata channels={meta['channels']}, expected {PIXEL_CHANNELS}")
    expected = width * height * PIXEL_CHANNELS
    if meta["nbytes"] != expected:
        raise ValueError(
            f"metadata nbytes={meta['nbytes']} but {width}x{height}x{PIXEL_CHANNELS}={expected}"
        )
    if not 1 <= meta["orientation"] <= 8:
        raise ValueError(f"metadata orientation={meta['orientation']} is outside 1..8")
    codecs.of(meta).check_meta(meta, expected)
    for name in ("scale", "scale_x", "scale_y"):
        value = float(meta[name])
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ValueError(f"metadata {name}={value} is outside (0, 1]")
    return meta


def has_source(meta: dict) -> bool:
    """Whether a record was decoded from a file (and keeps that file's fingerprint)."""
    return "source_sha256" in meta


def check_extra(extra: Any) -> dict:
    """Check a record's ``extra`` and return it as it reads back: a map with str keys of plain
    msgpack values (tuples come back as lists), at most :data:`MAX_EXTRA_BYTES` packed.

    Raises:
        ValueError: not a map, a key that is not a str, a value msgpack cannot store plainly
            (an object, a set, a numpy scalar or array...), nesting deeper than 7, or too big.
    """
    if type(extra) is not dict:
        raise ValueError(f"extra is a {type(extra).__name__}, expected a dict")
    for name in extra:
        if type(name) is not str:
            raise ValueError(f"extra has a key {name!r} that is not a str")
    try:
        packed = pack(extra)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(
            f"extra cannot be stored as msgpack ({e}); use str, int, float, "
            "bool, bytes, None, lists and dicts"
        ) from None
    if len(packed) > MAX_EXTRA_BYTES:
        raise ValueError(
            f"extra is {len(packed)} bytes packed, over the limit of {MAX_EXTRA_BYTES}; "
            "store large data elsewhere and keep a reference in extra"
        )
    plain = unpack(packed)
    _check_plain(plain, 1)  # the map sits one level down in the record's metadata
    return plain


def check_failure(entry: Any) -> dict:
    """Check an entry of the failures database: ``{"key": str, "reason": str}``.

    Raises:
        ValueError: not a map, or a field is missing or not a string.
    """
    return _check_fields(entry, {"key": str, "reason": str}, "failure entry")


def check_manifest(manifest: Any) -> dict:
    """Check a manifest's fields and types (the format version is checked by the reader).

    Raises:
        ValueError: a field is missing or mistyped.
    """
    _check_fields(manifest, MANIFEST_FIELDS, "manifest")
    settings = manifest["settings"]
    max_side = settings.get("max_side")
    if max_side is not None and (not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"manifest settings.max_side={max_side!r} is not a positive integer")
    if not isinstance(settings.get("resample"), str):
        raise ValueError("manifest settings.resample is missing or not a string")
    if settings.get("codec", codecs.DEFAULT) not in codecs.names():
        raise ValueError(
            f"manifest settings.codec={settings.get('codec')!r} is not one of "
            f"{', '.join(codecs.names())}"
        )
    max_pixels = settings.get("max_pixels")
    if max_pixels is not None and (
        type(max_pixels) is not int or not 1 <= max_pixels <= MAX_PIXELS_LIMIT
    ):
        raise ValueError(
            f"manifest settings.max_pixels={max_pixels!r} is not an integer in "
            f"1..{MAX_PIXELS_LIMIT}"
        )
    check_shard(manifest.get(SHARD_FIELD))
    for name in ("images", "failed", "total_bytes"):
        if manifest[name] < 0:
            raise ValueError(f"manifest {name}={manifest[name]} is negative")
    return manifest


def decode_manifest(raw: bytes | memoryview, path: str) -> dict:
    """Check and decode a store's manifest value.

    A version-1 manifest (plain msgpack, no seal) is recognised so that the error is the
    format version, not damage.

    Raises:
        FormatVersionError: another format version.
        NotACacheError: a manifest that names another format.
        StoreDamagedError: the manifest fails its checksum or the schema.
    """
    try:
        manifest = unseal(raw, MANIFEST_KEY)
    except ValueError as e:
        try:
            plain = unpack(raw)
        except ValueError:
            plain = None
        if isinstance(plain, dict) and plain.get("format_version") not in readable_versions():
            check_format(plain, path)
        raise StoreDamagedError(
            f"cache '{path}' has a damaged manifest ({e}); rebuild it with 'build-cache SRC -o "
            f"{path} --rebuild --max-side N' (N: the cap it had, or 'none')"
        ) from e
    check_format(manifest, path)
    try:
        return check_manifest(manifest)
    except ValueError as e:
        raise StoreDamagedError(
            f"cache '{path}' has a manifest that does not pass the schema ({e}); rebuild it "
            f"with 'build-cache SRC -o {path} --rebuild --max-side N' (N: the cap it had, or "
            "'none')"
        ) from e
