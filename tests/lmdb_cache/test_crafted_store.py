"""A crafted or corrupted store gives a clear error, never code execution or a huge allocation."""

from __future__ import annotations

import lmdb
import msgpack
import numpy as np
import pytest
from PIL import Image

from lmdb_cache import CorruptRecordError, FormatVersionError, build_cache, open_cache
from lmdb_cache.validate import validate_cache


@pytest.fixture()
def store(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(folder / "a.png")
    build_cache(folder, tmp_path / "c.lmdb", workers=1)
    return tmp_path / "c.lmdb"


def _put(path, db: bytes, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(key, value, db=env.open_db(db, txn=txn))
    env.close()


def _meta(path) -> dict:
    with open_cache(path) as reader:
        return dict(reader.meta("a.png"))


def test_other_format_version_is_refused_with_the_fix(store):
    with open_cache(store) as reader:
        manifest = dict(reader.manifest)
    _put(store, b"manifest", b"manifest", msgpack.packb({**manifest, "format_version": 99}))
    with pytest.raises(FormatVersionError, match="has format 99, this version reads 1; rebuild"):
        open_cache(store)


def test_absurd_size_in_metadata_is_corrupt_not_allocated(store):
    meta = _meta(store)
    side = 10**9
    _put(
        store,
        b"meta",
        b"a.png",
        msgpack.packb({**meta, "width": side, "height": side, "nbytes": 3 * side * side}),
    )
    with open_cache(store) as reader, pytest.raises(CorruptRecordError, match="width=1000000000"):
        reader["a.png"]
    assert [p.kind for p in validate_cache(store).problems] == ["corrupt-meta"]


def test_size_that_disagrees_with_the_bytes_is_corrupt(store):
    meta = _meta(store)
    _put(store, b"meta", b"a.png", msgpack.packb({**meta, "width": 6, "nbytes": 6 * 10 * 3}))
    with (
        open_cache(store) as reader,
        pytest.raises(CorruptRecordError, match="pixel data is 360 bytes"),
    ):
        reader.view("a.png")


@pytest.mark.parametrize(
    "value",
    [b"\xc1not msgpack", msgpack.packb(msgpack.ExtType(1, b"x")), b"\x80\x04\x95pickle"],
    ids=["garbage", "ext-type", "pickle"],
)
def test_non_plain_msgpack_metadata_is_corrupt(store, value):
    _put(store, b"meta", b"a.png", value)
    with open_cache(store) as reader, pytest.raises(CorruptRecordError):
        reader["a.png"]
