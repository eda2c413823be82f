"""Compressed stores (--codec zstd): the same pixels as Pillow's decode, smaller, both
checksums checked, and codec changes that encode the stored pixels again without decoding."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import zstandard
from click.testing import CliRunner

import lmdb_cache.write.decoding as decoding
from lmdb_cache import (
    CorruptRecordError,
    StoreDamagedError,
    build_cache,
    decode_file,
    open_cache,
    validate_cache,
)
from lmdb_cache.cli import build_command, info_command
from lmdb_cache.format.schema import DB_META, DB_PIXELS, unseal
from tools.make_samples import generate

from .crafting import put_raw, sealed


@pytest.fixture()
def receipts(tmp_path) -> Path:
    generate(tmp_path / "img", count=4, seed=2)
    return tmp_path / "img"


def _meta(store: Path, key: str) -> dict:
    with open_cache(store) as reader:
        return dict(reader.meta(key))


def test_pixels_equal_pillows_decode(tiny_images, tmp_path):
    build_cache(tiny_images, tmp_path / "z.lmdb", workers=1, codec="zstd")
    with open_cache(tmp_path / "z.lmdb") as reader:
        assert len(reader) == 6
        for key in reader.keys():
            expected = decode_file(tiny_images / key).pixels
            np.testing.assert_array_equal(reader[key].image, expected)
            np.testing.assert_array_equal(reader.view(key).image, expected)


def test_a_compressed_store_is_smaller_and_says_so(receipts, tmp_path):
    raw = build_cache(receipts, tmp_path / "raw.lmdb", workers=1)
    packed = build_cache(receipts, tmp_path / "z.lmdb", workers=1, codec="zstd", level=3)
    assert packed.total_bytes == raw.total_bytes  # pixel bytes, whatever the codec
    size = {p: (tmp_path / p / "data.mdb").stat().st_size for p in ("raw.lmdb", "z.lmdb")}
    assert size["z.lmdb"] < size["raw.lmdb"] / 2
    with open_cache(tmp_path / "z.lmdb") as z, open_cache(tmp_path / "raw.lmdb") as r:
        assert z.manifest["format_version"] == 3 and r.manifest["format_version"] == 2
        assert z.settings["codec"] == "zstd" and z.settings["level"] == 3
        assert "codec" not in r.meta(r.keys()[0])  # raw records read as they always did


def test_owned_reads_are_writable_views_are_not(receipts, tmp_path):
    build_cache(receipts, tmp_path / "z.lmdb", workers=1, codec="zstd")
    with open_cache(tmp_path / "z.lmdb") as reader:
        key = reader.keys()[0]
        owned, view = reader[key].image, reader.view(key).image
        assert owned.flags.writeable and not view.flags.writeable
        out = np.zeros_like(owned)
        reader.read_into(key, out)
        np.testing.assert_array_equal(out, owned)


def test_changing_the_codec_encodes_the_stored_pixels_without_decoding(
    receipts, tmp_path, monkeypatch
):
    store = tmp_path / "c.lmdb"
    build_cache(receipts, store, workers=1)
    with open_cache(store) as reader:
        before = {k: reader[k].image for k in reader.keys()}

    def no_decoding(*args, **kwargs):
        raise AssertionError("a source was decoded again")

    monkeypatch.setattr(decoding, "decode_bytes", no_decoding)
    result = build_cache(receipts, store, workers=1, codec="zstd")
    assert (result.recoded, result.decoded) == (4, 0)
    assert validate_cache(store).ok
    with open_cache(store) as reader:
        assert reader.manifest["format_version"] == 3
        for key, pixels in before.items():
            np.testing.assert_array_equal(reader[key].image, pixels)
    back = build_cache(receipts, store, workers=1, codec="raw")
    assert back.recoded == 4 and validate_cache(store).ok
    with open_cache(store) as reader:
        assert reader.manifest["format_version"] == 2
        assert all(np.array_equal(reader[k].image, p) for k, p in before.items())


def test_a_new_level_encodes_again_and_the_same_level_does_not(receipts, tmp_path):
    store = tmp_path / "c.lmdb"
    build_cache(receipts, store, workers=1, codec="zstd", level=3)
    assert build_cache(receipts, store, workers=1).recoded == 0  # keeps zstd level 3
    assert build_cache(receipts, store, workers=1, level=9).recoded == 4
    key = sorted(p.name for p in receipts.iterdir())[0]
    assert _meta(store, key)["level"] == 9


def test_damaged_pixels_are_never_encoded_again(receipts, tmp_path):
    store = tmp_path / "c.lmdb"
    build_cache(receipts, store, workers=1)
    key = sorted(p.name for p in receipts.iterdir())[0]
    size = _meta(store, key)["nbytes"]
    put_raw(store, DB_PIXELS, key.encode(), b"\x01" * size)
    with pytest.raises(StoreDamagedError, match=rf"{key}.*pixel checksum.*--rebuild"):
        build_cache(receipts, store, workers=1, codec="zstd")


def _recompress(store: Path, key: str, data: bytes, meta_changes: dict) -> None:
    ekey = key.encode()
    meta = {**_meta(store, key), **meta_changes}
    put_raw(store, DB_PIXELS, ekey, data)
    put_raw(store, DB_META, ekey, sealed(meta, ekey))


def test_a_flipped_stored_byte_fails_the_stored_checksum(receipts, tmp_path):
    store = tmp_path / "c.lmdb"
    build_cache(receipts, store, workers=1, codec="zstd")
    key = sorted(p.name for p in receipts.iterdir())[0]
    with open_cache(store) as reader:
        data = bytearray(bytes(reader.raw_value(DB_PIXELS, key.encode())))
    data[len(data) // 2] ^= 0x10
    put_raw(store, DB_PIXELS, key.encode(), bytes(data))
    report = validate_cache(store)
    assert [(p.kind, p.key) for p in report.problems] == [("checksum", key)]
    assert "stored bytes" in report.problems[0].message
    with open_cache(store, verify=True) as reader, pytest.raises(CorruptRecordError):
        reader[key]


def test_a_frame_of_another_size_is_refused_before_decompressing(receipts, tmp_path):
    store = tmp_path / "c.lmdb"
    build_cache(receipts, store, workers=1, codec="zstd")
    key = sorted(p.name for p in receipts.iterdir())[0]
    other = zstandard.ZstdCompressor().compress(b"\0" * 1_000_000_000)  # 1 GB of zeros
    _recompress(
        store,
        key,
        other,
        {"stored_nbytes": len(other), "stored_checksum": zlib.crc32(other)},
    )
    with open_cache(store) as reader, pytest.raises(CorruptRecordError, match="declares"):
        reader[key]
    report = validate_cache(store)
    assert [p.kind for p in report.problems] == ["checksum"]
    assert "declares 1000000000 bytes" in report.problems[0].message


def test_a_frame_without_its_size_is_refused(receipts, tmp_path):
    store = tmp_path / "c.lmdb"
    build_cache(receipts, store, workers=1, codec="zstd")
    key = sorted(p.name for p in receipts.iterdir())[0]
    nbytes = _meta(store, key)["nbytes"]
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * nbytes)
    _recompress(
        store, key, frame, {"stored_nbytes": len(frame), "stored_checksum": zlib.crc32(frame)}
    )
    with open_cache(store) as reader, pytest.raises(CorruptRecordError, match="declares"):
        reader.view(key)


def test_crafted_codec_fields_are_refused(receipts, tmp_path):
    store = tmp_path / "c.lmdb"
    build_cache(receipts, store, workers=1)
    key = sorted(p.name for p in receipts.iterdir())[0]
    ekey = key.encode()
    put_raw(store, DB_META, ekey, sealed({**_meta(store, key), "codec": "lz4"}, ekey))
    with open_cache(store) as reader, pytest.raises(CorruptRecordError, match="codec"):
        reader[key]
    with open_cache(store) as reader:
        assert "codec" in unseal(reader.raw_value(DB_META, ekey), ekey)


def test_cli_codec_options(receipts, tmp_path):
    store = tmp_path / "c.lmdb"
    runner = CliRunner()
    result = runner.invoke(
        build_command, [str(receipts), "-o", str(store), "--level", "5", "--json", "-j", "1"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["codec"], doc["level"]) == ("zstd", 5)  # a level asks for compression
    info = runner.invoke(info_command, [str(store)])
    assert "codec:        zstd (level 5)" in info.stdout
    bad = runner.invoke(build_command, [str(receipts), "-o", str(store), "--level", "0"])
    assert bad.exit_code == 2
    unknown = runner.invoke(build_command, [str(receipts), "-o", str(store), "--codec", "lz4"])
    assert unknown.exit_code == 2


def test_read_into_decompresses_into_a_strided_slot(receipts, tmp_path):
    build_cache(receipts, tmp_path / "z.lmdb", workers=1, codec="zstd")
    with open_cache(tmp_path / "z.lmdb") as reader:
        key = reader.keys()[0]
        expected = reader[key].image
        h, w, _ = expected.shape
        batch = np.zeros((2, h + 3, w + 5, 3), dtype=np.uint8)
        reader.read_into(key, batch[1, :h, :w])
        np.testing.assert_array_equal(batch[1, :h, :w], expected)
        assert not batch[0].any() and not batch[1, h:].any() and not batch[1, :, w:].any()


def test_a_level_with_the_raw_codec_is_refused(receipts, tmp_path):
    with pytest.raises(ValueError, match="does not apply to codec 'raw'"):
        build_cache(receipts, tmp_path / "c.lmdb", workers=1, codec="raw", level=5)
