"""One writer at a time: a second build of the same store exits 2 naming the running one,
settings are read under the lock, and a store is never left with records of two caps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from lmdb_cache import build_cache, open_cache
from lmdb_cache.cli import build_command

BIN = Path(sys.executable).parent

# A build whose decoding is slowed down, so another one can be started while it runs.
SLOW_BUILD = """
import sys, time
from lmdb_cache import build_cache, decoding
slow = decoding.decode_bytes
def decode_slowly(*args, **kwargs):
    time.sleep(0.1)
    return slow(*args, **kwargs)
decoding.decode_bytes = decode_slowly
build_cache(sys.argv[1], sys.argv[2], max_side=int(sys.argv[3]), workers=1, commit_images=4)
"""


def _start_slow_build(source: Path, output: Path, max_side: int) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, source, output, str(max_side)])
    lock = output / "build.lock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if lock.exists() and lock.read_text().strip() == str(child.pid):
            return child
        time.sleep(0.02)
    child.kill()
    raise AssertionError("the slow build never took the store's lock")


def test_second_build_exits_2_naming_the_running_one(many_images, tmp_path):
    output = tmp_path / "c.lmdb"
    first = _start_slow_build(many_images, output, 16)
    try:
        result = CliRunner().invoke(build_command, [str(many_images), "-o", str(output)])
    finally:
        first.wait()
    assert result.exit_code == 2
    assert f"being written by process {first.pid}" in result.stderr


def test_builds_with_different_caps_never_mix(many_images, tmp_path):
    output = tmp_path / "c.lmdb"
    first = _start_slow_build(many_images, output, 16)
    second = subprocess.run(
        [BIN / "build-cache", many_images, "-o", output, "--max-side", "24", "--rebuild", "-q"],
        capture_output=True,
        text=True,
    )
    assert first.wait() == 0 and second.returncode == 2
    with open_cache(output) as reader:
        assert reader.settings["max_side"] == 16
        assert {max(reader.meta(k)["width"], reader.meta(k)["height"]) for k in reader} == {16}


def test_lock_of_a_killed_build_is_released(many_images, tmp_path):
    output = tmp_path / "c.lmdb"
    first = _start_slow_build(many_images, output, 16)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    result = build_cache(many_images, output, workers=1)
    assert result.ok and result.images == 48


def test_lock_is_released_when_a_build_ends(many_images, tmp_path):
    output = tmp_path / "c.lmdb"
    build_cache(many_images, output, max_side=16, workers=1)
    assert build_cache(many_images, output, workers=1).unchanged == 48
