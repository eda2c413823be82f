"""The ``zstd`` codec: one Zstandard frame per record, through ``zstandard`` (python-zstandard,
the maintained binding of the reference C library).

Receipts are mostly white paper, so decoded pixels compress well (about 4x at a 640 cap, 19x
at full size, on sroie-dev) and a frame of a 640-pixel page decompresses in 0.4 ms. A record's
metadata carries the stored length and a CRC-32 of the stored bytes (``stored_nbytes``,
``stored_checksum``) besides the pixels' own ``nbytes`` and ``checksum``, and the level it was
compressed with. Before anything is allocated a frame must declare exactly the record's pixel
length, and decompression must produce exactly that many bytes: a frame can never make a
reader allocate more than the record's checked size.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import zstandard

# Level 5: on sroie-dev receipts at a 640 cap, 0.238 of the raw size (level 3: 0.251, 9: 0.234,
# 19: 0.204), compressing in 3.8 ms per image (level 3: 1.9) and decompressing in 0.39 ms at
# every level up to 15 (docs/benchmarks.md).
DEFAULT_LEVEL = 5
MIN_LEVEL, MAX_LEVEL = 1, 22


class ZstdCodec:
    """Pixels stored as one Zstandard frame (format version 3)."""

    name: str = "zstd"
    format_version: int = 3
    fields: tuple[str, ...] = ("codec", "level", "stored_nbytes", "stored_checksum")
    levels: tuple[int, int] | None = (MIN_LEVEL, MAX_LEVEL)
    default_level: int | None = DEFAULT_LEVEL

    def encode(self, pixels: np.ndarray, level: int | None) -> tuple[Any, dict[str, Any]]:
        level = DEFAULT_LEVEL if level is None else level
        data = zstandard.ZstdCompressor(level=level).compress(pixels.data)
        return data, {
            "codec": self.name,
            "level": level,
            "stored_nbytes": len(data),
            "stored_checksum": zlib.crc32(data),
        }

    def stored_length(self, meta: dict[str, Any]) -> int:
        return int(meta["stored_nbytes"])

    def stored_checksum(self, meta: dict[str, Any]) -> int:
        return int(meta["stored_checksum"])

    def check_meta(self, meta: dict[str, Any], nbytes: int) -> None:
        for name in ("level", "stored_nbytes", "stored_checksum"):
            if name not in meta:
                raise ValueError(f"metadata lacks the field {name!r}")
            if type(meta[name]) is not int:
                kind = type(meta[name]).__name__
                raise ValueError(f"metadata field {name!r} is a {kind}, expected {int}")
        # A frame is never much larger than its input (zstd's worst case bound, plus slack).
        if not 1 <= meta["stored_nbytes"] <= nbytes + (nbytes >> 7) + 1024:
            raise ValueError(f"metadata stored_nbytes={meta['stored_nbytes']} is out of range")

    def view(self, stored: Any, meta: dict[str, Any]) -> np.ndarray | None:
        return None  # a frame must be decompressed

    def decode_into(self, stored: Any, meta: dict[str, Any], out: np.ndarray) -> str | None:
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
            return (
                f"its zstd frame decompresses to {'more' if extra else filled} bytes, not {nbytes}"
            )
        if target is not out:
            np.copyto(out, target)
        return None
