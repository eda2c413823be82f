"""Sharded builds and ``lmdb-cache merge``: N parts built apart make the store one build makes.

The merged store is compared with a single build of the same folder record by record, the
stored bytes of every database (metadata, pixels, failures), not through the identity the
code under test computes; the shard function against its definition written out here.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmdb_cache import CacheReader, build_cache, validate_cache
from lmdb_cache.check.merge import MergeError, merge_caches
from lmdb_cache.cli import cli
from lmdb_cache.errors import SettingsMismatchError, StoreDamagedError
from lmdb_cache.format.shards import parse_shard, shard_of

from .conftest import random_arrays, write_arrays
from .crafting import manifest_of, put_manifest

DATABASES = ("meta", "pixels", "failures")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Generated receipts (some rotated by EXIF, some PNG) and one file that fails."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tools.make_samples import generate

    root = tmp_path_factory.mktemp("shards") / "img"
    generate(root, count=14, seed=3)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def whole(folder) -> Path:
    out = folder.parent / "whole.lmdb"
    build_cache(folder, out, max_side=256, workers=1)
    return out


def _stored(store: Path) -> dict[str, dict[bytes, bytes]]:
    """Every database's keys and values exactly as stored."""
    with CacheReader(store) as reader:
        return {
            db: {key: bytes(reader.raw.value(db, key)) for key in reader.raw.keys(db)}
            for db in DATABASES
        }


def _build_shards(folder: Path, count: int, max_side: int = 256) -> list[Path]:
    """``count`` shard builds as concurrent processes, as on ``count`` machines."""
    parts = [folder.parent / f"part{i}of{count}.lmdb" for i in range(count)]
    run = "import sys; from lmdb_cache.cli import build_cache_main as m; m()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", run, str(folder), "-o", str(part)]
            + ["--max-side", str(max_side), "--shard", f"{i}/{count}", "-j", "1", "-q"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, part in enumerate(parts)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        failing = shard_of("broken.jpg", count) == procs.index(proc)
        assert proc.returncode == int(failing), err  # broken.jpg fails in its shard only
    return parts


@pytest.fixture(scope="module")
def thirds(folder) -> list[Path]:
    return _build_shards(folder, 3)


def test_shard_of_is_the_documented_hash_and_splits_every_key_once(folder):
    keys = [f"dir/img_{i}.jpg" for i in range(200)] + ["é/ü.png"]
    for key in keys:
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
        assert shard_of(key, 7) == int.from_bytes(digest, "big") % 7
    counts = [sum(shard_of(k, 3) == i for k in keys) for i in range(3)]
    assert sum(counts) == len(keys) and min(counts) > 40  # every shard gets its part
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/3", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="0 <= I < N"):
            parse_shard(bad)


def test_three_concurrent_shard_builds_merge_into_the_single_build(folder, whole, thirds):
    keys = [set(_stored(part)["meta"]) for part in thirds]
    assert all(keys) and not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    for i, part in enumerate(thirds):
        assert manifest_of(part)["shard"] == {"index": i, "count": 3}
    out = folder.parent / "merged.lmdb"
    result = merge_caches(thirds, out)
    assert result.shards == 3 and result.images == 14 and result.failed == 1
    assert _stored(out) == _stored(whole)  # every key, metadata, pixel and failure, as bytes
    report = validate_cache(out, source=folder)
    assert report.ok, report.problems
    merged, single = manifest_of(out), manifest_of(whole)
    for field in ("images", "failed", "total_bytes", "format_version", "settings"):
        assert merged[field] == single[field], field
    assert "shard" not in merged
    with CacheReader(out) as a, CacheReader(whole) as b:
        assert a.identity == b.identity
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".merged")]


def test_parts_with_another_cap_are_refused_naming_both(folder, thirds, tmp_path):
    odd = tmp_path / "odd.lmdb"
    build_cache(folder, odd, max_side=200, workers=1, shard=(1, 3))
    with pytest.raises(SettingsMismatchError, match="max_side") as info:
        merge_caches([thirds[0], odd, thirds[2]], tmp_path / "out.lmdb")
    assert str(thirds[0]) in str(info.value) and str(odd) in str(info.value)
    assert not (tmp_path / "out.lmdb").exists()


