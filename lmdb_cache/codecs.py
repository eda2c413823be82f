"""How pixels are stored: ``raw`` (the bytes themselves) or ``zstd`` (one Zstandard frame).

Receipts are mostly white paper, so decoded pixels compress well (about 4x at a 640 cap, 19x
at full size, on sroie-dev) and a frame of a 640-pixel page decompresses in 0.4 ms.
Compression goes through ``zstandard`` (python-zstandard, the maintained binding of the
reference C library).

A compressed record's metadata says so (``codec``) and carries the stored length and a CRC-32
of the stored bytes (``stored_nbytes``, ``stored_checksum``) besides the pixels' own
``nbytes`` and ``checksum``. Before anything is allocated, a frame must declare exactly the
record's pixel length; decompression must produce exactly that many bytes.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import zstandard

RAW = "raw"
ZSTD = "zstd"
CODECS = (RAW, ZSTD)
# Level 5: on sroie-dev receipts at a 640 cap, 0.238 of the raw size (level 3: 0.251, 9: 0.234,
# 19: 0.204), compressing in 3.8 ms per image (level 3: 1.9) and decompressing in 0.39 ms at
# every level up to 15 (docs/benchmarks.md).
DEFAULT_LEVEL = 5
MIN_LEVEL, MAX_LEVEL = 1, 22


def check_codec(codec: Any, level: Any) -> None:
    """Raise ``ValueError`` for an unknown codec or a level outside 1..22 (zstd)."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    if codec == ZSTD and (
        isinstance(level, bool) or not isinstance(level, int) or not MIN_LEVEL <= level <= MAX_LEVEL
    ):
        raise ValueError(
            f"zstd level must be an integer in {MIN_LEVEL}..{MAX_LEVEL}, got {level!r}"
        )


def encode(pixels: np.ndarray, codec: str, level: int) -> tuple[Any, dict[str, Any]]:
    """The bytes to store for ``pixels`` and the metadata fields that describe them.

    Raw pixels are stored as they are and add no field (such a record reads as it always did).
    """
    if codec == RAW:
        return pixels.data, {}
    data = zstandard.ZstdCompressor(level=level).compress(pixels.data)
    fields = {
        "codec": ZSTD,
        "level": level,
        "stored_nbytes": len(data),
        "stored_checksum": zlib.crc32(data),
    }
    return data, fields


#: The metadata fields ``encode`` adds (dropped when a record is encoded again).
CODEC_FIELDS = ("codec", "level", "stored_nbytes", "stored_checksum")


def needs_recode(meta: dict[str, Any], codec: str, level: int | None) -> bool:
    """Whether a stored record is in another codec (or zstd level) than asked."""
    if codec_of(meta) != codec:
        return True
    return codec == ZSTD and meta.get("level") != level


def stored_pixels(stored: Any, meta: dict[str, Any]) -> tuple[np.ndarray | None, str | None]:
    """The pixels of a stored record as a new array, checked against the pixel checksum;
    ``(None, why)`` when the stored bytes do not give exactly those pixels."""
    if len(stored) != stored_length(meta):
        return None, f"its stored value is {len(stored)} bytes, the metadata {stored_length(meta)}"
    if codec_of(meta) == ZSTD:
        if zlib.crc32(stored) != meta["stored_checksum"]:
            return None, "the checksum of its stored bytes does not match"
        pixels = np.empty((meta["height"], meta["width"], 3), dtype=np.uint8)
        problem = decode_into(stored, meta, pixels)
        if problem is not None:
            return None, problem
    else:
        pixels = np.frombuffer(stored, dtype=np.uint8).reshape(meta["height"], meta["width"], 3)
    if zlib.crc32(pixels.data) != meta["checksum"]:
        return None, "the pixel checksum does not match"
    return pixels, None


def codec_of(meta: dict[str, Any]) -> str:
    return meta.get("codec", RAW)


def stored_length(meta: dict[str, Any]) -> int:
    return meta["stored_nbytes"] if codec_of(meta) == ZSTD else meta["nbytes"]


def decode_into(stored: Any, meta: dict[str, Any], out: np.ndarray) -> str | None:
    """Decompress a zstd record's ``stored`` bytes into ``out`` (``meta["nbytes"]`` bytes).

    Returns:
        None, or why the bytes are not a frame of exactly the record's pixels (``out`` is then
        partly written).
    """
    nbytes = meta["nbytes"]
    try:
        declared = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as e:
        return f"not a zstd frame ({e})"
    if declared != nbytes:
        return f"its zstd frame declares {declared} bytes, the metadata {nbytes}"
    target = out if out.flags.c_contiguous else np.empty(out.shape, dtype=np.uint8)
    view = target.data.cast("B")
    filled = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(stored) as reader:
            while filled < nbytes:
                got = reader.readinto(view[filled:])
                if not got:
                    break
                filled += got
            extra = reader.read(1)
    except zstandard.ZstdError as e:
        return f"its zstd frame does not decompress ({e})"
    if filled != nbytes or extra:
        return f"its zstd frame decompresses to {'more' if extra else filled} bytes, not {nbytes}"
    if target is not out:
        np.copyto(out, target)
    return None
