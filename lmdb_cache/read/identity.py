"""A store's identity as a reader sees it: from the manifest in O(1), or by one walk over the
metadata of a store whose manifest holds no records digest to believe.

The rules (what a record's hash covers, how hashes combine) are ``format.identity``'s; this
module only chooses where the records digest comes from.
"""

from __future__ import annotations

from ..format.identity import RecordsDigest, store_identity, stored_digest
from ..format.schema import decode_key
from .snapshot import Snapshot

_CHUNK = 1024


def snapshot_identity(snap: Snapshot) -> str:
    """The identity of the store as ``snap`` sees it, worked out once per snapshot.

    O(1) when the manifest holds a records digest bound to its last commit (every store
    written since the digest was kept); otherwise :func:`walk_digest` reads every record's
    metadata (O(n), no pixel read).

    Raises:
        CorruptRecordError, StoreDamagedError: the walk met a damaged record (an identity
            that skipped it would name another store).
    """
    if snap.identity is None:
        digest = stored_digest(snap.manifest)
        images = snap.manifest["images"]
        if digest is None:
            digest, images = walk_digest(snap)
        snap.identity = store_identity(snap.manifest["settings"], images, digest)
    return snap.identity


def walk_digest(snap: Snapshot) -> tuple[RecordsDigest, int]:
    """The records digest and record count of ``snap``, from every record's checked metadata
    in storage order, a chunk of keys at a time (O(n); no pixel is read).

    Raises:
        CorruptRecordError, StoreDamagedError: a record fails its checks, or LMDB cannot walk
            the metadata database.
    """
    digest = RecordsDigest()
    count = 0
    last: bytes | None = None
    while True:
        found = snap.keys_after(last, _CHUNK)
        for ekey in found:
            digest.add(ekey, snap.entry(decode_key(ekey), keep=False).meta)
        count += len(found)
        if len(found) < _CHUNK:
            return digest, count
        last = found[-1]
