"""Tests for reading and decoding bad sources: odd EXIF orientation types, files that are not
regular files, and sides longer than the cache format holds.

Expectations come from Pillow itself (``ImageOps.exif_transpose``, ``convert("RGB")``), from
``os.stat`` of the files the test made, or are written out by hand.
"""

from __future__ import annotations

import io
import os
import re
import socket
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps, TiffImagePlugin

# The module, not its names: a test of a function the module lacks then fails on its own
# (AttributeError), and the other tests in this file still run.
from lmdb_cache import images
from lmdb_cache.errors import ImageDecodeError
from lmdb_cache.format.schema import MAX_SIDE

ORIENTATION = 0x0112

# TIFF field types (TIFF 6.0, section 2).
BYTE, ASCII, SHORT, LONG, RATIONAL = 1, 2, 3, 4, 5
UNDEFINED, SSHORT, SLONG, SRATIONAL, FLOAT, DOUBLE = 7, 8, 9, 10, 11, 12


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _exif_segment(field_type: int, count: int, value: bytes) -> bytes:
    """An APP1 EXIF payload whose IFD0 holds only an orientation entry of the given type.

    Written by hand because Pillow's ``Image.Exif`` stores orientation as SHORT whatever
    value it is given.
    """
    header = b"II*\x00" + struct.pack("<I", 8)  # little-endian TIFF, IFD0 right after
    if len(value) <= 4:  # fits in the entry's value field
        entry = struct.pack("<HHI", ORIENTATION, field_type, count) + value.ljust(4, b"\x00")
        tail = b""
    else:  # stored after the IFD: 8 header + 2 count + 12 entry + 4 next-IFD offset
        entry = struct.pack("<HHII", ORIENTATION, field_type, count, 8 + 2 + 12 + 4)
        tail = value
    ifd = struct.pack("<H", 1) + entry + struct.pack("<I", 0)
    return b"Exif\x00\x00" + header + ifd + tail


def _jpeg_with_orientation(path: Path, field_type: int, count: int, value: bytes) -> Path:
    """A 24 x 40 noise JPEG (not square, so transposes change its shape) with that EXIF."""
    segment = _exif_segment(field_type, count, value)
    Image.fromarray(_noise(24, 40)).save(path, "JPEG", quality=95, exif=segment)
    with Image.open(path) as written:
        if written.info.get("exif") != segment:
            raise RuntimeError(f"test setup: Pillow rewrote the EXIF of {path.name}")
    return path


