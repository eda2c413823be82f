"""``Tree.value_range``: where a pixel record lies in ``data.mdb``, found with ``pread`` alone,
checked against the bytes the reader returns for every key."""

from __future__ import annotations

import os

import lmdb
import numpy as np

from lmdb_cache import CacheReader
from lmdb_cache.format.extents import Extents
from lmdb_cache.format.schema import DB_META, DB_PIXELS, encode_key

from .conftest import random_arrays, write_arrays


def test_value_range_names_exactly_the_bytes_of_each_pixel_record(tmp_path):
    rng = np.random.default_rng(3)
    # Records of 2.7-14 KB (on overflow pages), enough of them for a branch page, and a few
    # tiny ones that stay inside their leaf.
    images = {
        f"dir/img_{i:03d}": rng.integers(0, 256, (30 + i % 60, 30, 3), dtype=np.uint8)
        for i in range(300)
    }
    images.update({f"tiny/{k}": v for k, v in random_arrays(count=3, seed=1).items()})
    store = write_arrays(tmp_path / "s.lmdb", images)
    data = str(store / "data.mdb")
    env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=8)
    txnid = env.info()["last_txnid"]
    env.close()
    pages = lmdb.open(str(store), readonly=True, lock=False, max_dbs=8)
    with pages.begin() as txn:
        depth = txn.stat(pages.open_db(DB_PIXELS, txn=txn, create=False))["depth"]
    pages.close()
    assert depth >= 2, "the walk must pass a branch page"
    extents = Extents(data)
    tree = extents.tree(txnid)
    assert tree is not None
    fd = os.open(data, os.O_RDONLY)
    try:
        with CacheReader(store) as reader:
            for key in reader.keys():
                ekey = encode_key(key)
                found = tree.value_range(DB_PIXELS, ekey)
                if key.startswith("tiny/"):
                    assert found is None, key  # inside its leaf page
                    continue
                assert found is not None, key
                offset, length = found
                stored = bytes(reader.raw.value(DB_PIXELS, ekey))
                assert length == len(stored)
                assert os.pread(fd, length, offset) == stored
                assert tree.value_range(DB_META, ekey) is None  # small: inside its leaf
            assert tree.value_range(DB_PIXELS, encode_key("absent.png")) is None
    finally:
        os.close(fd)
        extents.close()
