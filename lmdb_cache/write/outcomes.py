"""What decoding a source gave: :class:`Decoded`, :class:`Unchanged` or :class:`Failed`, the
typed results that travel from a decoding process to the writer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Decoded:
    """A source decoded: its metadata and what to store (the pixel array for a codec that
    stores pixels as they are, else the encoded bytes)."""

    key: str
    meta: dict[str, Any]
    stored: Any


@dataclass(frozen=True)
class Unchanged:
    """A source whose content hash is the stored record's: only its fingerprint is new."""

    key: str
    fingerprint: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    """A source that could not be stored, and why."""

    key: str
    reason: str


Outcome = Decoded | Unchanged | Failed