def test_a_shard_given_twice_or_missing_is_refused_naming_the_shards(thirds, tmp_path):
    with pytest.raises(MergeError, match=r"shard 1/3 is given twice") as info:
        merge_caches([thirds[0], thirds[1], thirds[1], thirds[2]], tmp_path / "out.lmdb")
    assert str(thirds[1]) in str(info.value)
    with pytest.raises(MergeError, match=r"shard\(s\) 2/3 missing"):
        merge_caches(thirds[:2], tmp_path / "out.lmdb")
    assert not list(tmp_path.iterdir())


def test_shards_of_different_splits_are_refused(folder, thirds, tmp_path):
    halves = _build_shards(folder, 2)
    with pytest.raises(MergeError, match="shards of different splits"):
        merge_caches([*thirds, *halves], tmp_path / "out.lmdb")


def test_stores_of_no_shard_merge_into_one_and_a_shared_key_is_refused(tmp_path):
    a = write_arrays(tmp_path / "a.lmdb", {f"a/{k}": v for k, v in random_arrays(4, 1).items()})
    b = write_arrays(tmp_path / "b.lmdb", {f"b/{k}": v for k, v in random_arrays(3, 2).items()})
    out = tmp_path / "ab.lmdb"
    result = merge_caches([a, b], out)
    assert result.images == 7 and result.shards is None
    stored = _stored(out)
    for part in (a, b):
        for db, values in _stored(part).items():
            assert values.items() <= stored[db].items()
    clash = write_arrays(
        tmp_path / "c.lmdb",
        {"a/" + next(iter(random_arrays(1, 1))): next(iter(random_arrays(1, 5).values()))},
    )
    with pytest.raises(MergeError, match="is in both"):
        merge_caches([a, clash], tmp_path / "ac.lmdb")
    assert not (tmp_path / "ac.lmdb").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ac.lmdb")]


def test_an_unfinished_part_is_refused(thirds, tmp_path):
    part = tmp_path / "part.lmdb"
    CliRunner().invoke(cli, ["copy", str(thirds[0]), str(part), "-q"])
    manifest = manifest_of(part)
    manifest["complete"] = False
    put_manifest(part, manifest)
    with pytest.raises(MergeError, match="incomplete"):
        merge_caches([part, thirds[1], thirds[2]], tmp_path / "out.lmdb")


def test_merge_cli_exit_codes_and_json(thirds, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out.lmdb"
    result = runner.invoke(cli, ["merge", *map(str, thirds), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["ok"] and doc["images"] == 14 and doc["shards"] == 3
    again = runner.invoke(cli, ["merge", *map(str, thirds), "-o", str(out)])
    assert again.exit_code == 2 and "already holds a store" in again.output
    missing = runner.invoke(cli, ["merge", str(thirds[0]), "-o", str(tmp_path / "x.lmdb")])
    assert missing.exit_code == 2 and "missing" in missing.output
    assert "Traceback" not in missing.output
    helptext = runner.invoke(cli, ["merge", "--help"]).output
    assert "--shard I/N" in helptext and "lmdb-cache merge part0.lmdb" in helptext


def test_build_keeps_its_shard_and_refuses_another_without_rebuild(folder, tmp_path):
    part = tmp_path / "p.lmdb"
    build_cache(folder, part, max_side=256, workers=1, shard=(0, 2))
    held = set(_stored(part)["meta"])
    again = build_cache(folder, part, workers=1)  # an update: the store's own shard
    assert again.added == 0 and set(_stored(part)["meta"]) == held
    with pytest.raises(SettingsMismatchError, match="holds shard 0/2, not shard 1/2"):
        build_cache(folder, part, workers=1, shard=(1, 2))
    build_cache(folder, part, workers=1, shard=(1, 2), rebuild=True)
    assert set(_stored(part)["meta"]).isdisjoint(held)
    assert manifest_of(part)["shard"] == {"index": 1, "count": 2}
    result = CliRunner().invoke(
        cli, ["build", str(folder), "-o", str(tmp_path / "whole.lmdb"), "--shard", "2/2"]
    )
    assert result.exit_code == 2 and "0 <= I < N" in result.output
    assert not os.path.exists(tmp_path / "whole.lmdb")


def test_a_crafted_shard_field_is_a_damaged_manifest(thirds, tmp_path):
    part = tmp_path / "part.lmdb"
    CliRunner().invoke(cli, ["copy", str(thirds[0]), str(part), "-q"])
    manifest = manifest_of(part)
    manifest["shard"] = {"index": 5, "count": 3}
    put_manifest(part, manifest)
    with pytest.raises(StoreDamagedError, match="shard"):
        CacheReader(part).manifest  # noqa: B018 (reading it is the test)
