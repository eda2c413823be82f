"""A store's identity (``CacheReader(path).identity``): equal for equal settings and records
whatever the build time, paths or order, different once one pixel differs, kept in the manifest
so that reading it walks nothing, worked out by a walk for stores written before it was kept,
and checked by ``validate-cache``."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner

from lmdb_cache import CacheReader, CacheWriter, build_cache, copy_cache, validate_cache
from lmdb_cache.cli import info_command
from lmdb_cache.read import identity as read_identity
from lmdb_cache.read.snapshot import Snapshot

from .conftest import random_arrays as arrays
from .conftest import write_arrays as write
from .crafting import manifest_of, put_manifest, put_raw, strip_digest

DIGEST_FIELD = "records_digest"


def identity(path: Path) -> str:
    with CacheReader(path) as reader:
        return reader.identity


# --- what the identity is ------------------------------------------------------------------


def test_identity_is_32_lowercase_hex_digits(tmp_path):
    assert re.fullmatch(r"[0-9a-f]{32}", identity(write(tmp_path / "a.lmdb", arrays())))


def _record_hash(key: str, meta: dict) -> int:
    fields = [
        meta["width"],
        meta["height"],
        meta["checksum"],
        meta["raw_width"],
        meta["raw_height"],
        meta["orientation"],
        meta.get("codec", "raw"),
        meta.get("level"),
        meta.get("extra", {}),
    ]
    payload = msgpack.packb([key.encode(), fields], use_bin_type=True)
    digest = hashlib.blake2b(payload, digest_size=32, person=b"lmdb-cache-rec").digest()
    return int.from_bytes(digest, "big")


def test_identity_follows_the_documented_formula(tiny_cache):
    # docs/format.md, "Identity", computed here with msgpack and hashlib alone.
    with CacheReader(tiny_cache) as reader:
        total = sum(_record_hash(key, reader.meta(key)) for key in reader.keys()) % (1 << 256)
        settings = dict(sorted(reader.settings.items()))
        doc = ["lmdb-image-cache", "identity-1", settings, len(reader), f"{total:064x}"]
        payload = msgpack.packb(doc, use_bin_type=True)
        expected = hashlib.blake2b(payload, digest_size=16, person=b"lmdb-cache-id").hexdigest()
        assert reader.identity == expected


# --- equal for the same store, different otherwise -----------------------------------------


def test_a_rebuild_of_a_copy_of_the_sources_has_the_same_identity(tiny_images, tiny_cache):
    # Another folder, new mtimes, another build time: none of them is part of the identity.
    elsewhere = tiny_images.parent.parent / "copied" / "val"
    shutil.copytree(tiny_images, elsewhere, copy_function=shutil.copyfile)
    other = build_cache(elsewhere, tiny_images.parent / "other.lmdb", workers=1)
    assert other.ok
    assert identity(tiny_images.parent / "other.lmdb") == identity(tiny_cache)


def test_insertion_order_does_not_change_the_identity(tmp_path):
    images = arrays()
    backwards = dict(reversed(list(images.items())))
    assert identity(write(tmp_path / "a.lmdb", images)) == identity(
        write(tmp_path / "b.lmdb", backwards)
    )


def test_a_compacted_copy_has_the_same_identity(tiny_cache, tmp_path):
    copy_cache(tiny_cache, tmp_path / "copy.lmdb", compact=True)
    assert identity(tmp_path / "copy.lmdb") == identity(tiny_cache)


def test_one_pixel_changes_the_identity(tmp_path):
    images = arrays()
    changed = {key: image.copy() for key, image in images.items()}
    changed["img_3"][2, 5, 1] ^= 1
    assert identity(write(tmp_path / "a.lmdb", images)) != identity(
        write(tmp_path / "b.lmdb", changed)
    )


def test_another_extra_changes_the_identity(tmp_path):
    images = arrays()
    write(tmp_path / "a.lmdb", images)
    with CacheWriter(tmp_path / "b.lmdb") as writer:
        for key, image in images.items():
            writer.add(key, image=image, extra={"label": key})
    assert identity(tmp_path / "a.lmdb") != identity(tmp_path / "b.lmdb")


def test_other_settings_change_the_identity(tiny_images, tiny_cache):
    # A cap above every image's size stores the same pixels, under other settings.
    build_cache(tiny_images, tiny_images.parent / "capped.lmdb", max_side=1000, workers=1)
    assert identity(tiny_images.parent / "capped.lmdb") != identity(tiny_cache)


def test_updates_give_the_identity_of_a_fresh_build_of_the_final_set(tmp_path):
    images = arrays(6)
    more = arrays(2, seed=99)
    write(tmp_path / "updated.lmdb", images)
    with CacheWriter(tmp_path / "updated.lmdb") as writer:
        writer.remove("img_1")
        writer.add("img_4", image=more["img_0"], extra={"label": "IMG_4"})
        writer.add("new", image=more["img_1"], extra={"label": "NEW"})
    final = {key: image for key, image in images.items() if key != "img_1"}
    final["img_4"] = more["img_0"]
    final["new"] = more["img_1"]
    assert identity(tmp_path / "updated.lmdb") == identity(write(tmp_path / "fresh.lmdb", final))


def test_a_build_update_gives_the_identity_of_a_fresh_build(tiny_images, tiny_cache):
    (tiny_images / "b.png").unlink()
    shutil.copyfile(tiny_images / "a.jpg", tiny_images / "a2.jpg")
    build_cache(tiny_images, tiny_cache, workers=1)
    build_cache(tiny_images, tiny_images.parent / "fresh.lmdb", workers=1)
    assert identity(tiny_cache) == identity(tiny_images.parent / "fresh.lmdb")


def test_every_commit_of_an_interrupted_writer_holds_its_own_digest(tmp_path):
    # The digest is written in the transaction of the records it covers: a writer stopped
    # after some commits (as by kill -9) leaves a digest that matches what was committed.
    images = arrays(7)
    with pytest.raises(RuntimeError, match="stop"):
        with CacheWriter(tmp_path / "cut.lmdb", commit_images=3) as writer:
            for key, image in images.items():
                writer.add(key, image=image, extra={"label": key.upper()})
            raise RuntimeError("stop")
    with CacheReader(tmp_path / "cut.lmdb") as reader:
        kept = {key: images[key] for key in reader.keys()}
        assert (len(kept), reader.info["complete"]) == (6, False)
        cut = reader.identity
    strip_digest(tmp_path / "cut.lmdb")  # the same records, worked out by a walk
    assert identity(tmp_path / "cut.lmdb") == cut


# --- O(1) from the manifest; a walk for older stores ---------------------------------------


def test_reading_the_identity_reads_no_record(tmp_path, monkeypatch):
    path = write(tmp_path / "a.lmdb", arrays())

    def no_record_read(*args, **kwargs):
        raise AssertionError("the identity read a record")

    for name in ("entry", "keys_after", "key_list", "read"):
        monkeypatch.setattr(Snapshot, name, no_record_read)
    with CacheReader(path) as reader:
        assert re.fullmatch(r"[0-9a-f]{32}", reader.identity)


def test_a_store_without_the_digest_opens_with_the_same_identity(tmp_path):
    path = write(tmp_path / "a.lmdb", arrays())
    before = identity(path)
    strip_digest(path)
    with CacheReader(path) as reader:
        assert DIGEST_FIELD not in reader.info
        assert reader.identity == before


def test_a_store_without_the_digest_is_walked(tmp_path, monkeypatch):
    path = write(tmp_path / "a.lmdb", arrays())
    strip_digest(path)

    def walked(snap):
        raise RuntimeError("walked")

    monkeypatch.setattr(read_identity, "walk_digest", walked)
    with CacheReader(path) as reader, pytest.raises(RuntimeError, match="walked"):
        reader.identity  # noqa: B018


def test_a_digest_copied_forward_by_an_older_writer_is_not_believed(tmp_path):
    # An older writer keeps unknown manifest fields and stamps 'updated' in whole seconds:
    # here it removed img_2 and left the digest of six records behind.
    images = arrays(6)
    path = write(tmp_path / "a.lmdb", images)
    manifest = manifest_of(path)
    put_raw(path, b"meta", b"img_2", None)
    put_raw(path, b"pixels", b"img_2", None)
    manifest.update(images=5, updated="2030-01-01T00:00:00+00:00")
    manifest["total_bytes"] -= images["img_2"].nbytes
    put_manifest(path, manifest)
    del images["img_2"]
    assert identity(path) == identity(write(tmp_path / "fresh.lmdb", images))


def test_the_next_commit_writes_the_digest_again(tmp_path):
    path = write(tmp_path / "a.lmdb", arrays())
    before = identity(path)
    strip_digest(path)
    CacheWriter(path).close()
    manifest = manifest_of(path)
    assert manifest[DIGEST_FIELD]["updated"] == manifest["updated"]
    assert identity(path) == before


# --- validate-cache and cache-info ---------------------------------------------------------


def test_validate_flags_a_forged_digest(tmp_path):
    path = write(tmp_path / "a.lmdb", arrays())
    manifest = manifest_of(path)
    manifest[DIGEST_FIELD]["sum"] = "0" * 63 + "1"
    put_manifest(path, manifest)
    report = validate_cache(path)
    assert [(f.kind, f.key) for f in report.problems] == [("identity", None)]
    assert "records give" in report.problems[0].message
    assert f"lmdb_cache.CacheWriter('{path}').close()" in report.problems[0].fix


def test_the_fix_of_a_forged_digest_mends_it(tmp_path):
    path = write(tmp_path / "a.lmdb", arrays())
    honest = identity(path)
    manifest = manifest_of(path)
    manifest[DIGEST_FIELD]["sum"] = "f" * 64
    put_manifest(path, manifest)
    assert identity(path) != honest
    CacheWriter(path).close()
    assert (validate_cache(path).ok, identity(path)) == (True, honest)


def test_validate_flags_a_malformed_digest(tmp_path):
    path = write(tmp_path / "a.lmdb", arrays())
    manifest = manifest_of(path)
    manifest[DIGEST_FIELD] = "not a map"
    put_manifest(path, manifest)
    report = validate_cache(path)
    assert [(f.kind, f.key) for f in report.problems] == [("identity", None)]
    assert "expected a map" in report.problems[0].message


def test_validate_warns_about_a_store_without_the_digest(tmp_path):
    path = write(tmp_path / "a.lmdb", arrays())
    strip_digest(path)
    report = validate_cache(path)
    assert report.ok
    assert [f.kind for f in report.warnings] == ["identity"]


def test_cache_info_json_has_the_identity(tiny_cache):
    result = CliRunner().invoke(info_command, [str(tiny_cache), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["identity"] == identity(tiny_cache)


def test_cache_info_text_shows_the_identity(tiny_cache):
    result = CliRunner().invoke(info_command, [str(tiny_cache)])
    assert result.exit_code == 0
    assert f"identity:     {identity(tiny_cache)}\n" in result.stdout
