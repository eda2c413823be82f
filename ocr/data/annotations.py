"""Annotation files: the JSON format the pipeline reads (converters: ``ocr.data.formats``).

The format::

    {"images": {"<filename>": {"words": {"<id>": {"points": [[x, y], ...]}}}}}

``<filename>`` is the image's POSIX path relative to the image folder (the cache's key);
points are in raw file pixel coordinates (before EXIF orientation), at least 4 per polygon.
Images without words are allowed (``"words": {}``). The checks and messages are
``lmdb_cache.annotations``'s (one parser for the cache's tools and for training).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmdb_cache.annotations import AnnotationError, load_images, parse_words

from .formats import convert
from .formats.box_lines import read_box_lines

__all__ = ["AnnotationError", "ImageAnnotation", "load_annotations", "parse_icdar_lines"]


@dataclass
class ImageAnnotation:
    """The words of one image.

    Attributes:
        filename: Key of the image (relative POSIX path).
        polygons: One ``(N, 2)`` float64 array per word, raw file coordinates.
        word_ids: The ids of the words, in the same order.
        texts: Transcriptions when the file carries them (``"text"``), else None each.
    """

    filename: str
    polygons: list[np.ndarray] = field(default_factory=list)
    word_ids: list[str] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)


def load_annotations(path: str | os.PathLike[str]) -> dict[str, ImageAnnotation]:
    """Read an annotation JSON file.

    Returns:
        The annotations by image key, in file order.

    Raises:
        AnnotationError: (a ``ValueError``) the file is unreadable or malformed; the message
            names the file and the entry.
    """
    name = os.fspath(path)
    out: dict[str, ImageAnnotation] = {}
    for filename, entry in load_images(name).items():
        words = parse_words(name, filename, entry)
        out[filename] = ImageAnnotation(
            filename=filename,
            polygons=[w.points for w in words],
            word_ids=[w.id for w in words],
            texts=[w.text for w in words],
        )
    return out


def parse_icdar_lines(path: str | os.PathLike[str]) -> list[tuple[np.ndarray, str]]:
    """Read an ICDAR/SROIE per-image text file: ``x1,y1,...,x4,y4,transcription`` a line.

    Handles CRLF line ends, a UTF-8 byte-order mark, blank lines and commas inside the text
    (``ocr.data.formats.box_lines.read_box_lines``).

    Raises:
        AnnotationError: a line does not start with 8 numbers; the message names file and line.
    """
    return read_box_lines(path)


def convert_icdar_folder(
    box_dir: str | os.PathLike[str], image_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Convert a folder of per-image text files into the JSON annotation format.

    Each ``NAME.csv`` / ``NAME.txt`` describes the image ``NAME.<ext>`` found in ``image_dir``
    (default: ``.jpg``). Returns the JSON document (a dict); the ``sroie`` format of
    ``ocr.data.formats`` (``ocr-convert sroie``).
    """
    return convert("sroie", box_dir, images=image_dir)
