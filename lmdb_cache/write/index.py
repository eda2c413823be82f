"""What a store holds, as its writer tracks it, and the one rule for the store's format version.

A writer reads every record's metadata once when it opens the store (``commits.stored_records``)
and keeps this index up to date with each record it queues, so the manifest it commits with
them (record count, pixel bytes, format version, records digest) always agrees with what the
transaction leaves in the store.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..format import codecs
from ..format.identity import DIGEST_FIELD, RecordsDigest, digest_entry
from ..format.schema import has_source
from ..format.versions import required_version


def is_extended(meta: dict[str, Any]) -> bool:
    """Whether a record needs format version 4: an ``extra`` map, or written from an array."""
    return "extra" in meta or not has_source(meta)


class RecordIndex:
    """The valid records of a store by key, and every LMDB key it holds (damaged ones too).

    Args:
        metas: Checked metadata of each valid record.
        stored: Every key of the ``meta`` and ``pixels`` databases, as LMDB holds them.
    """

    def __init__(self, metas: dict[str, dict[str, Any]], stored: set[bytes]) -> None:
        self._metas: dict[str, dict[str, Any]] = {}
        self.stored = stored
        self._bytes = 0
        self._extended = 0
        self._codecs: Counter[str] = Counter()
        # Recomputed from the records at every open: a digest the manifest held (perhaps
        # stale or forged) is never carried forward.
        self._digest = RecordsDigest()
        for key, meta in metas.items():
            self.put(key, meta)

    def __len__(self) -> int:
        return len(self._metas)

    def __contains__(self, key: object) -> bool:
        return key in self._metas

    @property
    def total_bytes(self) -> int:
        """Pixel bytes of every valid record."""
        return self._bytes

    @property
    def damaged(self) -> int:
        """LMDB keys held that are not a valid record (metadata failing its checks, or half a
        record)."""
        return len(self.stored) - len(self._metas)

    def meta(self, key: str) -> dict[str, Any] | None:
        """``key``'s metadata, or None."""
        return self._metas.get(key)

    def keys(self) -> list[str]:
        """The keys of the valid records."""
        return list(self._metas)

    def put(self, key: str, meta: dict[str, Any]) -> None:
        """``key`` now holds a record with ``meta`` (added, or in place of its old one)."""
        self.pop(key)
        self._metas[key] = meta
        self._bytes += meta["nbytes"]
        self._extended += is_extended(meta)
        self._codecs[codecs.of(meta).name] += 1
        self._digest.add(key, meta)

    def pop(self, key: str) -> dict[str, Any] | None:
        """Forget ``key``'s record; its metadata, or None when it had none."""
        meta = self._metas.pop(key, None)
        if meta is not None:
            self._bytes -= meta["nbytes"]
            self._extended -= is_extended(meta)
            self._codecs[codecs.of(meta).name] -= 1
            self._digest.remove(key, meta)
        return meta

    def needing_recode(self, codec: str, level: int | None, skip: set[str]) -> list[str]:
        """Keys (not in ``skip``) of the records stored in another codec or level."""
        return [
            key
            for key, meta in self._metas.items()
            if key not in skip and codecs.needs_recode(meta, codec, level)
        ]

    def format_version(self, codec: str) -> int:
        """The version the store needs while it holds these records and is written with
        ``codec``: 4 with an extended record, else the highest of its codecs' versions."""
        held = {codecs.get(name).format_version for name, n in self._codecs.items() if n > 0}
        return required_version(held | {codecs.get(codec).format_version}, self._extended > 0)

    def manifest_fields(self, codec: str, updated: str) -> dict[str, Any]:
        """The manifest fields that describe these records, for a commit stamped ``updated``
        by a writer of ``codec``: ``images``, ``total_bytes``, ``format_version``, ``updated``
        and the records digest bound to that stamp (``format.identity``)."""
        return {
            "images": len(self),
            "total_bytes": self.total_bytes,
            "format_version": self.format_version(codec),
            "updated": updated,
            DIGEST_FIELD: digest_entry(self._digest, updated),
        }
