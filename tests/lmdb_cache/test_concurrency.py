"""One writer at a time: a second build of the same store exits 2 naming the running one,
settings are read under the lock, and a store is never left with records of two caps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmdb_cache import CacheError, TruncatedStoreError, build_cache, open_cache
from lmdb_cache.cli import build_command

from .conftest import noisy_image, save_image
from .crafting import SLOW_BUILD

BIN = Path(sys.executable).parent


def _start_slow_build(source: Path, output: Path, max_side: int) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_BUILD, source, output, str(max_side), "0.1"]
    )
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


def _committed(output: Path) -> bool:
    try:
        with open_cache(output) as reader:
            return len(reader) > 0
    except CacheError:
        return False


def test_lock_of_a_killed_build_is_released(many_images, tmp_path):
    output = tmp_path / "c.lmdb"
    first = _start_slow_build(many_images, output, 16)
    # Killed after its first commit: a kill before it (data.mdb created, nothing committed)
    # leaves a store the next build refuses as truncated, tested on its own below.
    deadline = time.monotonic() + 60
    while not _committed(output) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    result = build_cache(many_images, output, workers=1)
    assert result.ok and result.images == 48


def test_lock_is_released_when_a_build_ends(many_images, tmp_path):
    output = tmp_path / "c.lmdb"
    build_cache(many_images, output, max_side=16, workers=1)
    assert build_cache(many_images, output, workers=1).unchanged == 48


def test_holder_pid_written_just_after_the_lock_is_still_named(many_images, tmp_path):
    """The holder takes the lock, then writes its pid: a build failing in between waits for it."""
    import fcntl
    import threading

    from lmdb_cache import BuildLockedError

    output = tmp_path / "c.lmdb"
    output.mkdir()
    fd = os.open(output / "build.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        threading.Timer(0.1, lambda: os.pwrite(fd, b"4242\n", 0)).start()
        try:
            build_cache(many_images, output, workers=1)
        except BuildLockedError as e:
            assert e.pid == 4242 and "process 4242" in str(e)
        else:
            raise AssertionError("the build did not see the lock")
    finally:
        os.close(fd)


@pytest.mark.slow
def test_decoding_workers_die_with_a_killed_build(tmp_path):
    import psutil

    source = tmp_path / "big"
    for i in range(4):  # large noisy JPEGs: each takes a worker a few hundred milliseconds
        save_image(source / f"big_{i}.jpg", noisy_image(4000, 3000, seed=i))
    build = subprocess.Popen(
        [BIN / "build-cache", source, "-o", tmp_path / "c.lmdb", "-j", "2", "-q"],
        stderr=subprocess.PIPE,
        text=True,
    )
    parent = psutil.Process(build.pid)
    deadline = time.monotonic() + 30
    workers: list = []
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = parent.children()
        time.sleep(0.01)
    assert len(workers) == 2, "the build never started its decoding workers"
    time.sleep(0.2)  # they are decoding now
    os.kill(build.pid, signal.SIGKILL)
    time.sleep(0.1)

    def alive(process: psutil.Process) -> bool:
        try:  # a zombie is dead: only its parent (gone) could collect it
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    stderr = build.communicate()[1]
    assert [w.pid for w in workers if alive(w)] == [] and "Traceback" not in stderr


def test_a_committed_store_cut_short_is_still_refused(many_cache):
    with open(many_cache / "data.mdb", "r+b") as f:
        f.truncate(3 * 4096)
    with pytest.raises(TruncatedStoreError):
        build_cache(many_cache.parent / "many", many_cache, workers=1)


@pytest.mark.parametrize("size", [0, 4096], ids=["empty", "half-a-meta"])
def test_a_build_killed_before_its_first_commit_is_a_clear_error_and_rebuild_fixes_it(
    many_images, tmp_path, size
):
    # A kill between LMDB creating data.mdb and its meta pages looks exactly like a copy cut
    # short (nothing tells them apart), so it is refused the same way, with the fix.
    output = tmp_path / "c.lmdb"
    output.mkdir()
    (output / "data.mdb").write_bytes(b"\0" * size)
    with pytest.raises(TruncatedStoreError, match="--rebuild"):
        build_cache(many_images, output, workers=1)
    result = build_cache(many_images, output, workers=1, rebuild=True, max_side=None)
    assert result.ok and result.images == 48
