"""What every annotation format shares: the error, the converted document and its checks.

A format is a module of this package with a ``FORMAT`` object (a :class:`Format`): its name,
one line of help, an example command, and ``read(src, images)`` that returns the project's
annotation document (``{"images": {key: {"words": {id: {"points": ..., "text": ...}}}}}``).
Word ids are ``"0000"``, ``"0001"``, ... per image in the order the source lists the words.
Points are copied as the source gives them (the raw file frame; no orientation applied).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmdb_cache.annotations import DONT_CARE, AnnotationError
from lmdb_cache.images import scan_images

__all__ = [
    "DONT_CARE",
    "ConvertError",
    "Format",
    "ImageCheck",
    "check_images",
    "image_names",
    "make_word",
    "word_id",
    "write_document",
]


class ConvertError(AnnotationError):
    """A source annotation file is malformed; the message names the file and line or entry.

    Attributes:
        path: The source file.
        where: ``"line N"`` or ``"entry N"``.
        reason: What is wrong.
    """

    def __init__(self, path: str | os.PathLike[str], where: str, reason: str) -> None:
        self.path = os.fspath(path)
        self.where = where
        self.reason = reason
        super().__init__(f"'{self.path}', {where}: {reason}")


@dataclass(frozen=True)
class Format:
    """One source format.

    Attributes:
        name: What users type (``ocr-convert NAME ...``).
        summary: One line: what the source looks like.
        example: An example command line.
        read: ``read(src, images)`` -> the annotation document; raises :class:`ConvertError`.
    """

    name: str
    summary: str
    example: str
    read: Callable[[Path, Path | None], dict[str, Any]]


def image_names(images: Path | None) -> dict[str, str]:
    """File name by stem of the files directly in ``images`` (empty when None)."""
    if images is None:
        return {}
    return {p.stem: p.name for p in sorted(images.iterdir()) if p.is_file()}


def word_id(index: int) -> str:
    """The id of the ``index``-th word of an image (``"0000"``, ``"0001"``, ...)."""
    return f"{index:04d}"


def make_word(points: Sequence[Sequence[float]], text: str | None) -> dict[str, Any]:
    """A word entry; ``text`` None leaves the key out (the format carries no transcription)."""
    word: dict[str, Any] = {"points": [[_number(x), _number(y)] for x, y in points]}
    if text is not None:
        word["text"] = text
    return word


def _number(value: float) -> float | int:
    # Integral coordinates stay ints so the JSON reads like the source.
    return int(value) if float(value).is_integer() else float(value)


def write_document(doc: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the annotation JSON atomically: a temporary file beside ``path``, then a rename.

    A reader never sees half a file, and an interrupted run leaves the old file whole.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


@dataclass
class ImageCheck:
    """Images listed by the annotations but absent, and images present but not listed.

    Attributes:
        missing: Keys the annotations list that are not files in the image folder.
        unlisted: Image files in the folder (relative POSIX paths) no annotation lists.
    """

    missing: list[str]
    unlisted: list[str]


def check_images(doc: dict[str, Any], images: str | os.PathLike[str]) -> ImageCheck:
    """Compare the keys of a converted document with the image files below ``images``."""
    root = Path(images)
    keys = list(doc["images"])
    missing = [k for k in keys if not (root / k).is_file()]
    listed = set(keys)
    unlisted = [k for k in scan_images(root) if k not in listed]
    return ImageCheck(missing=missing, unlisted=unlisted)
