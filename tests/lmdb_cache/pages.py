"""Where things lie inside a store's data.mdb, read with plain file reads (LMDB 0.9, 64-bit).

Tests use it to damage a store precisely (one byte of a record's metadata, a branch page's
child pointer, a separator key) instead of hoping a random flip lands somewhere interesting.
The layout is LMDB's own (see lmdb.h / mdb.c): a 16-byte page header {pgno u64, pad u16,
flags u16, lower u16, upper u16}; meta pages 0 and 1; leaf nodes {lo u16, hi u16, flags u16,
ksize u16, key, data}; branch nodes whose child page number is lo | hi << 16 | flags << 32.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

HEADER = 16
P_BRANCH, P_LEAF, P_OVERFLOW = 0x01, 0x02, 0x04
F_BIGDATA, F_SUBDATA = 0x01, 0x02


@dataclass(frozen=True)
class Node:
    """A leaf node: its key and where its value's bytes are in the file."""

    page: int
    key: bytes
    value_offset: int
    value_size: int
    node_offset: int
    overflow: bool


@dataclass(frozen=True)
class Branch:
    """A branch page and the file offsets of its nodes."""

    page: int
    node_offsets: list[int]


class DataFile:
    def __init__(self, store: Path) -> None:
        self.path = Path(store) / "data.mdb"
        self.data = self.path.read_bytes()
        self.psize = struct.unpack_from("<I", self.data, HEADER + 24)[0]
        metas = [self._meta(0), self._meta(self.psize)]
        self.main_root = max(metas)[1]

    def _meta(self, offset: int) -> tuple[int, int]:
        m = offset + HEADER
        txnid = struct.unpack_from("<Q", self.data, m + 24 + 96 + 8)[0]
        main_root = struct.unpack_from("<Q", self.data, m + 24 + 48 + 40)[0]
        return txnid, main_root

    def _page(self, pgno: int) -> tuple[int, int, int]:
        base = pgno * self.psize
        flags, lower, upper = struct.unpack_from("<HHH", self.data, base + 10)
        return flags, lower, upper

    def _nodes(self, pgno: int) -> list[int]:
        base = pgno * self.psize
        _, lower, _ = self._page(pgno)
        count = (lower - HEADER) // 2
        return [base + struct.unpack_from("<H", self.data, base + HEADER + 2 * i)[0]
                for i in range(count)]  # fmt: skip

    def walk(self, root: int) -> tuple[list[Node], list[Branch]]:
        """Every leaf node and branch page of the tree rooted at page ``root``."""
        leaves: list[Node] = []
        branches: list[Branch] = []
        todo = [root]
        while todo:
            pgno = todo.pop(0)
            flags = self._page(pgno)[0]
            offsets = self._nodes(pgno)
            if flags & P_BRANCH:
                branches.append(Branch(pgno, offsets))
                for o in offsets:
                    lo, hi, nflags = struct.unpack_from("<HHH", self.data, o)
                    todo.append(lo | hi << 16 | nflags << 32)
                continue
            for o in offsets:
                lo, hi, nflags, ksize = struct.unpack_from("<HHHH", self.data, o)
                key = self.data[o + 8 : o + 8 + ksize]
                size = lo | hi << 16
                start = o + 8 + ksize
                if nflags & F_BIGDATA:
                    opg = struct.unpack_from("<Q", self.data, start)[0]
                    leaves.append(Node(pgno, key, opg * self.psize + HEADER, size, o, True))
                else:
                    leaves.append(Node(pgno, key, start, size, o, False))
        return leaves, branches

    def database(self, name: bytes) -> tuple[list[Node], list[Branch]]:
        """The leaf nodes and branch pages of a named database."""
        for node in self.walk(self.main_root)[0]:
            if node.key == name:
                root = struct.unpack_from("<Q", self.data, node.value_offset + 40)[0]
                return ([], []) if root == (1 << 64) - 1 else self.walk(root)
        raise KeyError(name)

    def value(self, db: bytes, key: bytes) -> Node:
        for node in self.database(db)[0]:
            if node.key == key:
                return node
        raise KeyError(key)


def flip(store: Path, offset: int, mask: int = 0x01) -> None:
    """XOR one byte of the store's data.mdb in place (the store must be closed)."""
    path = Path(store) / "data.mdb"
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def write_at(store: Path, offset: int, data: bytes) -> None:
    path = Path(store) / "data.mdb"
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