def _pillow_upright(path: Path) -> np.ndarray:
    """What Pillow makes of the file: upright by its EXIF, then ``convert("RGB")``."""
    # From bytes, as decode_file reads: by path, Pillow memory-maps some TIFFs differently.
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def _pillow_raw(path: Path) -> np.ndarray:
    """The file's pixels as stored, with no EXIF handling."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _assert_same_pixels(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == np.uint8
    assert got.shape == expected.shape
    differing = int(np.count_nonzero((got != expected).any(axis=-1)))
    assert differing == 0, f"{differing} of {got.shape[0] * got.shape[1]} pixels differ"


def _names(path: Path) -> str:
    return re.escape(f"cannot decode '{path}'")


# --- 1. Orientation read as Pillow reads it ---------------------------------------------------

APPLIED_ORIENTATIONS = [
    pytest.param(SHORT, 1, struct.pack("<H", 6), 6, id="short-6"),
    pytest.param(LONG, 1, struct.pack("<I", 8), 8, id="long-8"),
    pytest.param(SSHORT, 1, struct.pack("<h", 3), 3, id="sshort-3"),
    pytest.param(SLONG, 1, struct.pack("<i", 2), 2, id="slong-2"),
    pytest.param(RATIONAL, 1, struct.pack("<II", 6, 1), 6, id="rational-6/1"),
    pytest.param(RATIONAL, 1, struct.pack("<II", 14, 2), 7, id="rational-14/2"),
    pytest.param(SRATIONAL, 1, struct.pack("<ii", 5, 1), 5, id="srational-5/1"),
    pytest.param(FLOAT, 1, struct.pack("<f", 8.0), 8, id="float-8.0"),
    pytest.param(DOUBLE, 1, struct.pack("<d", 4.0), 4, id="double-4.0"),
]


@pytest.mark.parametrize(("field_type", "count", "value", "expected"), APPLIED_ORIENTATIONS)
def test_orientation_of_any_numeric_type_is_applied_like_pillow(
    tmp_path: Path, field_type: int, count: int, value: bytes, expected: int
) -> None:
    path = _jpeg_with_orientation(tmp_path / "o.jpg", field_type, count, value)
    upright = _pillow_upright(path)
    if np.array_equal(upright, _pillow_raw(path)):
        raise RuntimeError("test setup: Pillow did not apply this orientation")
    decoded = images.decode_file(path)
    _assert_same_pixels(decoded.pixels, upright)
    assert decoded.orientation == expected
    assert type(decoded.orientation) is int


IGNORED_ORIENTATIONS = [
    pytest.param(RATIONAL, 1, struct.pack("<II", 13, 2), id="rational-6.5"),
    pytest.param(RATIONAL, 1, struct.pack("<II", 6, 0), id="rational-6/0"),
    pytest.param(SHORT, 1, struct.pack("<H", 0), id="short-0"),
    pytest.param(SHORT, 1, struct.pack("<H", 9), id="short-9"),
    pytest.param(DOUBLE, 1, struct.pack("<d", 6.5), id="double-6.5"),
    pytest.param(ASCII, 2, b"6\x00", id="ascii-6"),
    pytest.param(BYTE, 1, b"\x06", id="byte-6"),
    pytest.param(UNDEFINED, 1, b"\x06", id="undefined-6"),
]


@pytest.mark.parametrize(("field_type", "count", "value"), IGNORED_ORIENTATIONS)
def test_orientation_pillow_ignores_counts_as_one(
    tmp_path: Path, field_type: int, count: int, value: bytes
) -> None:
    path = _jpeg_with_orientation(tmp_path / "o.jpg", field_type, count, value)
    raw = _pillow_raw(path)
    if not np.array_equal(_pillow_upright(path), raw):
        raise RuntimeError("test setup: Pillow applied this orientation")
    decoded = images.decode_file(path)
    _assert_same_pixels(decoded.pixels, raw)
    assert decoded.orientation == 1


@pytest.mark.parametrize(
    "value", [pytest.param([6], id="list"), pytest.param((6,), id="tuple"), pytest.param("6")]
)
def test_orientation_that_is_no_number_counts_as_one(value: Any) -> None:
    # Image files cannot carry these for orientation (Pillow truncates a count above 1), so
    # set them in memory. Pillow's exif_transpose would raise on the unhashable list.
    pixels = _noise(24, 40)
    image = Image.fromarray(pixels)
    image.getexif()[ORIENTATION] = value
    decoded = images.normalize(image)
    assert decoded.orientation == 1
    _assert_same_pixels(decoded.pixels, pixels)


@pytest.mark.parametrize(
    ("field_type", "value", "expected"),
    [
        pytest.param(RATIONAL, TiffImagePlugin.IFDRational(6, 1), 6, id="rational-6/1"),
        pytest.param(FLOAT, 8.0, 8, id="float-8.0"),
        pytest.param(DOUBLE, 5.0, 5, id="double-5.0"),
    ],
)
def test_tiff_orientation_of_numeric_type_is_applied_once(
    tmp_path: Path, field_type: int, value: object, expected: int
) -> None:
    # Pillow's TIFF loader turns the image upright itself while loading; the decoder must
    # still report the orientation and the raw (as written) size, and not transpose twice.
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags.tagtype[ORIENTATION] = field_type
    tags[ORIENTATION] = value
    path = tmp_path / "o.tif"
    Image.fromarray(_noise(24, 40)).save(path, "TIFF", tiffinfo=tags)
    decoded = images.decode_file(path)
    _assert_same_pixels(decoded.pixels, _pillow_upright(path))
    assert decoded.orientation == expected
    assert (decoded.raw_width, decoded.raw_height) == (40, 24)


# --- 2. Non-regular files never hang or abort -------------------------------------------------


def _finishes(call: Callable[[], object], seconds: float = 5.0) -> object:
    """Run ``call`` in a thread; re-raise what it raised, or fail if it is still blocked."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as e:  # handed to the test thread below
            outcome["error"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"still blocked after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    expected = _names(fifo) + ": " + re.escape("unreadable: not a regular file (a FIFO)")
    try:
        with pytest.raises(ImageDecodeError, match=expected):
            _finishes(lambda: images.decode_file(fifo))
    finally:
        # A reader blocked in open() returns once a writer comes and goes, so a failed run
        # leaves no thread behind.
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # ENXIO: nobody is reading, the call did not block


def _directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "x.jpg"
    path.mkdir()
    return path


def _socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Bound by a relative name: the absolute tmp_path may exceed AF_UNIX's 108-byte limit.
    monkeypatch.chdir(tmp_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind("s.png")
    sock.close()  # the socket file stays on disk
    return tmp_path / "s.png"


def _character_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "n.jpg"
    path.symlink_to("/dev/null")
    return path


def _block_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "b.jpg"
    try:
        os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    except OSError as e:  # needs CAP_MKNOD
        pytest.skip(f"cannot create a block device here: {e.strerror}")
    return path


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        pytest.param(_directory, "a directory", id="directory"),
        pytest.param(_socket, "a socket", id="socket"),
        pytest.param(_character_device, "a character device", id="character-device"),
        pytest.param(_block_device, "a block device", id="block-device"),
    ],
)
def test_special_file_is_refused_naming_its_kind(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[Path, pytest.MonkeyPatch], Path],
    kind: str,
) -> None:
    path = make(tmp_path, monkeypatch)
    expected = _names(path) + ": " + re.escape(f"unreadable: not a regular file ({kind})")
    with pytest.raises(ImageDecodeError, match=expected):
        _finishes(lambda: images.decode_file(path))


