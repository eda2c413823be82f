"""Disk full during a build: a message naming the device, the bytes written and that a re-run
resumes; the store stays valid, and the re-run completes once there is room.

Needs a small filesystem of its own: a tmpfs mounted in a user and mount namespace (unshare),
so nothing on the machine fills up. Skipped where namespaces are not allowed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import noisy_image, save_image

BIN = Path(sys.executable).parent

SCRIPT = """
set -u
mount -t tmpfs -o size=3m tmpfs "$MNT" || exit 77
"$BIN/build-cache" "$SRC" -o "$MNT/c.lmdb" -j 1 -q; echo "first=$?"
"$BIN/validate-cache" "$MNT/c.lmdb" -q --no-checksums; echo "after-full=$?"
mount -o remount,size=64m "$MNT"
"$BIN/build-cache" "$SRC" -o "$MNT/c.lmdb" -j 1 -q; echo "second=$?"
"$BIN/validate-cache" "$MNT/c.lmdb" --source "$SRC" -q; echo "validate=$?"
"""


def test_disk_full_is_a_message_and_a_rerun_resumes(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs 'unshare' to mount a small tmpfs")
    source = tmp_path / "src"
    for i in range(12):  # 12 x 360 KB of pixels: more than the 3 MB filesystem holds
        save_image(source / f"img_{i:02d}.png", noisy_image(400, 300, seed=i))
    mount = tmp_path / "mnt"
    mount.mkdir()
    env = {**os.environ, "MNT": str(mount), "SRC": str(source), "BIN": str(BIN)}
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if done.returncode == 77 or "unshare" in done.stderr and "first=" not in done.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    steps = [line for line in done.stdout.splitlines() if "=" in line and " " not in line]
    assert steps == ["first=1", "after-full=1", "second=0", "validate=0"], done.stdout + done.stderr
    assert "PROBLEM incomplete" in done.stdout  # the full disk left a valid, resumable store
    (message,) = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert f"no space left on tmpfs mounted at {mount}" in message
    assert "bytes written" in message and "re-run the same command, it resumes" in message
    assert "Traceback" not in done.stderr
