"""Label every byte of an LMDB data file: pixels, metadata, structure or free space.

``tools/stress_cache.py flips`` aims single-byte flips at each kind of byte of a cache store
with it, and says which kind each flip hit. The file is parsed with plain reads (it is never
handed to LMDB), following LMDB 0.9's 64-bit layout; ``lmdb.verify`` in py-lmdb walks the same
structures to check them, this module only maps them:

* page header, 16 bytes: pgno u64, pad u16, flags u16, lower u16, upper u16 (an overflow page
  has its page count, u32, in place of lower/upper);
* meta pages 0 and 1: MDB_meta after the header; the one with the larger txnid is committed;
* leaf node: lo u16, hi u16, flags u16, ksize u16, key, data of lo | hi << 16 bytes;
  F_BIGDATA: the data is the u64 number of the overflow pages holding the value after their
  16-byte header; F_SUBDATA: the data is a named database's 48-byte MDB_db record;
* branch node: child pgno lo | hi << 16 | flags << 32, then the key.

Regions: ``pixels`` (value bytes of the ``pixels`` database), ``metadata`` (value bytes of
``manifest``, ``meta`` and ``failures``), ``structure`` (page and node headers, keys, pointer
arrays, both meta pages' used bytes, the free DB's records, named-DB records, overflow headers) and
``free space`` (pages the committed meta cannot reach, slack between lower and upper, node
padding, overflow bytes after the value, the meta pages' unused tails, bytes past the
committed last page).

    python tools/stress/regions.py data/val.lmdb      # bytes per region
"""

from __future__ import annotations

import bisect
import os
import random
import struct
import sys
from dataclasses import dataclass

PIXELS, METADATA, STRUCTURE, FREE = "pixels", "metadata", "structure", "free space"
REGIONS = (PIXELS, METADATA, STRUCTURE, FREE)
# The region of each named database's values; any other database's values count as metadata.
VALUE_REGIONS = {b"pixels": PIXELS, b"manifest": METADATA, b"meta": METADATA, b"failures": METADATA}

_HDR = 16
_MAGIC = 0xBEEFC0DE
_META_USED = _HDR + 136  # header + MDB_meta
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_LEAF2 = 0x01, 0x02, 0x04, 0x20
_F_BIGDATA, _F_SUBDATA, _F_DUPDATA = 0x01, 0x02, 0x04
_MDB_DUPSORT = 0x04
_P_INVALID = (1 << 64) - 1
_PAGE = struct.Struct("=QHHHH")  # pgno, pad, flags, lower, upper
_NODE = struct.Struct("=HHHH")  # lo, hi, flags, ksize
_DB = struct.Struct("=IHHQQQQQ")  # pad, flags, depth, branch, leaf, overflow, entries, root
_META = struct.Struct("=IIQQ48s48sQQ")  # magic, version, address, mapsize, free, main, last, txn
_U16, _U32, _U64 = struct.Struct("=H"), struct.Struct("=I"), struct.Struct("=Q")


class LayoutError(ValueError):
    """The file is not an intact 64-bit LMDB 0.9 data file of the kind this module maps."""


@dataclass(frozen=True)
class Span:
    """Bytes ``[start, end)`` of the file, their region and what they are."""

    start: int
    end: int
    region: str
    what: str


class RegionMap:
    """The spans covering a data file end to end, with lookup and sampling by region.

    Attributes:
        size: The file's size in bytes.
        psize: LMDB's page size.
        committed_bytes: ``(last_pg + 1) * psize`` of the committed meta: LMDB needs the file
            to be at least this long.
        txnid: The committed transaction id.
    """

    def __init__(self, spans: list[Span], size: int, psize: int, last_pg: int, txnid: int):
        self.spans = spans
        self.size = size
        self.psize = psize
        self.committed_bytes = (last_pg + 1) * psize
        self.txnid = txnid
        self._starts = [s.start for s in spans]
        self._by_region: dict[str, tuple[list[Span], list[int]]] = {}
        for region in REGIONS:
            chosen = [s for s in spans if s.region == region]
            ends, total = [], 0
            for s in chosen:
                total += s.end - s.start
                ends.append(total)
            self._by_region[region] = (chosen, ends)

    def at(self, offset: int) -> Span:
        """The span holding byte ``offset``."""
        if not 0 <= offset < self.size:
            raise IndexError(f"offset {offset} is outside the {self.size}-byte file")
        return self.spans[bisect.bisect_right(self._starts, offset) - 1]

    def totals(self) -> dict[str, int]:
        """Bytes per region."""
        return {r: (ends[-1] if ends else 0) for r, (_, ends) in self._by_region.items()}

    def sample(self, rng: random.Random, region: str) -> int:
        """A byte offset drawn uniformly from the bytes of ``region``.

        Raises:
            ValueError: the file holds no byte of that region.
        """
        chosen, ends = self._by_region[region]
        if not ends:
            raise ValueError(f"the file holds no {region} bytes")
        k = rng.randrange(ends[-1])
        i = bisect.bisect_right(ends, k)
        before = ends[i - 1] if i else 0
        return chosen[i].start + (k - before)


