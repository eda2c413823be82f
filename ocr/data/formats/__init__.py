"""Converters from annotation formats people have into this project's annotation JSON.

A registry like a codec map: each format is one module of this package with a ``FORMAT``
(a :class:`Format`); adding a format is one file plus its name in ``_MODULES``. Nothing
outside this package compares format names.

    doc = convert("icdar2015", "ch4_test_gt", images="ch4_test_images")
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from .base import ConvertError, Format, ImageCheck, check_images, write_document

__all__ = [
    "ConvertError",
    "Format",
    "ImageCheck",
    "check_images",
    "convert",
    "formats",
    "write_document",
]

_MODULES = ("icdar2015", "sroie", "mmocr", "paddleocr")


def formats() -> dict[str, Format]:
    """The formats by name, in the order the help lists them."""
    out = {}
    for module in _MODULES:
        fmt: Format = importlib.import_module(f"{__name__}.{module}").FORMAT
        out[fmt.name] = fmt
    return out


def convert(
    name: str, src: str | os.PathLike[str], images: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Convert ``src`` (a file or folder in format ``name``) into the annotation document.

    Args:
        name: A key of :func:`formats`.
        src: The source annotation file or folder.
        images: The image folder, used to take real file names and relative keys.

    Returns:
        ``{"images": {key: {"words": {"0000": {"points": [[x, y], ...], "text": ...}}}}}``.

    Raises:
        ValueError: ``name`` is not a known format.
        ConvertError: (an ``AnnotationError``) the source is malformed; names file and line.
        OSError: ``src`` or ``images`` cannot be read.
    """
    known = formats()
    if name not in known:
        raise ValueError(f"unknown annotation format {name!r}; known: {', '.join(known)}")
    return known[name].read(Path(src), None if images is None else Path(images))
