"""A store's identity: one digest of its settings, its keys and its records, kept in O(1).

The rules live here so that readers, writers, ``validate-cache`` and ``lmdb-cache diff`` hash
and compare records the same way (``docs/format.md``, "Identity"):

- a record's hash is BLAKE2b (32-byte digest, personalization ``lmdb-cache-rec``) of msgpack
  ``[key bytes, [the fields of RECORD_FIELDS]]``, read as a big-endian integer: what a reader
  gets from the record (size, pixel checksum, geometry, codec and level, ``extra``), never
  where or when its source was read (no path, mtime or source hash);
- the records digest is the sum of those hashes modulo 2^256: order-independent, so adding,
  replacing or removing one record updates it in O(1) (:class:`RecordsDigest`);
- the identity is BLAKE2b (16-byte digest, personalization ``lmdb-cache-id``) of msgpack
  ``[format name, IDENTITY_SCHEME, canonical settings, image count, records digest as 64 hex
  digits]``, as 32 lowercase hex digits.

Writers keep the digest in the manifest (:data:`DIGEST_FIELD`), bound to the manifest's
``updated`` stamp: an older writer, which copies the field forward without updating it, always
writes another stamp, so a stale digest is recognised (:func:`stored_digest` returns None) and
never believed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from . import codecs
from .schema import encode_key, pack
from .settings import DEFAULT_MAX_PIXELS
from .versions import FORMAT_NAME

# The manifest field holding ``{"sum": 64 hex digits, "updated": the manifest's stamp}``.
DIGEST_FIELD = "records_digest"
# Names the rules below; another rule would be another scheme, hence other identities.
IDENTITY_SCHEME = "identity-1"
IDENTITY_HEX_DIGITS = 32
DIGEST_BITS = 256
_MODULUS = 1 << DIGEST_BITS
_DIGEST_HEX_DIGITS = DIGEST_BITS // 4
_HEX = frozenset("0123456789abcdef")

# The fields of a record its identity covers, in hashing order (see :func:`record_fields`).
RECORD_FIELDS = (
    "width",
    "height",
    "checksum",
    "raw_width",
    "raw_height",
    "orientation",
    "codec",
    "level",
    "extra",
)

# Settings a manifest may lack, with the value such a store has (docs/format.md, Manifest).
_SETTING_DEFAULTS: dict[str, Any] = {
    "max_side": None,
    "max_pixels": DEFAULT_MAX_PIXELS,
    "codec": codecs.DEFAULT,
    "level": None,
    "checksum": "crc32",
}


def _key_order(key: Any) -> tuple[int, bytes]:
    # str keys by their UTF-8 bytes, then bytes keys (the only other kind msgpack maps of a
    # store hold), then anything else by its msgpack bytes.
    if isinstance(key, str):
        return 0, key.encode("utf-8", "surrogateescape")
    if isinstance(key, bytes):
        return 1, key
    return 2, pack(key)


def _canonical(value: Any) -> Any:
    """``value`` with every map's keys sorted (str keys by their UTF-8 bytes), so equal maps
    pack to equal bytes whatever order they were built in."""
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value, key=_key_order)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def record_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """The fields of a (checked) record's metadata that its identity covers.

    ``codec`` is the codec's name (``raw`` for a record that names none), ``level`` None for a
    codec without levels, ``extra`` ``{}`` when the writer gave none (what ``record.extra``
    returns). The source's fingerprint, Pillow mode and format, scales (derived from the sizes)
    and the stored frame's length and checksum are left out.
    """
    return {
        "width": meta["width"],
        "height": meta["height"],
        "checksum": meta["checksum"],
        "raw_width": meta["raw_width"],
        "raw_height": meta["raw_height"],
        "orientation": meta["orientation"],
        "codec": codecs.of(meta).name,
        "level": meta.get("level"),
        "extra": _canonical(meta.get("extra", {})),
    }


def record_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The names of :data:`RECORD_FIELDS` whose values differ between two records' metadata."""
    left, right = record_fields(a), record_fields(b)
    return [name for name in RECORD_FIELDS if _typed(left[name]) != _typed(right[name])]


def _typed(value: Any) -> Any:
    # 1 == 1.0 == True in Python, but they pack (and hash) differently.
    return pack(value)


