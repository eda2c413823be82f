"""The key index: ``KeyList``, the stored index's layout and checks, who writes and removes it,
and how readers use it (or walk the keys when it is absent, stale or disagrees with the
records).

Stored indexes are parsed and crafted here from the layout documented in
``format/keyindex.py`` and docs/format.md ("Key index"), with ``struct`` and ``zlib``; the keys
they must hold come from a walk of the ``meta`` database with plain ``lmdb``, never from the
code under test.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import pickle
import re
import struct
import zlib
from pathlib import Path

import lmdb
import msgpack
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

from lmdb_cache import (
    CacheWriter,
    KeyList,
    KeyOrder,
    KeysChangedError,
    MissingImageError,
    StoreDamagedError,
    build_cache,
    copy_cache,
    open_cache,
    validate_cache,
)
from lmdb_cache.cli import cli
from lmdb_cache.format.keyindex import KeyIndexError, pack_index, read_index
from lmdb_cache.read import positions
from lmdb_cache.read.snapshot import ENTRIES_KEPT
from lmdb_cache.torch import CacheDataset, collate

from .conftest import TINY_SPEC
from .crafting import put_raw, sealed

STAMP = "2026-01-02T03:04:05.000006+00:00"  # the shape of a manifest's ``updated``: 32 bytes
HEAD = struct.Struct("<4sIQQI")  # magic, version, count, blob length, stamp length

UNICODE_KEYS = ["z.png", "é/ü.png", "a b.jpg", "日本/画像.jpg", "A.png", "ß", "emoji😀.png"]


def utf8_order(keys) -> list[str]:
    return sorted(keys, key=lambda k: k.encode("utf-8"))


# --- the documented layout, written out independently ---------------------------------------


def craft(
    ends: list[int],
    blob: bytes,
    stamp: str = STAMP,
    magic: bytes = b"LCKI",
    version: int = 1,
) -> bytes:
    """An index value with whatever head, offsets and blob it is given, and a correct CRC-32."""
    stamp_bytes = stamp.encode("utf-8")
    head = HEAD.pack(magic, version, len(ends), len(blob), len(stamp_bytes)) + stamp_bytes
    head += bytes(-len(head) % 8)
    body = head + struct.pack(f"<{len(ends)}Q", *ends) + blob
    return body + struct.pack("<I", zlib.crc32(body, zlib.crc32(b"keys")))


def index_of(raw_keys: list[bytes], stamp: str = STAMP) -> bytes:
    return craft(list(itertools.accumulate(len(k) for k in raw_keys)), b"".join(raw_keys), stamp)


def parse(value: bytes) -> tuple[str, list[bytes]]:
    """``(stamp, keys)`` of a stored index; fails the test unless it is whole and intact."""
    magic, version, count, blob_len, stamp_len = HEAD.unpack_from(value)
    assert (magic, version) == (b"LCKI", 1)
    stamp = value[HEAD.size : HEAD.size + stamp_len].decode("utf-8")
    start = HEAD.size + stamp_len
    start += -start % 8
    assert len(value) == start + 8 * count + blob_len + 4
    assert struct.unpack("<I", value[-4:])[0] == zlib.crc32(value[:-4], zlib.crc32(b"keys"))
    ends = struct.unpack_from(f"<{count}Q", value, start)
    blob = value[start + 8 * count : start + 8 * count + blob_len]
    return stamp, [blob[a:b] for a, b in itertools.pairwise((0, *ends))]


def remove_index(store: Path) -> None:
    """Delete the index and its order, as an update's first commit does."""
    put_raw(store, b"manifest", b"keys", None)
    put_raw(store, b"manifest", b"keys.order", None)


