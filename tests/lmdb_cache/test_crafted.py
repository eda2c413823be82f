"""Crafted stores: every case raises a CacheError subclass whose message names the store and
what was expected (never an AttributeError, a raw LMDB error or an empty message); no msgpack
extension type is accepted; keys that are not str raise TypeError."""

from __future__ import annotations

import datetime

import lmdb
import msgpack
import pytest
from click.testing import CliRunner

from lmdb_cache import (
    CacheError,
    CorruptRecordError,
    NotACacheError,
    build_cache,
    open_cache,
    validate_cache,
)
from lmdb_cache.cli import build_command, info_command, validate_command
from lmdb_cache.format import schema

from .crafting import put_raw, sealed

# Values an attacker can seal correctly: the checksum passes, the content must still be refused.
SEALED_METADATA = {
    "ext-type": msgpack.packb(msgpack.ExtType(5, b"payload")),
    "timestamp": msgpack.packb(msgpack.Timestamp(1, 0)),
    "datetime-in-a-field": msgpack.packb(
        {"width": msgpack.Timestamp.from_datetime(datetime.datetime.now(datetime.timezone.utc))}
    ),
    "deep-nesting": b"\x91" * 5000 + b"\xc0",
    "not-msgpack": b"\xc1",
    "truncated": msgpack.packb({"width": 10})[:3],
    "list": msgpack.packb([1, 2, 3]),
}


@pytest.mark.parametrize("payload", SEALED_METADATA.values(), ids=SEALED_METADATA.keys())
def test_sealed_metadata_that_is_not_plain_msgpack_fails_the_reader(tiny_cache, payload):
    put_raw(tiny_cache, b"meta", b"a.jpg", sealed(payload, b"a.jpg"))
    with open_cache(tiny_cache) as reader, pytest.raises(CorruptRecordError) as caught:
        reader.meta("a.jpg")
    assert caught.value.reason.strip(" :") and str(tiny_cache) in str(caught.value)


@pytest.mark.parametrize("payload", SEALED_METADATA.values(), ids=SEALED_METADATA.keys())
def test_sealed_metadata_that_is_not_plain_msgpack_is_corrupt_meta(tiny_cache, payload):
    put_raw(tiny_cache, b"meta", b"a.jpg", sealed(payload, b"a.jpg"))
    (problem,) = validate_cache(tiny_cache).problems
    assert (problem.kind, problem.key) == ("corrupt-meta", "a.jpg")
    assert not problem.message.rstrip().endswith(":")


def test_timestamp_extension_is_refused_by_unpack():
    with pytest.raises(ValueError, match="Timestamp"):
        schema.unpack(msgpack.packb({"when": msgpack.Timestamp(1, 0)}))


@pytest.fixture()
def failure_entry_is_a_list(tiny_images, tmp_path):
    (tiny_images / "broken.jpg").write_bytes(b"not an image")
    output = tmp_path / "f.lmdb"
    build_cache(tiny_images, output, workers=1)
    put_raw(output, b"failures", b"broken.jpg", sealed(msgpack.packb(["a", "b"]), b"broken.jpg"))
    return output


def test_failure_entry_that_is_a_list_fails_the_reader_naming_the_store(failure_entry_is_a_list):
    with (
        open_cache(failure_entry_is_a_list) as reader,
        pytest.raises(CacheError, match=f"'{failure_entry_is_a_list}'.*'broken.jpg'.*map"),
    ):
        reader.failures()


def test_failure_entry_that_is_a_list_is_a_problem(failure_entry_is_a_list):
    kinds = [p.kind for p in validate_cache(failure_entry_is_a_list).problems]
    assert kinds == ["corrupt-failure", "manifest-mismatch"]


def test_failure_entry_that_is_a_list_is_a_clear_cache_info_error(failure_entry_is_a_list):
    result = CliRunner().invoke(info_command, [str(failure_entry_is_a_list)])
    assert (result.exit_code, type(result.exception)) == (1, SystemExit)
    assert "damaged failures entry 'broken.jpg'" in result.stderr


@pytest.fixture(params=["dupsort-databases", "plain-values-named-like-databases"])
def other_lmdb_store(tmp_path, request):
    """An LMDB store of someone else's that uses the cache's database names: as databases
    made with other flags, or as plain keys (LMDB then reports MDB_INCOMPATIBLE)."""
    path = tmp_path / "other.lmdb"
    env = lmdb.open(str(path), max_dbs=8)
    for name in (b"manifest", b"meta", b"pixels", b"failures"):
        if request.param == "dupsort-databases":
            env.open_db(name, dupsort=True)
        else:
            with env.begin(write=True) as txn:
                txn.put(name, b"someone else's value")
    env.close()
    return path


