"""Writing values into a store the way an attacker (or a bit flip) could, bypassing the writer;
and a deliberately slow build.

``sealed`` builds the sealed layout of docs/format.md by hand (msgpack payload, then a
little-endian CRC-32 of the key and the payload), independently of ``schema.seal``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import lmdb
import msgpack

from lmdb_cache import CacheReader


def sealed(value: object, key: bytes) -> bytes:
    """``value`` (an object to msgpack, or raw payload bytes) with a correct seal."""
    payload = value if isinstance(value, bytes) else msgpack.packb(value, use_bin_type=True)
    return payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(key)))


def put_raw(store: Path, db: bytes, key: bytes, value: bytes | None) -> None:
    """Write (or delete, with None) one raw value into a named database."""
    size = (Path(store) / "data.mdb").stat().st_size if (Path(store) / "data.mdb").exists() else 0
    env = lmdb.open(str(store), max_dbs=8, map_size=max(10 << 20, 2 * size + (64 << 20)))
    try:
        with env.begin(write=True) as txn:
            handle = env.open_db(db, txn=txn)
            if value is None:
                txn.delete(key, db=handle)
            else:
                txn.put(key, value, db=handle)
    finally:
        env.close()


def manifest_of(store: Path) -> dict:
    """The store's manifest, as a reader decodes it."""
    with CacheReader(store) as reader:
        return reader.info


def put_manifest(store: Path, manifest: dict) -> None:
    """Replace the store's manifest with ``manifest``, correctly sealed."""
    put_raw(store, b"manifest", b"manifest", sealed(manifest, b"manifest"))


def strip_digest(store: Path) -> None:
    """Make ``store`` look written before the manifest kept its records digest: the same
    manifest without the ``records_digest`` field."""
    manifest = manifest_of(store)
    del manifest["records_digest"]
    put_manifest(store, manifest)


# A build whose decoding is slowed down (``seconds`` per image), so that a test can act while it
# runs: `python -c SLOW_BUILD SRC OUT MAX_SIDE SECONDS [rebuild]`.
SLOW_BUILD = """
import sys, time
from lmdb_cache import build_cache
from lmdb_cache.write import decoding
slow = decoding.decode_bytes
def decode_slowly(*args, **kwargs):
    time.sleep(float(sys.argv[4]))
    return slow(*args, **kwargs)
decoding.decode_bytes = decode_slowly
build_cache(sys.argv[1], sys.argv[2], max_side=int(sys.argv[3]), workers=1, commit_images=4,
            rebuild=sys.argv[5:] == ["rebuild"])
"""


def bomb_frame(nbytes: int) -> bytes:
    """A valid Zstandard frame of ``nbytes`` zero bytes built by hand from RLE blocks: 4 bytes
    per 128 KiB, so 3.2 GB fit in about 100 KB (RFC 8878: magic, a frame header descriptor
    with an 8-byte content size and a single segment, then 3-byte block headers
    ``last | type << 1 | size << 3`` with type 1, RLE, each followed by its one byte)."""
    block = 128 << 10
    out = bytearray(struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", nbytes))
    left = nbytes
    while left:
        size = min(block, left)
        left -= size
        header = int(left == 0) | 1 << 1 | size << 3
        out += header.to_bytes(3, "little") + b"\x00"
    return bytes(out)
