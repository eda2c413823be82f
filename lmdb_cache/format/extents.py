"""Where a value lies in ``data.mdb``, checked with plain file reads before LMDB touches it.

py-lmdb faults in every page of a value before it returns it (``preload``: one byte read per
4 KiB, with the GIL released). The length comes from the value's leaf-node header (``mn_lo |
mn_hi << 16``); for a value kept on overflow pages LMDB never compares it with the file, so
one flipped header byte makes ``txn.get`` read past the end of the mapped file, and the
process dies of SIGBUS before any check of ours could run.

So every ``get`` of the read side asks this module first. For the snapshot's transaction it
finds the leaf page LMDB will read, exactly as LMDB finds it, and checks every node of that
page: a value kept in the page must end inside the page, a value on overflow pages must end
inside the snapshot's last page (``data.mdb`` is at least that long: ``lmdbfile``
checks the file against its meta page before every snapshot). Whatever node LMDB then picks on
that page, the pages py-lmdb touches lie inside the file.

Soundness. The pages read here are the snapshot's own: a transaction's pages are not reused
while it lives, and the file is the one LMDB mapped (same device and inode). LMDB reaches a
leaf from the database's root through branch pages with a binary search; on a page whose keys
(after the first, which LMDB never compares) strictly increase, that search picks the last
child whose key is at most the one asked, which is what ``bisect`` picks here. A branch page
whose keys do not increase, a page of another type, a page number past the snapshot's last
page, a node or pointer outside its page: each is damage, reported before LMDB reads it. The
named databases' roots come from the main database the same way, the main root from the meta
page of the snapshot's transaction.

Cost: a page is read and checked once per transaction id (branch pages parsed, leaf pages
remembered as checked), so a store that no build changes is checked once per process; then a
read costs a bisect per tree level (docs/benchmarks.md).

The layout is LMDB 0.9's on 64-bit systems (the one py-lmdb builds): a 16-byte page header
``{pgno u64, pad u16, flags u16, lower u16, upper u16}``, nodes ``{lo u16, hi u16, flags u16,
ksize u16, key, data}``, a branch node's child ``lo | hi << 16 | flags << 32``, meta pages 0
and 1 holding ``MDB_meta`` after their header.
"""

from __future__ import annotations

import os
import struct
import threading
from bisect import bisect_right

_HDR = 16
_MAGIC = 0xBEEFC0DE
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_META, _P_LEAF2 = 0x01, 0x02, 0x04, 0x08, 0x20
_F_BIGDATA, _F_SUBDATA, _F_DUPDATA = 0x01, 0x02, 0x04
_P_INVALID = (1 << 64) - 1
_PAGE = struct.Struct("=QHHHH")  # pgno, pad, flags, lower, upper
_NODE = struct.Struct("=HHHH")  # lo, hi, flags, ksize
_U64 = struct.Struct("=Q")
# MDB_meta after the page header: magic, version, address, mapsize, free and main MDB_db
# (48 bytes each), last_pg, txnid.
_META = struct.Struct("=IIQQ48s48sQQ")
_DB = struct.Struct("=IHHQQQQQ")  # pad, flags, depth, branch, leaf, overflow, entries, root
# LMDB's cursor stack: no tree it walks is deeper.
_MAX_DEPTH = 32
# Parsed branch pages and checked leaf pages kept per transaction id, at most.
_MAX_BRANCHES = 4096
_MAX_LEAVES = 1 << 20
# Transaction ids whose trees are kept (readers of one process may hold different snapshots).
_MAX_TREES = 4


