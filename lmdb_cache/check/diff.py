"""Compare two stores record by record (``lmdb-cache diff``): keys only in one, records that
differ, settings that differ.

Identities first: two stores with the same identity and settings are the same, and nothing is
walked (O(1) for stores whose manifest keeps its records digest). Otherwise both metadata
databases are walked once, in storage order (keys sorted by their bytes), side by side: a merge
walk that reads one record's metadata at a time from each store and never a pixel. Records are
compared on the fields their identity covers (``format.identity.record_differences``), so two
stores differ here exactly when their identities do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..format.identity import record_differences, settings_differences
from ..format.schema import display_key
from ..read.reader import CacheReader


@dataclass
class StoreDiff:
    """What ``diff_caches`` found between store A and store B.

    Attributes:
        a, b: The stores' paths.
        identity_a, identity_b: Their identities (``CacheReader.identity``).
        only_a, only_b: Keys held by one store only, in storage order.
        changed: ``(key, names of the fields that differ)`` for keys in both, in storage order.
        settings: ``{name: {"a": value, "b": value}}`` for each setting that differs.
        walked: Whether the records were compared (False: equal identities and settings).
        warnings: Sentences about what the comparison could not reconcile.
    """

    a: str
    b: str
    identity_a: str
    identity_b: str
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    changed: list[tuple[str, list[str]]] = field(default_factory=list)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    walked: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        """Same identity, settings and records."""
        return self.identity_a == self.identity_b and not (
            self.only_a or self.only_b or self.changed or self.settings
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "same": self.same,
            "a": self.a,
            "b": self.b,
            "identity": {"a": self.identity_a, "b": self.identity_b},
            "only_a": self.only_a,
            "only_b": self.only_b,
            "changed": [{"key": key, "fields": fields} for key, fields in self.changed],
            "settings": self.settings,
            "walked": self.walked,
            "warnings": self.warnings,
        }


def diff_caches(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> StoreDiff:
    """Compare the records and settings of stores ``a`` and ``b``, each from one snapshot.

    Args:
        a, b: The stores' folders.

    Returns:
        A :class:`StoreDiff` (``same`` when nothing differs).

    Raises:
        CacheNotFoundError, NotACacheError: a path holds no store.
        FormatVersionError, TruncatedStoreError, StoreDamagedError, CorruptRecordError: a
            store cannot be read (a damaged record stops the comparison).
    """
    with (
        CacheReader(a, snapshot_seconds=None) as left,
        CacheReader(b, snapshot_seconds=None) as right,
    ):
        out = StoreDiff(
            os.fspath(a),
            os.fspath(b),
            left.identity,
            right.identity,
            settings=settings_differences(left.settings, right.settings),
        )
        if out.identity_a == out.identity_b and not out.settings:
            return out
        _merge_walk(left, right, out)
    if out.identity_a != out.identity_b and not (
        out.only_a or out.only_b or out.changed or out.settings
    ):
        out.warnings.append(
            "the identities differ but no record or setting does: a manifest holds a wrong "
            f"records digest; run 'validate-cache {out.a}' and 'validate-cache {out.b}'"
        )
    return out


def _keys(reader: CacheReader) -> Iterator[tuple[bytes, str]]:
    """``(LMDB key bytes, key)`` in storage order, streamed."""
    for key in reader.iter_keys():
        yield key.encode("utf-8", "surrogateescape"), key


def _merge_walk(left: CacheReader, right: CacheReader, out: StoreDiff) -> None:
    """Walk both stores' keys in storage order side by side; compare the metadata of keys in
    both (no pixel is read)."""
    out.walked = True
    lefts, rights = _keys(left), _keys(right)
    a, b = next(lefts, None), next(rights, None)
    while a is not None or b is not None:
        if a is not None and (b is None or a[0] < b[0]):
            out.only_a.append(display_key(a[1]))
            a = next(lefts, None)
        elif b is not None and (a is None or b[0] < a[0]):
            out.only_b.append(display_key(b[1]))
            b = next(rights, None)
        elif a is not None and b is not None:  # the same key
            fields = record_differences(left.meta_uncached(a[1]), right.meta_uncached(b[1]))
            if fields:
                out.changed.append((display_key(a[1]), fields))
            a, b = next(lefts, None), next(rights, None)
