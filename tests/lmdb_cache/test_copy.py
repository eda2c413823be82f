"""lmdb-cache copy: a consistent, validated copy, also while a build writes the source; the
destination is a complete valid store or absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmdb_cache import (
    CacheError,
    StoreDamagedError,
    build_cache,
    copy_cache,
    open_cache,
    validate_cache,
)
from lmdb_cache.cli import cli
from lmdb_cache.format.schema import DB_PIXELS

from .crafting import SLOW_BUILD, put_raw


def _records(path: Path) -> dict[str, tuple[dict, bytes]]:
    with open_cache(path) as reader:
        return {k: (dict(reader[k].meta), reader[k].image.tobytes()) for k in reader.keys()}


def _committed(store: Path) -> int:
    """Images committed so far by a build in progress (0 until its first commit)."""
    try:
        with open_cache(store) as reader:
            return len(reader)
    except CacheError:
        return 0


def _hidden(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_copy_holds_the_same_records_and_manifest(tiny_cache, tmp_path):
    result = copy_cache(tiny_cache, tmp_path / "copy.lmdb")
    assert result.report is not None and result.report.ok
    assert result.images == 6
    assert _records(tmp_path / "copy.lmdb") == _records(tiny_cache)
    with open_cache(tiny_cache) as a, open_cache(tmp_path / "copy.lmdb") as b:
        assert a.manifest == b.manifest
    assert _hidden(tmp_path) == []


def test_compact_copy_of_an_updated_store_is_smaller_and_the_same(many_images, tmp_path):
    store = tmp_path / "c.lmdb"
    build_cache(many_images, store, workers=1, max_side=64)
    for path in sorted(many_images.iterdir())[:24]:  # changed sources: their records are rewritten
        os.utime(path, (1, 1))
    build_cache(many_images, store, workers=1)
    plain = copy_cache(store, tmp_path / "plain.lmdb")
    compact = copy_cache(store, tmp_path / "compact.lmdb", compact=True)
    assert compact.data_bytes < plain.data_bytes
    assert _records(tmp_path / "compact.lmdb") == _records(store)


@pytest.mark.parametrize("what", ["store", "file", "folder-with-files"])
def test_an_existing_destination_is_refused_and_left_alone(tiny_cache, tmp_path, what):
    target = tmp_path / "target"
    if what == "store":
        build_cache(tiny_cache.parent / "val", target, workers=1)
    elif what == "file":
        target.write_text("mine")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(FileExistsError, match="target"):
        copy_cache(tiny_cache, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_empty_destination_folder_is_used(tiny_cache, tmp_path):
    (tmp_path / "empty.lmdb").mkdir()
    copy_cache(tiny_cache, tmp_path / "empty.lmdb")
    assert validate_cache(tmp_path / "empty.lmdb").ok


def test_a_damaged_source_leaves_no_destination(tiny_cache, tmp_path):
    with open_cache(tiny_cache) as reader:
        key = reader.keys()[0]
        size = reader[key].meta["nbytes"]
    put_raw(tiny_cache, DB_PIXELS, key.encode(), b"\x07" * size)  # same length, wrong pixels
    with pytest.raises(StoreDamagedError, match=r"failed validation .*validate-cache"):
        copy_cache(tiny_cache, tmp_path / "copy.lmdb")
    assert not (tmp_path / "copy.lmdb").exists()
    assert _hidden(tmp_path) == []


def test_folders_of_killed_copies_are_removed(tiny_cache, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".copy.lmdb.copy-{dead}"
    stale.mkdir()
    (stale / "data.mdb").write_bytes(b"\0" * 4096)
    copy_cache(tiny_cache, tmp_path / "copy.lmdb")
    assert not stale.exists()


def _slow_build(images: Path, store: Path) -> subprocess.Popen:
    build = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, images, store, "32", "0.05"])
    deadline = time.monotonic() + 60
    while _committed(store) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert build.poll() is None, "the build ended before the copy could start"
    return build


def test_a_copy_during_a_build_waits_for_it_and_validates(many_images, tmp_path):
    store = tmp_path / "c.lmdb"
    build = _slow_build(many_images, store)
    waited = []
    try:
        result = copy_cache(store, tmp_path / "copy.lmdb", on_wait=waited.append)
        assert build.wait(timeout=120) == 0
    finally:
        build.kill()
    assert waited == [build.pid]
    assert result.images == 48
    assert validate_cache(tmp_path / "copy.lmdb").ok  # what validate-cache runs
    assert _records(tmp_path / "copy.lmdb") == _records(store)


def test_an_unfinished_store_with_no_build_running_is_refused(many_images, tmp_path):
    store = tmp_path / "c.lmdb"
    build = _slow_build(many_images, store)
    build.kill()
    build.wait()
    with pytest.raises(CacheError, match=r"incomplete.*build-cache .*many -o "):
        copy_cache(store, tmp_path / "copy.lmdb")
    assert not (tmp_path / "copy.lmdb").exists() and _hidden(tmp_path) == []


def test_cli_copies_and_prints_one_json_document(tiny_cache, tmp_path):
    result = CliRunner().invoke(
        cli, ["copy", str(tiny_cache), str(tmp_path / "copy.lmdb"), "--compact", "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["validated"] and doc["compact"] and doc["images"] == 6


@pytest.mark.parametrize("case", ["destination-exists", "not-a-cache", "missing-parent"])
def test_cli_usage_errors_exit_2(tiny_cache, tmp_path, case):
    src, dst = str(tiny_cache), str(tmp_path / "copy.lmdb")
    if case == "destination-exists":
        dst = str(tiny_cache)
    elif case == "not-a-cache":
        src = str(tiny_cache.parent / "val")
    else:
        dst = str(tmp_path / "no" / "such" / "copy.lmdb")
    result = CliRunner().invoke(cli, ["copy", src, dst])
    assert result.exit_code == 2, result.output
    assert result.output.count("Error:") == 1 and "Traceback" not in result.output


def test_cli_damaged_source_exits_1(tiny_cache, tmp_path):
    with open_cache(tiny_cache) as reader:
        key = reader.keys()[0]
        size = reader[key].meta["nbytes"]
    put_raw(tiny_cache, DB_PIXELS, key.encode(), b"\x07" * size)
    result = CliRunner().invoke(cli, ["copy", str(tiny_cache), str(tmp_path / "c.lmdb"), "-q"])
    assert result.exit_code == 1
    assert "failed validation" in result.output and "validate-cache" in result.output
