"""The codec protocol: everything the rest of the package may ask of a way of storing pixels.

A codec turns a record's pixels (``(H, W, 3)`` uint8, C-contiguous) into the bytes stored in
the ``pixels`` database and back. It names itself in the record's metadata (``codec``; a
record without the field is ``raw``), adds the metadata fields that describe its bytes, checks
them, and says which format version a store needs to hold its records (a reader of an older
version then refuses the store by its version instead of misreading the bytes).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Codec(Protocol):
    """One way of storing a record's pixels.

    Attributes:
        name: As written in the metadata (``codec``) and the store's settings.
        format_version: The lowest format version that reads records stored this way.
        fields: The metadata fields :meth:`encode` adds (dropped when a record is encoded
            again with another codec).
        levels: ``(lowest, highest)`` compression level it takes, or None for none.
        default_level: The level used when none is asked (None when it takes none).
    """

    name: str
    format_version: int
    fields: tuple[str, ...]
    levels: tuple[int, int] | None
    default_level: int | None

    def encode(self, pixels: np.ndarray, level: int | None) -> tuple[Any, dict[str, Any]]:
        """The bytes to store for ``pixels`` and the metadata fields that describe them."""
        ...

    def stored_length(self, meta: dict[str, Any]) -> int:
        """How many bytes the record's stored value must have."""
        ...

    def stored_checksum(self, meta: dict[str, Any]) -> int:
        """The CRC-32 the record's stored bytes must have."""
        ...

    def check_meta(self, meta: dict[str, Any], nbytes: int) -> None:
        """Raise ``ValueError`` unless the codec's fields of ``meta`` are present, typed and in
        range for a record of ``nbytes`` pixel bytes."""
        ...

    def view(self, stored: Any, meta: dict[str, Any]) -> np.ndarray | None:
        """The pixels as a read-only ``(H, W, 3)`` array over ``stored`` itself (no copy), or
        None when the codec must decode into an array (:meth:`decode_into`). The length of
        ``stored`` is already checked."""
        ...

    def decode_into(self, stored: Any, meta: dict[str, Any], out: np.ndarray) -> str | None:
        """Write the record's pixels into ``out`` (its checked shape, any strides).

        Returns:
            None, or why ``stored`` does not give exactly the record's pixels (``out`` is then
            partly written).
        """
        ...
