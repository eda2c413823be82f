"""Recovery: a damaged store is replaced by --rebuild (built beside it, swapped in when
complete), an update keeps the store's settings, and the fixes validate-cache prints work as
printed."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lmdb_cache import build_cache, errors, open_cache, validate_cache
from lmdb_cache.cli import build_command
from lmdb_cache.images import decode_file

from .crafting import SLOW_BUILD, put_raw, sealed
from .pages import DataFile, flip


def _break_structure(store: Path) -> None:
    """Point a branch page of the meta database at a page far past the end of the file."""
    branch = DataFile(store).database(b"meta")[1][0]
    flip(store, branch.node_offsets[1] + 2, 0x40)


def _truncate(store: Path, fraction: float) -> None:
    data = store / "data.mdb"
    os.truncate(data, int(data.stat().st_size * fraction))


def _cap(store: Path) -> int | None:
    with open_cache(store) as reader:
        return reader.settings["max_side"]


def _same_as_a_fresh_decode(store: Path, source: Path, max_side: int | None) -> bool:
    with open_cache(store, verify=True) as reader:
        keys = reader.keys()
        return keys == sorted(p.name for p in source.iterdir()) and all(
            np.array_equal(reader[k].image, decode_file(source / k, max_side=max_side).pixels)
            for k in keys
        )


def test_update_of_a_damaged_store_says_to_rebuild(many_cache, many_images):
    _break_structure(many_cache)
    with pytest.raises(errors.StoreDamagedError, match="--rebuild"):
        build_cache(many_images, many_cache, workers=1)


def test_update_of_a_damaged_store_exits_1_with_the_fix(many_cache, many_images):
    _break_structure(many_cache)
    result = CliRunner().invoke(build_command, [str(many_images), "-o", str(many_cache)])
    assert (result.exit_code, type(result.exception)) == (1, SystemExit)
    assert "--rebuild" in result.stderr


def test_rebuild_replaces_a_structurally_damaged_store(many_cache, many_images):
    _break_structure(many_cache)
    build_cache(many_images, many_cache, workers=1, rebuild=True)
    assert validate_cache(many_cache, source=many_images).ok
    assert _same_as_a_fresh_decode(many_cache, many_images, 32)


def test_rebuild_of_a_damaged_store_keeps_its_cap(many_cache, many_images):
    flip(many_cache, DataFile(many_cache).value(b"pixels", b"img_03.png").value_offset + 9)
    build_cache(many_images, many_cache, workers=1, rebuild=True)
    assert _cap(many_cache) == 32


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9], ids=["10%", "50%", "90%"])
def test_rebuild_replaces_a_truncated_store_given_its_cap(many_cache, many_images, fraction):
    _truncate(many_cache, fraction)
    build_cache(many_images, many_cache, max_side=32, workers=1, rebuild=True)
    assert validate_cache(many_cache, source=many_images).ok


def test_rebuild_of_a_store_whose_settings_are_lost_asks_for_the_cap(many_cache, many_images):
    _truncate(many_cache, 0.5)
    with pytest.raises(errors.SettingsMismatchError, match="--max-side"):
        build_cache(many_images, many_cache, workers=1, rebuild=True)


def test_update_keeps_the_cap_without_repeating_it(many_cache, many_images):
    (many_images / "img_00.png").unlink()
    result = build_cache(many_images, many_cache, workers=1)
    assert (result.removed, _cap(many_cache)) == (1, 32)


def test_rebuild_keeps_the_cap(many_cache, many_images):
    build_cache(many_images, many_cache, workers=1, rebuild=True)
    assert _cap(many_cache) == 32


def test_rebuild_with_a_new_cap_changes_it(many_cache, many_images):
    build_cache(many_images, many_cache, max_side=16, workers=1, rebuild=True)
    assert _cap(many_cache) == 16 and _same_as_a_fresh_decode(many_cache, many_images, 16)


def test_rebuild_to_full_size_takes_max_side_none(many_cache, many_images):
    result = CliRunner().invoke(
        build_command, [str(many_images), "-o", str(many_cache), "--rebuild", "--max-side", "none"]
    )
    assert result.exit_code == 0 and _cap(many_cache) is None


def _printed_fix(report, kind: str) -> list[str]:
    (message,) = [p.message for p in report.problems if p.kind == kind]
    command = re.search(r"'(build-cache [^']*)'", message).group(1)
    return shlex.split(command)[1:]


def test_fix_printed_for_a_stale_capped_cache_works_as_printed(many_cache, many_images):
    (many_images / "img_05.png").write_bytes((many_images / "img_06.png").read_bytes())
    fix = _printed_fix(validate_cache(many_cache, source=many_images), "stale-changed")
    assert CliRunner().invoke(build_command, fix).exit_code == 0
    assert validate_cache(many_cache, source=many_images).ok and _cap(many_cache) == 32


def test_fix_printed_for_a_damaged_record_works_as_printed(many_cache, many_images):
    flip(many_cache, DataFile(many_cache).value(b"pixels", b"img_03.png").value_offset + 9)
    fix = _printed_fix(validate_cache(many_cache), "checksum")
    assert CliRunner().invoke(build_command, fix).exit_code == 0
    assert validate_cache(many_cache, source=many_images).ok and _cap(many_cache) == 32


def test_fix_printed_for_an_interrupted_build_works_as_printed(many_cache, many_images):
    with open_cache(many_cache) as reader:
        manifest = dict(reader.manifest)
    put_raw(
        many_cache, b"manifest", b"manifest", sealed({**manifest, "complete": False}, b"manifest")
    )
    fix = _printed_fix(validate_cache(many_cache), "incomplete")
    assert CliRunner().invoke(build_command, fix).exit_code == 0
    assert validate_cache(many_cache, source=many_images).ok


def test_killed_rebuild_leaves_the_old_store_and_the_next_build_removes_its_folder(
    many_cache, many_images
):
    rebuild = [many_images, many_cache, "16", "0.2", "rebuild"]
    child = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, *rebuild])
    leftover = many_cache.parent / f".{many_cache.name}.rebuild-{child.pid}"
    deadline = time.monotonic() + 60
    while not (leftover / "data.mdb").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # a few commits into the new store
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert leftover.exists()
    assert validate_cache(many_cache, source=many_images).ok and _cap(many_cache) == 32
    build_cache(many_images, many_cache, workers=1)
    assert not leftover.exists()


def test_reader_of_the_replaced_store_keeps_its_snapshot_then_refresh_moves(
    many_cache, many_images
):
    rebuild = [str(many_images), "-o", str(many_cache), "--max-side", "16", "--rebuild"]
    with open_cache(many_cache) as reader:
        view = reader.view("img_01.png").image
        # Another process rebuilds (a build in this process forks, which ends its snapshots).
        subprocess.run([Path(sys.executable).parent / "build-cache", *rebuild], check=True)
        assert (view.shape[:2], reader.meta("img_01.png")["width"]) == ((24, 32), 32)
        del view
        reader.refresh()
        assert reader.meta("img_01.png")["width"] == 16 and reader.settings["max_side"] == 16


def test_rebuild_keeps_other_files_of_the_store_folder(many_cache, many_images):
    (many_cache / "notes.txt").write_text("mine")
    result = build_cache(many_images, many_cache, workers=1, rebuild=True)
    (kept,) = [w for w in result.warnings if "notes.txt" in w]
    folder = re.search(r"kept in '([^']*)'", kept).group(1)
    assert (Path(folder) / "notes.txt").read_text() == "mine"
