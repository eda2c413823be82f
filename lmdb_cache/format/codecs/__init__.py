"""The codecs a store may hold its pixels in, by name: the only place codec names are compared.

Each codec is one object of :class:`~.base.Codec` in a module of its own (``raw``, ``zstd``);
:func:`register` adds one. Everything else asks this registry (``get(name)``, ``of(meta)``)
and the codec's methods, never compares a name. Adding a codec (say lz4) is one new module
with its class and one :func:`register` call below; ``docs/format.md`` says what it must do.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from .base import Codec
from .raw import RawCodec
from .zstd import ZstdCodec

__all__ = [
    "DEFAULT",
    "Codec",
    "check_codec",
    "describe",
    "get",
    "leveled",
    "names",
    "needs_recode",
    "of",
    "register",
    "registered",
    "stored_pixels",
]

_CODECS: dict[str, Codec] = {}


def register(codec: Codec) -> None:
    """Make ``codec`` known by its name (to readers, writers, validation and the CLI)."""
    _CODECS[codec.name] = codec


register(RawCodec())
register(ZstdCodec())

#: The codec of a record without a ``codec`` field, and of a new store.
DEFAULT = RawCodec.name


def names() -> tuple[str, ...]:
    """The registered codecs' names, in registration order."""
    return tuple(_CODECS)


def registered() -> tuple[Codec, ...]:
    """The registered codecs, in registration order."""
    return tuple(_CODECS.values())


def get(name: Any) -> Codec:
    """The codec called ``name``.

    Raises:
        ValueError: no codec has that name (the message lists the known ones).
    """
    codec = _CODECS.get(name) if isinstance(name, str) else None
    if codec is None:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(_CODECS)}")
    return codec


def of(meta: dict[str, Any]) -> Codec:
    """The codec a record's metadata names (``raw`` when it names none).

    Raises:
        ValueError: it names an unknown codec.
    """
    name = meta.get("codec", DEFAULT)
    codec = _CODECS.get(name) if isinstance(name, str) else None
    if codec is None:
        raise ValueError(f"metadata codec={name!r} is not one of {', '.join(_CODECS)}")
    return codec


def leveled() -> Codec:
    """The codec a level alone asks for (``--level`` without ``--codec``): the first
    registered codec that takes a level."""
    return next(codec for codec in _CODECS.values() if codec.levels is not None)


def check_codec(name: Any, level: Any) -> Codec:
    """The codec ``name``, after checking that ``level`` is one it takes (None: its default).

    Raises:
        ValueError: an unknown codec, a level outside its range, or a level for a codec that
            takes none.
    """
    codec = get(name)
    if level is None:
        return codec
    if codec.levels is None:
        raise ValueError(f"a level ({level}) does not apply to codec {codec.name!r}; drop it")
    low, high = codec.levels
    if isinstance(level, bool) or not isinstance(level, int) or not low <= level <= high:
        raise ValueError(f"{codec.name} level must be an integer in {low}..{high}, got {level!r}")
    return codec


def needs_recode(meta: dict[str, Any], name: str, level: int | None) -> bool:
    """Whether a stored record is in another codec (or level) than ``name``/``level``."""
    codec = of(meta)
    if codec.name != name:
        return True
    return codec.levels is not None and meta.get("level") != level


def describe(name: str, level: int | None) -> str:
    """How a store's pixels are kept, for people: ``raw`` or ``zstd level 5``."""
    return name if get(name).levels is None else f"{name} level {level}"


def stored_pixels(stored: Any, meta: dict[str, Any]) -> tuple[np.ndarray | None, str | None]:
    """A record's pixels as a new array, every checksum checked; ``(None, why)`` when the
    stored bytes do not give exactly those pixels."""
    codec = of(meta)
    length = codec.stored_length(meta)
    if len(stored) != length:
        return None, f"its stored value is {len(stored)} bytes, the metadata {length}"
    pixels = codec.view(stored, meta)
    if pixels is None:
        if zlib.crc32(stored) != codec.stored_checksum(meta):
            return None, "the checksum of its stored bytes does not match"
        pixels = np.empty((meta["height"], meta["width"], 3), dtype=np.uint8)
        problem = codec.decode_into(stored, meta, pixels)
        if problem is not None:
            return None, problem
    if zlib.crc32(pixels.data) != meta["checksum"]:
        return None, "the pixel checksum does not match"
    return pixels, None
