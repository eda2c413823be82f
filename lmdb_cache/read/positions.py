"""Where a snapshot's positions come from: the store's key index and its order when they
describe the snapshot's commit (``format.keyindex``), else a walk of the keys, kept by the
process's environment while no commit follows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lmdb

from ..errors import StoreDamagedError, damaged
from ..format.keyindex import (
    KEYS_KEY,
    ORDER_KEY,
    KeyIndexError,
    KeyList,
    KeyOrder,
    index_stamp,
    read_index,
    read_order,
)
from ..format.schema import DB_MANIFEST, DB_META

if TYPE_CHECKING:
    from .snapshot import Snapshot


def stored_order(snap: Snapshot) -> KeyOrder | None:
    """The stored key order, when it describes ``snap``'s commit; else None."""
    try:
        value = snap.get(DB_MANIFEST, ORDER_KEY, "key order")
    except lmdb.Error as e:
        raise damaged(snap.path, "to read its key order", e) from e
    if value is None:
        return None
    try:
        stamp, order = read_order(value)
    except KeyIndexError:
        return None  # worked out from the keys instead; validate-cache reports it
    if stamp != str(snap.manifest.get("updated")) or order.count != snap.count():
        return None
    return order


def stored_keys(snap: Snapshot) -> KeyList | None:
    """The stored key index read in place, when it describes ``snap``'s commit; else None.

    Raises:
        StoreDamagedError: the index of this commit fails its checks.
    """
    stamp = str(snap.manifest.get("updated"))
    try:
        value = snap.get(DB_MANIFEST, KEYS_KEY, "key index")
    except lmdb.Error as e:
        raise damaged(snap.path, "to read its key index", e) from e
    if value is None or index_stamp(value) != stamp:
        return None  # none, or one of another commit
    checked = (stamp, len(value))
    try:
        keys = read_index(value, check=snap.shared.index_checked != checked)
    except KeyIndexError as e:
        fix = _recommit(snap.path, snap.manifest)
        raise StoreDamagedError(
            f"cache '{snap.path}' has a damaged key index ({e}); {fix}, and "
            f"'validate-cache {snap.path}' to check the rest"
        ) from None
    snap.shared.index_checked = checked
    if len(keys) != snap.count():
        return None  # records written behind the manifest's back: walk them
    return keys


def walked_keys(snap: Snapshot) -> KeyList:
    """Every key of ``snap``'s ``meta`` database, walked once per commit and process.

    Raises:
        StoreDamagedError: LMDB cannot walk them.
    """
    txn_id = snap.txn.id()
    walked = snap.shared.walked
    if walked is not None and walked[0] == txn_id:
        return walked[1]
    try:
        cursor = snap.txn.cursor(db=snap.dbs[DB_META])
        keys = KeyList.from_raw(cursor.iternext(keys=True, values=False))
    except lmdb.Error as e:
        raise damaged(snap.path, "to list the keys", e) from e
    snap.shared.walked = (txn_id, keys)
    return keys


def _recommit(path: str, manifest: dict[str, Any]) -> str:
    """The commit that writes the manifest database again. A store no folder built must not be
    sent to ``build-cache``: an update from a folder drops the records it lacks."""
    root = manifest.get("source_root")
    if root:
        return (
            f"run 'build-cache {root} -o {path}' to write it again (unchanged images are not "
            "decoded)"
        )
    return (
        f"commit it again with 'lmdb_cache.CacheWriter({path!r}).close()' in Python "
        f"(or 'build-cache SRC -o {path}' if it was built from a folder)"
    )