def test_store_with_other_database_flags_is_not_a_cache(other_lmdb_store):
    with pytest.raises(NotACacheError, match=f"'{other_lmdb_store}'.*other flags"):
        open_cache(other_lmdb_store)


def test_store_with_other_database_flags_is_a_format_problem(other_lmdb_store):
    assert [p.kind for p in validate_cache(other_lmdb_store).problems] == ["format"]


def test_store_with_other_database_flags_is_refused_by_the_builder(other_lmdb_store, tiny_images):
    result = CliRunner().invoke(build_command, [str(tiny_images), "-o", str(other_lmdb_store)])
    assert (result.exit_code, type(result.exception)) == (2, SystemExit)
    assert "other flags than an image cache's; choose another -o" in result.stderr


def test_plain_lmdb_store_without_databases_is_not_a_cache(tmp_path):
    env = lmdb.open(str(tmp_path / "plain.lmdb"))
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    with pytest.raises(NotACacheError, match="without the image cache's databases"):
        open_cache(tmp_path / "plain.lmdb")


def test_data_file_of_random_bytes_is_not_a_cache(tmp_path):
    store = tmp_path / "random.lmdb"
    store.mkdir()
    (store / "data.mdb").write_bytes(bytes(range(256)) * 64)
    result = CliRunner().invoke(validate_command, [str(store), "--json"])
    assert result.exit_code == 1 and "not an LMDB data file" in result.stdout


@pytest.mark.parametrize("key", [123, 1.5, None, b"a.jpg", ("a.jpg",)], ids=repr)
@pytest.mark.parametrize("access", ["getitem", "view", "meta", "get"])
def test_key_that_is_not_a_str_raises_type_error(tiny_cache, key, access):
    with open_cache(tiny_cache) as reader, pytest.raises(TypeError, match="keys are str"):
        getattr(reader, {"getitem": "__getitem__"}.get(access, access))(key)


def test_key_that_is_not_a_str_is_not_contained(tiny_cache):
    with open_cache(tiny_cache) as reader:
        assert 123 not in reader


@pytest.fixture()
def record_with_a_key_not_utf8(tiny_cache):
    """A whole, well-sealed record under the key b"bad-\xff\xfe.jpg" (a copy of a.jpg's)."""
    with open_cache(tiny_cache) as reader:
        meta = dict(reader.meta("a.jpg"))
        pixels = reader["a.jpg"].image.tobytes()
    bad = b"bad-\xff\xfe.jpg"
    put_raw(tiny_cache, b"meta", bad, sealed(meta, bad))
    put_raw(tiny_cache, b"pixels", bad, pixels)
    return tiny_cache


def test_record_key_that_is_not_utf8_is_a_problem(record_with_a_key_not_utf8):
    tiny_cache = record_with_a_key_not_utf8
    problems = [(p.kind, p.key) for p in validate_cache(tiny_cache).problems]
    assert ("bad-key", "bad-\\xff\\xfe.jpg") in problems


def test_data_file_that_is_a_folder_is_named(tmp_path):
    (tmp_path / "c.lmdb" / "data.mdb").mkdir(parents=True)
    with pytest.raises(NotACacheError, match="data.mdb' is not a regular file"):
        open_cache(tmp_path / "c.lmdb")


def test_file_in_place_of_the_cache_folder_is_named(tmp_path):
    (tmp_path / "c.lmdb").write_bytes(b"x")
    with pytest.raises(NotACacheError, match="is a file, not a cache folder"):
        open_cache(tmp_path / "c.lmdb")


def test_record_key_that_is_not_utf8_fails_the_reader(tiny_cache):
    with open_cache(tiny_cache) as reader:
        meta = dict(reader.meta("a.jpg"))
    bad = b"bad-\xff\xfe.jpg"
    put_raw(tiny_cache, b"meta", bad, sealed(meta, bad))
    with open_cache(tiny_cache) as reader:
        (listed,) = [k for k in reader.keys() if k.startswith("bad-")]
        with pytest.raises(CorruptRecordError, match=r"'bad-\\\\xff\\\\xfe.jpg'.*not valid UTF-8"):
            reader[listed]


def test_update_removes_a_record_whose_key_is_not_utf8(tiny_images, record_with_a_key_not_utf8):
    tiny_cache = record_with_a_key_not_utf8
    result = build_cache(tiny_images, tiny_cache, workers=1)
    assert result.removed == 1 and validate_cache(tiny_cache, source=tiny_images).ok