@pytest.mark.parametrize("what", ["missing", "dangling-symlink"])
def test_source_that_cannot_be_opened_is_unreadable(tmp_path: Path, what: str) -> None:
    path = tmp_path / "x.jpg"
    if what == "dangling-symlink":
        path.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(ImageDecodeError, match=_names(path) + ": unreadable: No such file"):
        images.read_source(path)


def test_symlink_to_regular_image_is_read_through(tmp_path: Path) -> None:
    target = tmp_path / "real.png"
    Image.fromarray(_noise(24, 40)).save(target)
    link = tmp_path / "link.png"
    link.symlink_to(target)
    data, st = images.read_source(link)
    assert data == target.read_bytes()
    assert (st.st_dev, st.st_ino) == (os.stat(target).st_dev, os.stat(target).st_ino)


def test_read_source_stat_describes_the_bytes_returned(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    Image.fromarray(_noise(48, 64)).save(path, "JPEG")
    os.utime(path, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    data, st = images.read_source(path)
    assert data == path.read_bytes()
    assert st.st_size == len(data)
    assert st.st_mtime_ns == 1_600_000_000_123_456_789


# --- 3. Sides above the format's limit are refused at decode time ------------------------------


def _grey_strip(path: Path, width: int, height: int) -> Path:
    """A 1-pixel-thin noise PNG: long sides, few pixels, a small file."""
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, size=(height, width), dtype=np.uint8), "L").save(path)
    return path


@pytest.mark.parametrize(
    ("width", "height", "side"),
    [
        pytest.param(MAX_SIDE + 1, 1, "width", id="wide"),
        pytest.param(1, MAX_SIDE + 1, "height", id="tall"),
    ],
)
def test_side_over_format_limit_is_refused(
    tmp_path: Path, width: int, height: int, side: str
) -> None:
    assert MAX_SIDE == 2**18  # the limit the message below spells out
    path = _grey_strip(tmp_path / "strip.png", width, height)
    reason = f"{side} 262145 exceeds the cache format's limit of 262144 pixels per side"
    with pytest.raises(ImageDecodeError, match=_names(path) + ": " + re.escape(reason)):
        images.decode_file(path)


@pytest.mark.parametrize(
    ("width", "height"),
    [pytest.param(MAX_SIDE, 1, id="wide"), pytest.param(1, MAX_SIDE, id="tall")],
)
def test_side_at_format_limit_decodes(tmp_path: Path, width: int, height: int) -> None:
    path = _grey_strip(tmp_path / "strip.png", width, height)
    decoded = images.decode_file(path)
    _assert_same_pixels(decoded.pixels, _pillow_raw(path))