class _Mapper:
    """One pass over the file: every reachable page, labelled byte by byte."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.spans: list[Span] = []
        self.pages: set[int] = set()  # pages reached from the committed meta (their own spans)
        self.psize = 0
        self.next_pgno = 0

    def add(self, start: int, end: int, region: str, what: str) -> None:
        if end > start:
            self.spans.append(Span(start, end, region, what))

    def read(self, offset: int, n: int) -> bytes:
        data = os.pread(self.fd, n, offset)
        if len(data) != n:
            raise LayoutError(f"short read of {n} bytes at offset {offset} (file is {self.size})")
        return data

    def claim(self, pgno: int, what: str) -> None:
        if not 2 <= pgno < self.next_pgno or pgno in self.pages:
            raise LayoutError(f"{what}: page {pgno} is out of range or reached twice")
        self.pages.add(pgno)

    def metas(self) -> tuple[bytes, bytes, int, int]:
        """Label both meta pages; return the committed meta's free and main DB records."""
        head = self.read(0, _META_USED)
        magic = _U32.unpack_from(head, _HDR)[0]
        self.psize = _U32.unpack_from(head, _HDR + 24)[0]
        if magic != _MAGIC or self.psize < 512 or self.psize & (self.psize - 1):
            raise LayoutError("not a 64-bit LMDB 0.9 data file (no meta page at offset 0)")
        metas = []
        for pgno in (0, 1):
            raw = self.read(pgno * self.psize, _META_USED)
            metas.append(_META.unpack_from(raw, _HDR))
        committed = 0 if metas[0][7] > metas[1][7] else 1
        for pgno in (0, 1):
            role = "committed" if pgno == committed else "previous"
            base = pgno * self.psize
            self.add(base, base + _META_USED, STRUCTURE, f"meta page {pgno} ({role})")
            self.add(base + _META_USED, base + self.psize, FREE, f"meta page {pgno} unused tail")
        _, _, _, _, free_db, main_db, last_pg, txnid = metas[committed]
        self.next_pgno = last_pg + 1
        if self.next_pgno * self.psize > self.size:
            raise LayoutError(f"the file is shorter than its committed last page {last_pg}")
        return free_db, main_db, last_pg, txnid

    def tree(self, record: bytes, name: str, value_region: str) -> list[tuple[bytes, bytes]]:
        """Label the pages of one B-tree; returns the named databases it holds."""
        _, flags, _, _, _, _, _, root = _DB.unpack(record)
        if flags & _MDB_DUPSORT:
            raise LayoutError(f"database {name!r} is DUPSORT, which a cache never writes")
        named: list[tuple[bytes, bytes]] = []
        stack = [] if root == _P_INVALID else [root]
        while stack:
            pgno = stack.pop()
            self.claim(pgno, f"{name} tree")
            base = pgno * self.psize
            page = self.read(base, self.psize)
            _, _, pflags, lower, upper = _PAGE.unpack_from(page)
            if pflags & _P_LEAF2 or not pflags & (_P_BRANCH | _P_LEAF):
                raise LayoutError(f"page {pgno} of {name!r} has unexpected flags {pflags:#x}")
            if not _HDR <= lower <= upper <= self.psize:
                raise LayoutError(f"page {pgno} of {name!r} has bad lower/upper {lower}/{upper}")
            kind = "branch" if pflags & _P_BRANCH else "leaf"
            start = len(self.spans)
            self.add(base, base + lower, STRUCTURE, f"{name} {kind} page {pgno} header+pointers")
            self.add(base + lower, base + upper, FREE, f"{name} {kind} page {pgno} slack")
            for i in range((lower - _HDR) // 2):
                at = _U16.unpack_from(page, _HDR + 2 * i)[0]
                if kind == "branch":
                    lo, hi, nflags, ksize = _NODE.unpack_from(page, at)
                    stack.append(lo | hi << 16 | nflags << 32)
                    self.add(base + at, base + at + 8 + ksize, STRUCTURE, f"{name} branch node")
                else:
                    self._leaf_node(page, base, at, name, value_region, named)
            self._fill_page(start, base, name)
        return named

    def _leaf_node(self, page: bytes, base: int, at: int, name: str, value_region: str,
                   named: list[tuple[bytes, bytes]]) -> None:  # fmt: skip
        lo, hi, nflags, ksize = _NODE.unpack_from(page, at)
        dsize = lo | hi << 16
        key = page[at + 8 : at + 8 + ksize]
        data = at + 8 + ksize
        label = f"{name} {key.decode('utf-8', 'backslashreplace')[:60]!r}"
        self.add(base + at, base + data, STRUCTURE, f"{label} node header+key")
        if nflags & _F_DUPDATA:
            raise LayoutError(f"{label} has duplicate data, which a cache never writes")
        if nflags & _F_SUBDATA:
            self.add(base + data, base + data + 48, STRUCTURE, f"{label} named-DB record")
            named.append((key, page[data : data + 48]))
        elif nflags & _F_BIGDATA:
            self.add(base + data, base + data + 8, STRUCTURE, f"{label} overflow page number")
            self._overflow(_U64.unpack_from(page, data)[0], dsize, label, value_region)
        else:
            self.add(base + data, base + data + dsize, value_region, f"{label} value")

    def _overflow(self, pgno: int, dsize: int, label: str, value_region: str) -> None:
        base = pgno * self.psize
        head = self.read(base, _HDR)
        pages = _U32.unpack_from(head, 12)[0]
        if not _PAGE.unpack(head)[2] & _P_OVERFLOW or pages != (_HDR - 1 + dsize) // self.psize + 1:
            raise LayoutError(f"{label}: page {pgno} is not its {dsize}-byte overflow extent")
        for p in range(pgno, pgno + pages):
            self.claim(p, label)
        end = base + pages * self.psize
        self.add(base, base + _HDR, STRUCTURE, f"{label} overflow header")
        self.add(base + _HDR, base + _HDR + dsize, value_region, f"{label} value")
        self.add(base + _HDR + dsize, end, FREE, f"{label} overflow tail")

    def _fill_page(self, start: int, base: int, name: str) -> None:
        """Label what no node covers inside one tree page (the padding after odd-sized nodes)."""
        inside = sorted((s for s in self.spans[start:] if base <= s.start < base + self.psize),
                        key=lambda s: s.start)  # fmt: skip
        at = base
        for s in inside + [Span(base + self.psize, base + self.psize, FREE, "")]:
            self.add(at, s.start, FREE, f"{name} page {base // self.psize} node padding")
            at = max(at, s.end)


def map_regions(path: str | os.PathLike[str]) -> RegionMap:
    """Parse an LMDB data file (or a store folder holding ``data.mdb``) into labelled spans.

    Raises:
        LayoutError: the file is damaged or holds structures a cache never writes.
        OSError: it cannot be read.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "data.mdb")
    fd = os.open(path, os.O_RDONLY)
    try:
        m = _Mapper(fd, os.fstat(fd).st_size)
        free_db, main_db, last_pg, txnid = m.metas()
        m.tree(free_db, "free DB", STRUCTURE)  # its values list free pages
        for key, record in m.tree(main_db, "main DB", STRUCTURE):
            db_name = key.decode("utf-8", "backslashreplace")
            m.tree(record, db_name, VALUE_REGIONS.get(key, METADATA))
    finally:
        os.close(fd)
    return RegionMap(_complete(m), m.size, m.psize, last_pg, txnid)


def _complete(m: _Mapper) -> list[Span]:
    """Sort the spans, refuse overlaps and label every gap as free space."""
    spans = sorted(m.spans, key=lambda s: s.start)
    out: list[Span] = []
    at = 0
    for s in spans:
        if s.start < at:
            raise LayoutError(f"{s.what} overlaps {out[-1].what} at offset {s.start}")
        if s.start > at:
            out += _gap(at, s.start, m.psize, m.next_pgno)
        out.append(s)
        at = s.end
    return out + _gap(at, m.size, m.psize, m.next_pgno)


def _gap(start: int, end: int, psize: int, next_pgno: int) -> list[Span]:
    committed = next_pgno * psize
    out = []
    if start < min(end, committed):
        first, last = start // psize, (min(end, committed) - 1) // psize
        what = f"pages {first}-{last} not reachable from the committed meta"
        out.append(Span(start, min(end, committed), FREE, what))
    if end > max(start, committed):
        out.append(Span(max(start, committed), end, FREE, "past the committed last page"))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python tools/stress/regions.py STORE_OR_DATA_MDB", file=sys.stderr)
        return 2
    regions = map_regions(args[0])
    print(f"{regions.size} bytes, page size {regions.psize}, txnid {regions.txnid}, "
          f"committed {regions.committed_bytes} bytes")  # fmt: skip
    for region, nbytes in regions.totals().items():
        print(f"  {region:<12} {nbytes:>12} bytes {100 * nbytes / max(regions.size, 1):6.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
