"""The ``raw`` codec: the pixels themselves, row-major ``(H, W, 3)`` uint8. A read is one memory
copy, or none for a view; a record adds no metadata field (it reads as records always did)."""

from __future__ import annotations

from typing import Any

import numpy as np


class RawCodec:
    """Pixels stored as they are (format version 2)."""

    name: str = "raw"
    format_version: int = 2
    fields: tuple[str, ...] = ()
    levels: tuple[int, int] | None = None
    default_level: int | None = None

    def encode(self, pixels: np.ndarray, level: int | None) -> tuple[Any, dict[str, Any]]:
        return pixels.data, {}

    def stored_length(self, meta: dict[str, Any]) -> int:
        return int(meta["nbytes"])

    def stored_checksum(self, meta: dict[str, Any]) -> int:
        return int(meta["checksum"])  # the stored bytes are the pixels

    def check_meta(self, meta: dict[str, Any], nbytes: int) -> None:
        return None  # nbytes and checksum are every record's fields

    def view(self, stored: Any, meta: dict[str, Any]) -> np.ndarray | None:
        flat = np.frombuffer(stored, dtype=np.uint8)
        return flat.reshape(meta["height"], meta["width"], 3)

    def decode_into(self, stored: Any, meta: dict[str, Any], out: np.ndarray) -> str | None:
        np.copyto(out, np.frombuffer(stored, np.uint8).reshape(meta["height"], meta["width"], 3))
        return None