class ExtentError(ValueError):
    """A page on the way to a value, or a value's extent, is not what LMDB could read safely.

    Attributes:
        reason: What is wrong, naming the page (the message).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Tree:
    """The B-trees of ``data.mdb`` as one transaction sees them, read with ``pread``."""

    def __init__(self, fd: int, psize: int, next_pgno: int, main: bytes) -> None:
        self._fd = fd
        self.psize = psize
        self.next_pgno = next_pgno
        self._main = _root(main)
        self._roots: dict[bytes, tuple[int, str]] = {}
        self._branches: dict[int, tuple[list[bytes], list[int], bool]] = {}
        self._leaves: set[int] = set()
        self._lock = threading.Lock()

    def check(self, db: bytes, key: bytes) -> None:
        """Raise unless every value on the leaf page LMDB reads for ``key`` in ``db`` lies
        inside the file (nothing to check when the database is empty).

        Raises:
            ExtentError: naming the database and the page.
        """
        roots = self._roots
        root = roots.get(db)
        if root is None:
            with self._lock:
                root = roots[db] = self._named_root(db)
        pgno, name = root
        branches = self._branches
        for _ in range(_MAX_DEPTH):
            if pgno == _P_INVALID or pgno in self._leaves:
                return
            parsed = branches.get(pgno)
            if parsed is None:
                with self._lock:
                    parsed = self._visit(pgno, name)
                if parsed is None:
                    return  # a leaf, checked whole
            keys, children, ordered = parsed
            pgno = children[bisect_right(keys, key, 1) - 1 if ordered else _child(keys, key)]
        raise ExtentError(f"database {name!r} is deeper than {_MAX_DEPTH} pages (a page loop)")

    def will_need(self, db: bytes, key: bytes) -> None:
        """Tell the kernel the value under ``key`` in ``db`` is about to be read
        (``posix_fadvise(WILLNEED)`` on its range, see :meth:`value_range`), so its pages are
        read together, before the first fault; nothing for a value inside its leaf page.

        Raises:
            ExtentError: see :meth:`value_range`.
        """
        found = self.value_range(db, key)
        if found is not None:
            os.posix_fadvise(self._fd, found[0], found[1], os.POSIX_FADV_WILLNEED)

    def value_range(self, db: bytes, key: bytes) -> tuple[int, int] | None:
        """``(offset, length)`` in ``data.mdb`` of the value under ``key`` in ``db`` when it
        lies on overflow pages (a pixel record), found with ``pread`` alone: the range a
        read-ahead hint can name before LMDB touches the value. None when the key is absent
        or its value sits inside its leaf page.

        Raises:
            ExtentError: the path to the key's leaf is damaged.
        """
        self.check(db, key)  # the leaf and its values lie inside the file
        pgno, name = self._roots[db]
        for _ in range(_MAX_DEPTH):
            if pgno == _P_INVALID:
                return None
            parsed = self._branches.get(pgno)
            if parsed is None:
                break
            keys, children, ordered = parsed
            pgno = children[bisect_right(keys, key, 1) - 1 if ordered else _child(keys, key)]
        page, flags, count = self._read(pgno, name)
        if not flags & _P_LEAF:
            return None
        nodes = [
            self._node(page, pgno, at, name) for at in struct.unpack_from(f"={count}H", page, _HDR)
        ]
        i, exact = _search([node[3] for node in nodes], key, 0)
        if not exact:
            return None
        size, nflags, start, _ = nodes[i]
        if not nflags & _F_BIGDATA:
            return None
        first = _U64.unpack_from(page, start)[0]
        return first * self.psize + _HDR, size

    # --- pages -----------------------------------------------------------------------------

    def _read(self, pgno: int, name: str) -> tuple[bytes, int, int]:
        """The page, its flags and its node count; its header and pointers checked."""
        if not 2 <= pgno < self.next_pgno:
            raise ExtentError(
                f"database {name!r} points at page {pgno}, outside pages 2..{self.next_pgno - 1}"
            )
        page = os.pread(self._fd, self.psize, pgno * self.psize)
        if len(page) != self.psize:
            raise ExtentError(f"page {pgno} of database {name!r} is cut short in the file")
        _, _, flags, lower, upper = _PAGE.unpack_from(page)
        if flags & (_P_OVERFLOW | _P_META | _P_LEAF2) or not flags & (_P_BRANCH | _P_LEAF):
            raise ExtentError(f"page {pgno} of database {name!r} has page flags {flags:#x}")
        if not _HDR <= lower <= upper <= self.psize or (lower - _HDR) % 2:
            raise ExtentError(
                f"page {pgno} of database {name!r} has lower/upper {lower}/{upper} outside "
                f"its {self.psize} bytes"
            )
        return page, flags, (lower - _HDR) // 2

    def _visit(self, pgno: int, name: str) -> tuple[list[bytes], list[int], bool] | None:
        """Parse a branch page (returned), or check a leaf page whole (None)."""
        page, flags, count = self._read(pgno, name)
        offsets = struct.unpack_from(f"={count}H", page, _HDR)
        if flags & _P_BRANCH:
            parsed = self._branch(page, pgno, offsets, name)
            if len(self._branches) >= _MAX_BRANCHES:
                self._branches.clear()
            self._branches[pgno] = parsed
            return parsed
        self._leaf(page, pgno, offsets, name)
        if len(self._leaves) >= _MAX_LEAVES:
            self._leaves.clear()
        self._leaves.add(pgno)
        return None

    def _node(self, page: bytes, pgno: int, at: int, name: str) -> tuple[int, int, int, bytes]:
        psize = self.psize
        if not _HDR <= at <= psize - _NODE.size:
            raise ExtentError(
                f"page {pgno} of database {name!r} has a node pointer {at} outside it"
            )
        lo, hi, nflags, ksize = _NODE.unpack_from(page, at)
        end = at + _NODE.size + ksize
        if end > psize:
            raise ExtentError(f"page {pgno} of database {name!r} has a key running past the page")
        return lo | hi << 16, nflags, end, page[at + _NODE.size : end]

    def _branch(
        self, page: bytes, pgno: int, offsets: tuple[int, ...], name: str
    ) -> tuple[list[bytes], list[int], bool]:
        """Keys, child page numbers, and whether the keys LMDB compares strictly increase."""
        if len(offsets) < 2:
            raise ExtentError(f"branch page {pgno} of database {name!r} has {len(offsets)} child")
        keys: list[bytes] = []
        children: list[int] = []
        ordered = True
        for at in offsets:
            low, nflags, _, key = self._node(page, pgno, at, name)
            if len(keys) >= 2 and key <= keys[-1]:
                ordered = False  # damaged; LMDB's own search is followed step by step
            keys.append(key)
            children.append(low | nflags << 32)
        return keys, children, ordered

    def _leaf(self, page: bytes, pgno: int, offsets: tuple[int, ...], name: str) -> None:
        psize, limit = self.psize, self.next_pgno * self.psize
        for at in offsets:
            size, nflags, start, _ = self._node(page, pgno, at, name)
            if nflags & (_F_SUBDATA | _F_DUPDATA):
                raise ExtentError(
                    f"leaf page {pgno} of database {name!r} has a node with flags {nflags:#x}, "
                    "which a cache never writes"
                )
            if not nflags & _F_BIGDATA:
                if start + size > psize:
                    raise ExtentError(
                        f"leaf page {pgno} of database {name!r} has a value of {size} bytes "
                        "running past the page"
                    )
                continue
            if start + _U64.size > psize:
                raise ExtentError(f"leaf page {pgno} of database {name!r} has a node past the page")
            first = _U64.unpack_from(page, start)[0]
            if not 2 <= first < self.next_pgno or first * psize + _HDR + size > limit:
                raise ExtentError(
                    f"leaf page {pgno} of database {name!r} has a value of {size} bytes on "
                    f"page {first}, running past the last page {self.next_pgno - 1} "
                    f"({limit} bytes)"
                )

    # --- roots -----------------------------------------------------------------------------

    def _named_root(self, db: bytes) -> tuple[int, str]:
        """The root page of a named database, found in the main database as LMDB finds it."""
        name = db.decode("utf-8", "backslashreplace")
        pgno = self._main
        for _ in range(_MAX_DEPTH):
            if pgno == _P_INVALID:
                break
            page, flags, count = self._read(pgno, "main")
            offsets = struct.unpack_from(f"={count}H", page, _HDR)
            if flags & _P_BRANCH:
                keys, children, _ = self._branch(page, pgno, offsets, "main")
                pgno = children[_child(keys, db)]
                continue
            nodes = [self._node(page, pgno, at, "main") for at in offsets]
            i, exact = _search([node[3] for node in nodes], db, 0)
            if not exact:
                break
            size, nflags, start, _ = nodes[i]
            if nflags & (_F_SUBDATA | _F_DUPDATA) != _F_SUBDATA or size != _DB.size:
                raise ExtentError(f"the main database's record of {name!r} is damaged")
            if start + size > self.psize:
                raise ExtentError(f"the main database's record of {name!r} runs past its page")
            return _root(page[start : start + size]), name
        return _P_INVALID, name  # LMDB would not open it: the caller's open_db has failed


def _search(keys: list[bytes], key: bytes, low: int) -> tuple[int, bool]:
    """LMDB's ``mdb_node_search`` over a page's keys, step for step (keys compared as
    ``mdb_cmp_memn`` compares them, which is how Python compares bytes): the index it stops at
    and whether the key there is equal."""
    high, i, rc = len(keys) - 1, 0, 0
    while low <= high:
        i = (low + high) >> 1
        other = keys[i]
        rc = (key > other) - (key < other)
        if rc == 0:
            break
        if rc > 0:
            low = i + 1
        else:
            high = i - 1
    if rc > 0:
        i += 1
    return i, rc == 0 and len(keys) > 0


def _child(keys: list[bytes], key: bytes) -> int:
    """The child LMDB's ``mdb_page_search_root`` descends to from a branch page's keys."""
    i, exact = _search(keys, key, 1)
    if i >= len(keys):
        return len(keys) - 1
    return i if exact else i - 1


def _root(record: bytes) -> int:
    """The root page number of an ``MDB_db`` record (``_P_INVALID`` for an empty database)."""
    return int(_DB.unpack(record)[7])


class Extents:
    """The :class:`Tree` of each recent transaction of one store, for one process.

    Opened on the file LMDB mapped (the caller compares :meth:`identity` with what it
    mapped), closed with the environment.
    """

    def __init__(self, data_file: str) -> None:
        self.data_file = data_file
        self.pid = os.getpid()
        self._fd: int | None = os.open(data_file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._trees: dict[int, Tree] = {}
        self._lock = threading.Lock()

    def identity(self) -> tuple[int, int]:
        """(device, inode) of the file this reads."""
        st = os.fstat(self._require())
        return st.st_dev, st.st_ino

    def tree(self, txnid: int) -> Tree | None:
        """The trees as transaction ``txnid`` sees them, or None when its meta page has been
        overwritten since it began (two later commits): begin a new transaction then.

        Raises:
            ExtentError: the meta page is not one LMDB 0.9 writes on a 64-bit system.
        """
        tree = self._trees.get(txnid)
        if tree is not None:
            return tree
        with self._lock:
            fd = self._require()
            found = _meta_of(fd, txnid)
            if found is None:
                return None
            psize, next_pgno, main = found
            tree = Tree(fd, psize, next_pgno, main)
            if len(self._trees) >= _MAX_TREES:
                self._trees.pop(next(iter(self._trees)))
            self._trees[txnid] = tree
            return tree

    def close(self) -> None:
        """Close the file (a fork child closes its inherited copy). Safe to call twice."""
        fd, self._fd = self._fd, None
        self._trees.clear()
        if fd is not None:
            os.close(fd)

    def _require(self) -> int:
        if self._fd is None:
            raise ValueError(f"the extents of '{self.data_file}' are closed")
        return self._fd


def _meta_of(fd: int, txnid: int) -> tuple[int, int, bytes] | None:
    """(page size, next page number, main MDB_db record) of the meta page of ``txnid``.

    Each meta page is read twice and used only if both reads agree, so a meta page being
    written by a commit at that moment is never half believed.
    """
    head = os.pread(fd, _HDR + _META.size, 0)
    if len(head) < _HDR + _META.size or _META.unpack_from(head, _HDR)[0] != _MAGIC:
        raise ExtentError("meta page 0 is not an LMDB 0.9 meta page of a 64-bit system")
    psize = _DB.unpack_from(head, _HDR + 24)[0]  # the free DB's md_pad holds the page size
    if psize < 512 or psize & (psize - 1):
        raise ExtentError(f"meta page 0 gives a page size of {psize}")
    for pgno in (0, 1):
        first = os.pread(fd, _HDR + _META.size, pgno * psize)
        if len(first) < _HDR + _META.size:
            continue
        magic, _, _, _, _, main, last_pg, meta_txnid = _META.unpack_from(first, _HDR)
        if magic != _MAGIC or meta_txnid != txnid:
            continue
        if os.pread(fd, _HDR + _META.size, pgno * psize) != first:
            return None
        return psize, last_pg + 1, main
    return None


def describe(error: ExtentError, path: str, db: bytes, key: str, fix: str) -> str:
    """The message of a damaged extent met while reading ``key``."""
    return (
        f"cache '{path}' is damaged: LMDB cannot safely read {key!r} of database "
        f"'{db.decode()}' ({error.reason}); {fix}"
    )
