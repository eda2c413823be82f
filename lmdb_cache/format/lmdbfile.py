"""The LMDB data file itself, read with plain reads, never mapped: its meta pages, its length,
and LMDB's own offline verifier.

Both sides use these checks before LMDB maps a file: a reader before every snapshot, a writer
before it updates a store, ``validate-cache`` before it walks one. A short file mapped by LMDB
faults (SIGBUS) on the first read past its end; read here, it gives numbers.
"""

from __future__ import annotations

import os
import struct

from ..errors import CacheError, CacheNotFoundError, NotACacheError, TruncatedStoreError

_MDB_MAGIC = 0xBEEFC0DE
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
# MDB_meta after the page header: magic, version, address, mapsize, two 48-byte MDB_db
# records (the first one's 4-byte pad holds the page size), last_pg, txnid.
_META_BYTES = 4 + 4 + 8 + 8 + 48 + 48 + 8 + 8


def _meta(head: bytes, hdrsz: int) -> tuple[int, int, int] | None:
    """(page size, last page number, txnid) of a meta page, or None if it is not one."""
    m = hdrsz
    if len(head) < m + _META_BYTES or _U32.unpack_from(head, m)[0] != _MDB_MAGIC:
        return None
    psize = _U32.unpack_from(head, m + 24)[0]
    last_pg = _U64.unpack_from(head, m + 24 + 96)[0]
    txnid = _U64.unpack_from(head, m + 24 + 96 + 8)[0]
    return psize, last_pg, txnid


def meta_state(data_file: str) -> tuple[int, int, int]:
    """(size of ``data_file``, bytes its newest meta page says it holds, that meta's txnid).

    The meta pages are read with ``pread``, never through a mapping, so a short or damaged
    file gives numbers, not a signal.

    Raises:
        NotACacheError: the file is not an LMDB data file (no meta page magic).
        OSError: the file cannot be opened.
    """
    fd = os.open(data_file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        head = os.pread(fd, 256, 0)
        # LMDB 0.9 pages have a 16-byte header, LMDB 1.0 pages a 24-byte one.
        hdrsz = next((h for h in (16, 24) if _meta(head, h) is not None), None)
        metas = []
        if hdrsz is not None:
            first = _meta(head, hdrsz)
            assert first is not None
            metas.append(first)
            psize = first[0]
            if psize and psize & (psize - 1) == 0:
                second = _meta(os.pread(fd, hdrsz + _META_BYTES, psize), hdrsz)
                if second is not None:
                    metas.append(second)
        size = os.fstat(fd).st_size  # after the metas: a writer only ever grows the file
    finally:
        os.close(fd)
    if not metas:
        if size < 2 * 4096:
            return size, 2 * 4096, 0  # too short to hold its two meta pages
        raise NotACacheError(f"'{data_file}' is not an LMDB data file (no LMDB meta page)")
    psize, last_pg, txnid = max(metas, key=lambda m: m[2])
    return size, max((last_pg + 1) * psize, 2 * psize), txnid


def check_data_file(path: str) -> None:
    """Refuse a store whose ``data.mdb`` is shorter than its meta pages require.

    Args:
        path: The store's folder.

    Raises:
        CacheNotFoundError: nothing at ``path``.
        NotACacheError: ``path`` holds no LMDB data file.
        TruncatedStoreError: ``data.mdb`` is short (an interrupted copy): mapping it would
            fault on the first read past its end.
    """
    if not os.path.exists(path):
        raise CacheNotFoundError(
            f"cache '{path}' does not exist; build it with 'build-cache SRC -o {path}'"
        )
    data_file = os.path.join(path, "data.mdb")
    if not os.path.isdir(path):
        raise NotACacheError(
            f"'{path}' is a file, not a cache folder; pass the folder build-cache wrote"
        )
    if os.path.exists(data_file) and not os.path.isfile(data_file):
        raise NotACacheError(
            f"'{data_file}' is not a regular file, so '{path}' is not a cache; pass the folder "
            "build-cache wrote"
        )
    if not os.path.isfile(data_file):
        raise NotACacheError(
            f"'{path}' holds no LMDB store (no data.mdb); pass the folder build-cache wrote"
        )
    try:
        size, required, _ = meta_state(data_file)
    except OSError as e:
        raise CacheError(f"cannot read '{data_file}': {e.strerror or e}") from e
    if size < required:
        raise TruncatedStoreError(path, size, required)


def structure_problems(path: str) -> list[str]:
    """Every structural problem LMDB's own offline verifier finds in the store's data file.

    ``lmdb.verify`` walks every page with plain reads (never a mapping), so a damaged file
    gives findings, not a signal. Run it while holding a read transaction of the store, so a
    build committing meanwhile cannot reuse the pages it walks.
    """
    from lmdb import verify as lmdb_verify

    try:
        return [str(p) for p in lmdb_verify.verify(path, subdir=True)]
    except lmdb_verify.VerifyError as e:
        return [str(e) or type(e).__name__]
    except OSError as e:
        return [f"cannot read {os.path.join(path, 'data.mdb')}: {e.strerror or e}"]
