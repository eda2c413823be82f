"""Writing values into a store the way an attacker (or a bit flip) could, bypassing the writer.

``sealed`` builds the sealed layout of docs/format.md by hand (msgpack payload, then a
little-endian CRC-32 of the key and the payload), independently of ``schema.seal``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import lmdb
import msgpack


def sealed(value: object, key: bytes) -> bytes:
    """``value`` (an object to msgpack, or raw payload bytes) with a correct seal."""
    payload = value if isinstance(value, bytes) else msgpack.packb(value, use_bin_type=True)
    return payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(key)))


def put_raw(store: Path, db: bytes, key: bytes, value: bytes | None) -> None:
    """Write (or delete, with None) one raw value into a named database."""
    env = lmdb.open(str(store), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            handle = env.open_db(db, txn=txn)
            if value is None:
                txn.delete(key, db=handle)
            else:
                txn.put(key, value, db=handle)
    finally:
        env.close()