def plain(store: Path) -> dict:
    """With plain ``lmdb``: the ``meta`` keys in storage order, the stored index (or None) and
    the manifest (its msgpack payload, seal stripped)."""
    env = lmdb.open(str(store), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            manifest = env.open_db(b"manifest", txn=txn, create=False)
            index = txn.get(b"keys", db=manifest)
            return {
                "meta_keys": [bytes(k) for k in txn.cursor(db=meta).iternext(values=False)],
                "index": None if index is None else bytes(index),
                "manifest": msgpack.unpackb(bytes(txn.get(b"manifest", db=manifest))[:-4]),
                "meta": {bytes(k): bytes(v) for k, v in txn.cursor(db=meta)},
            }
    finally:
        env.close()


def pixels_of(store: Path, key: bytes) -> bytes:
    env = lmdb.open(str(store), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return bytes(txn.get(key, db=env.open_db(b"pixels", txn=txn, create=False)))
    finally:
        env.close()


def copy_record(store: Path, source: bytes, key: bytes) -> None:
    """Write a record under ``key`` behind the manifest's back: ``source``'s pixels and its
    metadata sealed again under the new key (the manifest and the index stay as they were)."""
    payload = plain(store)["meta"][source][:-4]
    pixels = pixels_of(store, source)
    put_raw(store, b"meta", key, sealed(payload, key))
    put_raw(store, b"pixels", key, pixels)


def kinds(report) -> list[tuple[str, str | None]]:
    return [(p.kind, p.key) for p in report.problems]


@pytest.fixture()
def no_walk(monkeypatch):
    """Any walk of the keys fails the test."""

    def walked(snap):
        raise AssertionError("the keys were walked")

    monkeypatch.setattr(positions, "walked_keys", walked)


@pytest.fixture()
def walks(monkeypatch) -> list[int]:
    """Counts the lists of keys built from a walk of the ``meta`` database."""
    calls: list[int] = []
    from_raw = KeyList.from_raw

    def counted(cls, raw_keys):
        calls.append(1)
        return from_raw(raw_keys)

    monkeypatch.setattr(KeyList, "from_raw", classmethod(counted))
    return calls


@pytest.fixture()
def unicode_store(tmp_path) -> Path:
    """A store written with CacheWriter, keyed :data:`UNICODE_KEYS` (in that order)."""
    rng = np.random.default_rng(5)
    with CacheWriter(tmp_path / "u.lmdb") as writer:
        for key in UNICODE_KEYS:
            writer.add(key, image=rng.integers(0, 256, (6, 9, 3), dtype=np.uint8))
    return tmp_path / "u.lmdb"


SMALL_COUNT = 3000


@pytest.fixture(scope="module")
def small_records(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """3000 records of 8x8 random pixels, keyed ``k00000``... with ``extra={"n": i}``."""
    rng = np.random.default_rng(11)
    images = {
        f"k{i:05d}": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(SMALL_COUNT)
    }
    store = tmp_path_factory.mktemp("small") / "small.lmdb"
    with CacheWriter(store) as writer:
        for i, (key, image) in enumerate(images.items()):
            writer.add(key, image=image, extra={"n": i})
    return store, images


# --- KeyList ----------------------------------------------------------------------------------


def test_key_list_round_trips_unicode_keys():
    keys = KeyList.from_keys(UNICODE_KEYS)
    assert list(keys) == UNICODE_KEYS
    assert [keys.raw(i) for i in range(len(keys))] == [k.encode("utf-8") for k in UNICODE_KEYS]


def test_key_list_round_trips_keys_that_are_not_utf8():
    raw = [b"ok.png", b"bad\xff\xfe.png", b"\xc3"]  # the last one a cut two-byte sequence
    keys = KeyList.from_raw(raw)
    as_str = [k.decode("utf-8", "surrogateescape") for k in raw]
    assert list(keys) == as_str
    assert [KeyList.from_keys(as_str).raw(i) for i in range(3)] == raw


def test_key_list_negative_positions_count_from_the_end():
    keys = KeyList.from_keys(["a", "bb", "ccc"])
    assert (keys[-1], keys[-3]) == ("ccc", "a")


@pytest.mark.parametrize("position", [3, -4, 10**12], ids=["len", "minus-len-1", "huge"])
def test_key_list_position_outside_raises_index_error(position):
    keys = KeyList.from_keys(["a", "bb", "ccc"])
    with pytest.raises(IndexError, match=f"position {position} is outside the 3 keys"):
        keys[position]


def test_key_list_slice_gives_the_keys_of_the_slice():
    keys = KeyList.from_keys(["a", "bb", "ccc", "dddd"])
    assert keys[1:] == ["bb", "ccc", "dddd"] and keys[::-2] == ["dddd", "bb"]


def test_key_list_pickles_to_the_same_keys():
    keys = KeyList.from_keys(UNICODE_KEYS)
    again = pickle.loads(pickle.dumps(keys))
    assert isinstance(again, KeyList) and list(again) == UNICODE_KEYS


def test_key_list_read_in_place_pickles_to_the_same_keys():
    raw = [k.encode("utf-8") for k in UNICODE_KEYS]
    keys = read_index(index_of(raw))  # arrays viewing the bytes
    assert list(pickle.loads(pickle.dumps(keys))) == UNICODE_KEYS


def test_key_list_copy_owns_its_arrays():
    value = bytearray(index_of([b"one", b"two"]))
    viewed = read_index(value, check=False)
    owned = viewed.copy()
    value[-5] = ord("X")  # the last key byte, under both lists
    assert (viewed[1], owned[1]) == ("twX", "two")
    assert owned.ends.flags.owndata and owned.blob.flags.owndata


def test_key_list_from_raw_keeps_the_order_given():
    assert list(KeyList.from_raw([b"z", b"a", b"m"])) == ["z", "a", "m"]


def test_empty_key_list_has_no_keys():
    keys = KeyList.from_raw([])
    assert len(keys) == 0 and list(keys) == []


# --- the stored layout ------------------------------------------------------------------------


def test_pack_index_writes_the_documented_layout():
    raw = [k.encode("utf-8") for k in utf8_order(UNICODE_KEYS)]
    assert pack_index(raw, STAMP)[0] == index_of(raw)


def test_read_index_reads_the_documented_layout():
    raw = [b"a.jpg", "sub/é.png".encode(), b"z"]
    assert list(read_index(index_of(raw))) == ["a.jpg", "sub/é.png", "z"]


def test_read_index_reads_an_index_of_no_keys():
    assert len(read_index(index_of([]))) == 0


# Byte offsets of an index of THREE_KEYS with STAMP: a 28-byte head, 32 bytes of stamp, 4 of
# padding, 3 end offsets (64..87), then the blob (88..98) and the CRC-32 (99..102).
THREE_KEYS = [b"a.jpg", b"b.png", b"z"]
FLIPS = {"stamp": 40, "padding": 61, "ends": 64, "blob": 90, "crc": -1}


@pytest.mark.parametrize("offset", FLIPS.values(), ids=FLIPS.keys())
def test_read_index_refuses_a_flipped_byte(offset):
    value = bytearray(index_of(THREE_KEYS))
    value[offset] ^= 0x10
    with pytest.raises(KeyIndexError, match="fails its CRC-32"):
        read_index(bytes(value))


def test_read_index_without_check_does_not_read_the_crc():
    value = bytearray(index_of(THREE_KEYS))
    value[95] = ord("X")  # b"b.png" -> b"b.Xng"
    assert read_index(bytes(value), check=False)[1] == "b.Xng"


@pytest.mark.parametrize(
    ("cut", "message"),
    [(1, "should be 103 bytes, it is 102"), (90, "13 bytes, too short to hold its head")],
    ids=["last-byte", "inside-the-head"],
)
def test_read_index_refuses_a_truncated_value(cut, message):
    value = index_of(THREE_KEYS)
    with pytest.raises(KeyIndexError, match=message):
        read_index(value[: len(value) - cut])


def test_read_index_refuses_a_count_that_does_not_fit_the_value():
    value = bytearray(index_of(THREE_KEYS))
    value[8] = 4  # the count: 3 -> 4, with the CRC left as it was
    with pytest.raises(KeyIndexError, match="of 4 keys and 11 key bytes should be 111 bytes"):
        read_index(bytes(value))


def test_read_index_refuses_another_magic():
    value = craft([5, 10, 11], b"".join(THREE_KEYS), magic=b"LCKX")
    with pytest.raises(KeyIndexError, match="starts b'LCKX' version 1"):
        read_index(value)


def test_read_index_refuses_another_version():
    value = craft([5, 10, 11], b"".join(THREE_KEYS), version=2)
    with pytest.raises(KeyIndexError, match="starts b'LCKI' version 2"):
        read_index(value)


OFFSETS = {
    "decreasing": [5, 4, 11],
    "equal-ends-an-empty-key": [5, 5, 11],
    "empty-first-key": [0, 5, 11],
    "last-end-short-of-the-blob": [5, 10, 10],
    "last-end-past-the-blob": [5, 10, 12],
}


@pytest.mark.parametrize("ends", OFFSETS.values(), ids=OFFSETS.keys())
def test_read_index_refuses_offsets_that_do_not_cut_the_blob_into_keys(ends):
    value = craft(ends, b"".join(THREE_KEYS))  # a correct CRC-32: only the offsets are wrong
    with pytest.raises(KeyIndexError, match="offsets do not cut its blob into non-empty keys"):
        read_index(value)


# --- writers ----------------------------------------------------------------------------------


def test_build_writes_the_index_of_the_meta_keys(tiny_cache):
    stored = plain(tiny_cache)
    _, keys = parse(stored["index"])
    assert keys == stored["meta_keys"]
    assert keys == [k.encode("utf-8") for k in utf8_order(TINY_SPEC)]


def test_build_binds_the_index_to_the_manifest_stamp(tiny_cache):
    stored = plain(tiny_cache)
    stamp, _ = parse(stored["index"])
    assert stamp == stored["manifest"]["updated"]


def test_writer_close_writes_the_index_of_the_meta_keys(unicode_store):
    stored = plain(unicode_store)
    assert parse(stored["index"]) == (stored["manifest"]["updated"], stored["meta_keys"])


def test_rebuild_writes_the_index_of_the_meta_keys(tiny_images, tiny_cache):
    (tiny_images / "a.jpg").unlink()
    build_cache(tiny_images, tiny_cache, workers=1, rebuild=True)
    stored = plain(tiny_cache)
    assert parse(stored["index"]) == (stored["manifest"]["updated"], stored["meta_keys"])
    assert b"a.jpg" not in stored["meta_keys"]


def test_an_unfinished_writer_leaves_no_index(unicode_store):
    with (
        pytest.raises(RuntimeError, match="killed"),
        CacheWriter(unicode_store, commit_images=1) as writer,
    ):
        writer.add("new.png", image=np.zeros((4, 4, 3), np.uint8))  # a commit, not final
        raise RuntimeError("killed before close")
    stored = plain(unicode_store)
    assert stored["index"] is None and b"new.png" in stored["meta_keys"]


def test_merge_writes_the_index_of_its_keys(tiny_images, tmp_path):
    parts = [tmp_path / f"part{i}.lmdb" for i in range(2)]
    for i, part in enumerate(parts):
        build_cache(tiny_images, part, workers=1, shard=(i, 2))
    out = tmp_path / "merged.lmdb"
    result = CliRunner().invoke(cli, ["merge", *map(str, parts), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    stored = plain(out)
    assert parse(stored["index"]) == (stored["manifest"]["updated"], stored["meta_keys"])
    assert len(stored["meta_keys"]) == len(TINY_SPEC)


def test_compact_copy_keeps_a_current_index(tiny_cache, tmp_path):
    copy_cache(tiny_cache, tmp_path / "copy.lmdb", compact=True)
    stored = plain(tmp_path / "copy.lmdb")
    assert parse(stored["index"]) == (stored["manifest"]["updated"], stored["meta_keys"])


# --- readers ----------------------------------------------------------------------------------


def test_reader_with_an_index_takes_keys_by_position_from_it(unicode_store, no_walk):
    with open_cache(unicode_store) as reader:
        keys = [reader.key_at(i) for i in range(len(UNICODE_KEYS))]
    assert keys == utf8_order(UNICODE_KEYS)


def test_reader_with_an_index_lists_every_key(unicode_store, no_walk):
    with open_cache(unicode_store) as reader:
        assert reader.keys() == utf8_order(UNICODE_KEYS)


def test_reader_with_an_index_reads_records_by_negative_position(unicode_store, no_walk):
    with open_cache(unicode_store) as reader:
        assert reader.record_at(-1).key == utf8_order(UNICODE_KEYS)[-1]


def test_reader_position_outside_raises_index_error(unicode_store):
    with open_cache(unicode_store) as reader, pytest.raises(IndexError, match="outside the 7"):
        reader.key_at(7)


def test_reader_key_list_is_an_owned_copy(unicode_store):
    with open_cache(unicode_store) as reader:
        keys = reader.key_list()
    # Flags only: a failing assert must not print arrays over a mapping the close removed.
    owned = (keys.ends.flags.owndata, keys.blob.flags.owndata)
    assert owned == (True, True)
    assert list(keys) == utf8_order(UNICODE_KEYS)  # still readable after the reader closed


def test_store_without_an_index_serves_the_same_keys(unicode_store):
    put_raw(unicode_store, b"manifest", b"keys", None)
    with open_cache(unicode_store) as reader:
        assert [reader.key_at(i) for i in range(7)] == utf8_order(UNICODE_KEYS)


def test_store_without_an_index_is_walked_once_per_commit(unicode_store, walks):
    put_raw(unicode_store, b"manifest", b"keys", None)
    with open_cache(unicode_store) as reader:
        reader.key_at(0)
        reader.refresh()  # a new snapshot of the same commit
        reader.key_at(1)
    assert len(walks) == 1


def test_store_with_an_index_is_not_walked(unicode_store, walks):
    with open_cache(unicode_store) as reader:
        reader.key_at(0)
    assert walks == []


def test_index_of_another_stamp_is_not_used(unicode_store):
    old = plain(unicode_store)["index"]
    with CacheWriter(unicode_store) as writer:  # as many records, one of them another
        writer.remove("ß")
        writer.add("new.png", image=np.zeros((4, 4, 3), np.uint8))
    put_raw(unicode_store, b"manifest", b"keys", old)  # left by a writer that knows no index
    with open_cache(unicode_store) as reader:
        keys = reader.keys()
    assert keys == utf8_order([k for k in UNICODE_KEYS if k != "ß"] + ["new.png"])


def test_keys_of_an_unfinished_writer_include_its_committed_records(unicode_store):
    with (
        pytest.raises(RuntimeError, match="killed"),
        CacheWriter(unicode_store, commit_images=1) as writer,
    ):
        writer.add("new.png", image=np.zeros((4, 4, 3), np.uint8))
        raise RuntimeError("killed before close")
    with open_cache(unicode_store) as reader:
        assert reader.keys() == utf8_order([*UNICODE_KEYS, "new.png"])


def test_record_behind_the_manifest_is_listed(unicode_store):
    copy_record(unicode_store, b"z.png", b"extra.png")
    with open_cache(unicode_store) as reader:
        assert reader.keys() == utf8_order([*UNICODE_KEYS, "extra.png"])


def test_record_behind_the_manifest_is_a_manifest_mismatch_alone(unicode_store):
    copy_record(unicode_store, b"z.png", b"extra.png")
    assert kinds(validate_cache(unicode_store)) == [("manifest-mismatch", None)]


def test_record_replaced_behind_the_manifest_is_a_key_index_problem(unicode_store):
    copy_record(unicode_store, b"z.png", b"extra.png")
    put_raw(unicode_store, b"meta", "ß".encode(), None)
    put_raw(unicode_store, b"pixels", "ß".encode(), None)
    found = [p for p in validate_cache(unicode_store).problems if p.kind == "key-index"]
    assert len(found) == 1 and "disagrees with the records" in found[0].message


def damage_index(store: Path) -> None:
    """Flip a byte of the index's blob (its last key byte); the head and the stamp stay."""
    value = bytearray(plain(store)["index"])
    value[-5] ^= 0x01
    put_raw(store, b"manifest", b"keys", bytes(value))


def test_damaged_index_fails_the_reader_naming_the_store(unicode_store):
    damage_index(unicode_store)
    with (
        open_cache(unicode_store) as reader,
        pytest.raises(StoreDamagedError, match=f"'{re.escape(str(unicode_store))}'.*damaged key"),
    ):
        reader.key_at(0)


def test_damaged_index_of_a_writer_store_fails_the_reader_naming_a_writer_commit(unicode_store):
    damage_index(unicode_store)  # no folder built it: build-cache would drop its records
    with (
        open_cache(unicode_store) as reader,
        pytest.raises(StoreDamagedError, match=r"commit it again with 'lmdb_cache\.CacheWriter\("),
    ):
        reader.key_at(0)


def test_damaged_index_of_a_built_store_fails_the_reader_naming_its_folder(tiny_images, tiny_cache):
    damage_index(tiny_cache)
    folder = re.escape(os.path.realpath(tiny_images))
    with (
        open_cache(tiny_cache) as reader,
        pytest.raises(StoreDamagedError, match=f"run 'build-cache {folder} -o "),
    ):
        reader.key_at(0)


def test_damaged_index_of_a_writer_store_is_fixed_by_a_writer_commit(unicode_store):
    damage_index(unicode_store)
    (problem,) = validate_cache(unicode_store).problems
    assert "lmdb_cache.CacheWriter(" in problem.message


def test_damaged_index_is_a_key_index_problem(unicode_store):
    damage_index(unicode_store)
    assert kinds(validate_cache(unicode_store)) == [("key-index", None)]


def test_index_with_a_flipped_stamp_byte_is_a_key_index_problem(unicode_store):
    value = bytearray(plain(unicode_store)["index"])
    value[HEAD.size + 3] ^= 0x01  # inside the stamp: the index now looks like another commit's
    put_raw(unicode_store, b"manifest", b"keys", bytes(value))
    assert kinds(validate_cache(unicode_store)) == [("key-index", None)]


def test_reader_walks_past_an_index_with_a_flipped_stamp_byte(unicode_store):
    value = bytearray(plain(unicode_store)["index"])
    value[HEAD.size + 3] ^= 0x01
    put_raw(unicode_store, b"manifest", b"keys", bytes(value))
    with open_cache(unicode_store) as reader:
        assert [reader.key_at(i) for i in range(7)] == utf8_order(UNICODE_KEYS)


def test_update_build_writes_a_damaged_index_again(tiny_images, tiny_cache):
    damage_index(tiny_cache)
    build_cache(tiny_images, tiny_cache, workers=1)
    assert validate_cache(tiny_cache).ok


def test_writer_close_writes_a_damaged_index_again(unicode_store):
    damage_index(unicode_store)
    CacheWriter(unicode_store).close()
    assert validate_cache(unicode_store).ok


# --- entries kept per snapshot, and the dataset ---------------------------------------------


def test_entries_kept_per_snapshot_are_bounded(small_records):
    store, images = small_records
    with open_cache(store, snapshot_seconds=None) as reader:
        snapshot = reader._handle.snapshot()
        for key in images:
            reader.meta(key)
        assert reader._handle.snapshot() is snapshot
        assert len(snapshot.entries) <= ENTRIES_KEPT


def test_entries_kept_are_those_read_last(small_records):
    store, images = small_records
    with open_cache(store, snapshot_seconds=None) as reader:
        for key in images:
            reader.meta(key)
        kept = list(reader._handle.snapshot().entries)
    assert kept == list(images)[-ENTRIES_KEPT:]


def test_keys_read_again_after_their_entries_went_give_the_same_pixels(small_records):
    store, images = small_records
    with open_cache(store, snapshot_seconds=None) as reader:
        for key in images:
            reader.meta(key)
        again = {key: reader[key].image for key in images}
    assert all(np.array_equal(again[key], image) for key, image in images.items())


def test_dataset_over_a_store_with_an_index_keeps_no_key_list(small_records):
    store, images = small_records
    dataset = CacheDataset(store)
    assert dataset.keys is None and len(dataset) == len(images)


def test_dataset_over_a_store_with_an_index_serves_every_key_by_position(small_records):
    store, images = small_records
    dataset = CacheDataset(store)
    assert [dataset.key(i) for i in range(len(dataset))] == list(images)


def test_dataset_over_a_store_without_an_index_holds_a_key_list(unicode_store):
    remove_index(unicode_store)
    dataset = CacheDataset(unicode_store)
    assert isinstance(dataset.keys, KeyList)
    assert list(dataset.keys) == utf8_order(UNICODE_KEYS)


def elsewhere(function, store: Path) -> None:
    """Run ``function(store)`` in a new process (this one holds the store open)."""
    process = multiprocessing.get_context("spawn").Process(target=function, args=(store,))
    process.start()
    process.join()
    assert process.exitcode == 0


def _add_one(store: Path) -> None:
    with CacheWriter(store) as writer:
        writer.add("new.png", image=np.zeros((4, 4, 3), np.uint8))


def _replace_one(store: Path) -> None:
    with CacheWriter(store) as writer:
        writer.remove("z.png")
        writer.add("y.png", image=np.zeros((4, 4, 3), np.uint8))


def _commit(store: Path) -> None:
    CacheWriter(store).close()


def test_dataset_raises_when_the_store_gains_a_key(unicode_store):
    dataset = CacheDataset(unicode_store)
    elsewhere(_add_one, unicode_store)
    dataset.reader.refresh()
    with pytest.raises(KeysChangedError, match=r"7 keys then, 8 now.*make the dataset again"):
        dataset[0]


def test_dataset_raises_when_a_key_is_replaced_by_another(unicode_store):
    dataset = CacheDataset(unicode_store)
    elsewhere(_replace_one, unicode_store)
    dataset.reader.refresh()
    with pytest.raises(KeysChangedError, match="7 keys then, 7 now"):
        dataset[0]


def test_dataset_goes_on_over_a_commit_that_keeps_the_keys(unicode_store):
    dataset = CacheDataset(unicode_store)
    first = dataset[3][0].clone()
    elsewhere(_commit, unicode_store)  # a new stamp, a new index of the same keys
    dataset.reader.refresh()
    assert torch.equal(dataset[3][0], first)


def test_dataset_goes_on_while_an_update_has_removed_the_index(unicode_store):
    dataset = CacheDataset(unicode_store)
    expected = [dataset.key(i) for i in range(len(dataset))]
    elsewhere(remove_index, unicode_store)  # as an update's first commit leaves it
    dataset.reader.refresh()
    assert [dataset.key(i) for i in range(len(dataset))] == expected


def test_key_order_is_read_from_the_store(unicode_store, no_walk):
    with open_cache(unicode_store) as reader:
        order = reader.key_order()
    assert order.stored and order.count == 7


def test_key_order_equals_the_order_of_the_walked_keys(unicode_store):
    with open_cache(unicode_store) as reader:
        stored = reader.key_order()
    remove_index(unicode_store)
    with open_cache(unicode_store) as reader:
        walked = reader.key_order()
    assert not walked.stored and walked == stored


def test_key_order_digest_is_blake2b_of_the_offsets_and_bytes(unicode_store):
    raw = [k.encode() for k in utf8_order(UNICODE_KEYS)]
    ends = struct.pack(f"<{len(raw)}Q", *itertools.accumulate(len(k) for k in raw))
    expected = hashlib.blake2b(ends + b"".join(raw), digest_size=8).hexdigest()
    with open_cache(unicode_store) as reader:
        assert reader.key_order().digest == expected


def test_key_at_with_another_order_raises(unicode_store):
    with open_cache(unicode_store) as reader:
        order = reader.key_order()
        other = KeyOrder(order.count, "0" * 16)
        with pytest.raises(KeysChangedError, match="holds other keys"):
            reader.key_at(0, other)


def test_a_damaged_key_order_is_a_key_index_problem(unicode_store):
    with lmdb.open(str(unicode_store), max_dbs=8) as env:
        with env.begin(write=True) as txn:
            db = env.open_db(b"manifest", txn=txn)
            value = bytearray(txn.get(b"keys.order", db=db))
            value[3] ^= 0x01
            txn.put(b"keys.order", bytes(value), db=db)
    assert ("key-index", None) in kinds(validate_cache(unicode_store))


def test_dataset_in_fork_workers_yields_every_key_once_in_order(small_records):
    store, images = small_records
    loader = DataLoader(
        CacheDataset(store),
        batch_size=250,
        num_workers=2,
        collate_fn=collate,
        multiprocessing_context="fork",
    )
    seen: list[int] = []
    pixels: list[torch.Tensor] = []
    for batch, _, extras in loader:
        seen += extras["n"].tolist()
        pixels.append(batch)
    assert seen == list(range(SMALL_COUNT))
    assert torch.equal(torch.cat(pixels), torch.from_numpy(np.stack(list(images.values()))))


def test_dataset_with_keys_keeps_their_order(small_records):
    store, _ = small_records
    dataset = CacheDataset(store, keys=["k02999", "k00000", "k01500"])
    assert isinstance(dataset.keys, KeyList)
    assert [dataset[i][2]["n"] for i in range(len(dataset))] == [2999, 0, 1500]


def test_dataset_with_a_missing_key_raises_naming_it(small_records):
    store, _ = small_records
    with pytest.raises(MissingImageError, match="k99999"):
        CacheDataset(store, keys=["k00000", "k99999"])