def record_hash(key: str | bytes, meta: dict[str, Any]) -> int:
    """The 256-bit hash of one record: its LMDB key bytes and :func:`record_fields`.

    Raises:
        ValueError: a key LMDB cannot hold.
    """
    ekey = key if isinstance(key, bytes) else encode_key(key)
    fields = record_fields(meta)
    payload = pack([ekey, [fields[name] for name in RECORD_FIELDS]])
    digest = hashlib.blake2b(payload, digest_size=DIGEST_BITS // 8, person=b"lmdb-cache-rec")
    return int.from_bytes(digest.digest(), "big")


class RecordsDigest:
    """The sum of a set of records' hashes modulo 2^256 (the same for any order of adding).

    Args:
        value: The sum so far (0: no record).
    """

    def __init__(self, value: int = 0) -> None:
        self.value = value % _MODULUS

    @classmethod
    def of(cls, records: Iterable[tuple[str | bytes, dict[str, Any]]]) -> RecordsDigest:
        """The digest of ``(key, metadata)`` pairs."""
        digest = cls()
        for key, meta in records:
            digest.add(key, meta)
        return digest

    def add(self, key: str | bytes, meta: dict[str, Any]) -> None:
        """Count one record in."""
        self.value = (self.value + record_hash(key, meta)) % _MODULUS

    def remove(self, key: str | bytes, meta: dict[str, Any]) -> None:
        """Count out a record counted in before (with the same metadata)."""
        self.value = (self.value - record_hash(key, meta)) % _MODULUS

    def hex(self) -> str:
        """The sum as 64 lowercase hex digits."""
        return f"{self.value:0{_DIGEST_HEX_DIGITS}x}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecordsDigest) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"RecordsDigest({self.hex()})"


def digest_entry(digest: RecordsDigest, updated: str) -> dict[str, str]:
    """The manifest's :data:`DIGEST_FIELD` for a commit stamped ``updated``."""
    return {"sum": digest.hex(), "updated": updated}


def digest_problem(manifest: dict[str, Any]) -> str | None:
    """Why the manifest's :data:`DIGEST_FIELD` is malformed; None when it is absent or well
    formed."""
    entry = manifest.get(DIGEST_FIELD)
    if entry is None:
        return None
    if type(entry) is not dict or set(entry) != {"sum", "updated"}:
        return f"is {entry!r}, expected a map with the fields 'sum' and 'updated'"
    total, stamp = entry["sum"], entry["updated"]
    if type(total) is not str or len(total) != _DIGEST_HEX_DIGITS or not set(total) <= _HEX:
        return f"sum is {total!r}, expected {_DIGEST_HEX_DIGITS} lowercase hex digits"
    if type(stamp) is not str:
        return f"updated is {stamp!r}, expected the manifest's 'updated' stamp (a str)"
    return None


def stored_digest(manifest: dict[str, Any]) -> RecordsDigest | None:
    """The records digest the manifest holds for its committed records.

    None when there is none to believe: absent (a store written before it was kept),
    malformed, or bound to another ``updated`` stamp than the manifest's (copied forward by a
    writer that does not keep it, so it covers older records).
    """
    if manifest.get(DIGEST_FIELD) is None or digest_problem(manifest) is not None:
        return None
    entry = manifest[DIGEST_FIELD]
    if entry["updated"] != manifest.get("updated"):
        return None
    return RecordsDigest(int(entry["sum"], 16))


def canonical_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A store's settings with the defaults of those it may lack filled in, keys sorted: two
    stores whose pixels were made and stored the same way have equal canonical settings."""
    return _canonical({**_SETTING_DEFAULTS, **settings})


def settings_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: {"a": value, "b": value}}`` for each setting whose canonical value differs."""
    left, right = canonical_settings(a), canonical_settings(b)
    return {
        name: {"a": left.get(name), "b": right.get(name)}
        for name in sorted(left.keys() | right.keys())
        if name not in left or name not in right or _typed(left[name]) != _typed(right[name])
    }


def store_identity(settings: dict[str, Any], images: int, digest: RecordsDigest) -> str:
    """The identity of a store with these settings and records: 32 lowercase hex digits."""
    settings = canonical_settings(settings)
    payload = pack([FORMAT_NAME, IDENTITY_SCHEME, settings, images, digest.hex()])
    size = IDENTITY_HEX_DIGITS // 2
    return hashlib.blake2b(payload, digest_size=size, person=b"lmdb-cache-id").hexdigest()
