"""One flipped byte in an LMDB leaf-node header never kills a reader by a signal.

The adversary's case: XOR a byte of the header of the first node of a leaf page of the
``pixels`` database (``mn_lo``/``mn_hi``: the value's size; ``mn_flags``; ``mn_ksize``). With
``mn_hi`` flipped the size runs past the end of data.mdb, and py-lmdb's ``get`` used to fault
every page of it in (SIGBUS) before any check of ours ran. Each case reads every record in its
own process, so a signal fails the test instead of the test run; a read must raise a
``CacheError`` or give pixels that match their checksum.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lmdb_cache import build_cache

from .pages import DataFile, flip, write_at

ROOT = str(Path(__file__).resolve().parents[2])
BIN = Path(sys.executable).parent

# Every record read twice (an owned copy and a view), each outcome printed: "ok", "BAD" (pixels
# that do not match their checksum) or the CacheError's class name.
READ_ALL = """
import sys, zlib
from lmdb_cache import CacheError, open_cache
reader = open_cache(sys.argv[1])
try:
    keys = reader.keys()
except CacheError as e:
    keys = []
    print("keys", type(e).__name__)
for key in keys:
    for read in (reader.__getitem__, reader.view):
        try:
            record = read(key)
        except CacheError as e:
            print(key, type(e).__name__)
            continue
        good = zlib.crc32(record.image.tobytes()) == record.meta["checksum"]
        print(key, "ok" if good else "BAD")
"""

FIELDS = {"mn_lo": (0, 1), "mn_hi": (2, 3), "mn_flags": (4, 5), "mn_ksize": (6, 7)}
CASES = [(name, byte) for name, offsets in FIELDS.items() for byte in offsets]


@pytest.fixture(scope="module", params=["raw", "zstd"])
def built(request, tmp_path_factory) -> Path:
    """A full-size store of 6 noisy images (every value on overflow pages), per codec."""
    from .conftest import TINY_SPEC, noisy_image, save_image

    root = tmp_path_factory.mktemp(f"nodes-{request.param}")
    for seed, (key, (width, height, mode, orientation)) in enumerate(TINY_SPEC.items()):
        save_image(root / "src" / key, noisy_image(width, height, seed, mode), orientation)
    store = root / "store.lmdb"
    build_cache(root / "src", store, workers=1, codec=request.param)
    return store


def _first_node(store: Path, db: bytes):
    leaves, _ = DataFile(store).database(db)
    first = min(leaves, key=lambda node: (node.page, node.node_offset))
    assert first.overflow or db != b"pixels", "the fixture's pixels must lie on overflow pages"
    return first


def _flipped(built: Path, tmp_path: Path, db: bytes, byte: int, mask: int) -> tuple[Path, str]:
    store = tmp_path / "flipped.lmdb"
    shutil.copytree(built, store)
    node = _first_node(store, db)
    flip(store, node.node_offset + byte, mask)
    return store, node.key.decode()


def _read_all(store: Path) -> dict[str, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", READ_ALL, str(store)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    outcomes: dict[str, set[str]] = {}
    for line in done.stdout.splitlines():
        key, outcome = line.rsplit(" ", 1)
        outcomes.setdefault(key, set()).add(outcome)
    return outcomes


@pytest.mark.parametrize("mask", [0x01, 0xFF], ids=["low-bit", "all-bits"])
@pytest.mark.parametrize(("field", "byte"), CASES, ids=[f"{f}-byte{b}" for f, b in CASES])
def test_flipped_pixel_node_header_is_an_error_or_good_pixels(built, tmp_path, field, byte, mask):
    store, _ = _flipped(built, tmp_path, b"pixels", byte, mask)
    outcomes = _read_all(store)
    assert outcomes, "no record was read"
    assert all(o == "ok" or o.endswith("Error") for found in outcomes.values() for o in found)
    assert not any("BAD" in found for found in outcomes.values())


@pytest.mark.parametrize("byte", FIELDS["mn_hi"], ids=["byte2", "byte3"])
def test_size_past_the_file_is_a_store_damaged_error(built, tmp_path, byte):
    # The adversary's exact case: the declared length runs past the end of data.mdb.
    store, key = _flipped(built, tmp_path, b"pixels", byte, 0xFF)
    assert _read_all(store)[key] == {"StoreDamagedError"}


@pytest.mark.parametrize("byte", FIELDS["mn_hi"], ids=["byte2", "byte3"])
def test_flipped_metadata_node_size_is_an_error_not_a_signal(built, tmp_path, byte):
    store, _ = _flipped(built, tmp_path, b"meta", byte, 0xFF)
    outcomes = _read_all(store)
    assert all(o == "ok" or o.endswith("Error") for found in outcomes.values() for o in found)


def test_store_damaged_error_names_the_store_key_and_rebuild(built, tmp_path):
    store, key = _flipped(built, tmp_path, b"pixels", 2, 0xFF)
    code = (
        "import sys\nfrom lmdb_cache import open_cache\n"
        f"try:\n    open_cache(sys.argv[1])[{key!r}]\nexcept Exception as e:\n    print(e)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(store)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    message = done.stdout
    assert f"cache '{store}' is damaged" in message and repr(key) in message
    assert "running past the last page" in message and "--rebuild" in message


def test_show_of_a_flipped_record_is_exit_1_with_the_reason(built, tmp_path):
    store, key = _flipped(built, tmp_path, b"pixels", 3, 0xFF)
    command = [BIN / "lmdb-cache", "show", store, key, "-o", tmp_path / "out.png"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "is damaged" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.png").exists()


def test_compact_copy_of_a_damaged_overflow_page_count_is_an_error(built, tmp_path):
    # The compacting copy follows the tree and trusts each overflow run's page count.
    store = tmp_path / "damaged.lmdb"
    shutil.copytree(built, store)
    node = DataFile(store).value(b"pixels", b"a.jpg")
    write_at(store, node.value_offset - 16 + 12, struct.pack("<I", 0x00FFFFFF))
    command = [BIN / "lmdb-cache", "copy", store, tmp_path / "copy.lmdb", "--compact"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and str(store) in done.stderr
    assert not (tmp_path / "copy.lmdb").exists()
