"""Annotation files as the cache's tools read them: which images they name, and the polygons of
one image. No dependency beyond numpy; ``ocr.data.annotations.load_annotations`` builds on it
(one parser for both).

The format, the one ``ocr.data.annotations`` reads for training::

    {"images": {"<key>": {"words": {"<id>": {"points": [[x, y], ...], "text": "..."}}}}}

``<key>`` is the image's key in the cache (its POSIX path relative to the folder given to
``build-cache``). Points are in the raw file frame (before the EXIF orientation; see
``lmdb_cache.geometry``), at least 4 per polygon, finite numbers. ``"words"`` may be absent or
empty. A word whose ``"text"`` is ``"###"`` is *don't care* (the ICDAR convention: present in
the image, neither learned nor counted). A file starting with a UTF-8 byte-order mark is read.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The ICDAR transcription of a word that is present but not to be learned or counted.
DONT_CARE = "###"

_EXPECTED = '{"images": {"<filename>": {"words": {"<id>": {"points": [[x, y], ...]}}}}}'


class AnnotationError(ValueError):
    """A malformed or unreadable annotation file; the message names the file and the entry."""


class NotAnnotatedError(KeyError):
    """An image key that an annotation file has no entry for."""

    def __init__(self, key: str, path: str, keys: list[str]) -> None:
        self.key = key
        self.path = path
        self.keys = keys
        super().__init__(key)

    def __str__(self) -> str:
        some = ", ".join(repr(k) for k in self.keys[:3]) + (", ..." if len(self.keys) > 3 else "")
        listed = f"it annotates {len(self.keys)} image(s): {some}" if self.keys else "it is empty"
        return (
            f"image {self.key!r} has no entry in annotation file '{self.path}' ({listed}); keys "
            "are POSIX paths relative to the image folder, as the cache's keys"
        )


@dataclass(frozen=True)
class Word:
    """One annotated word.

    Attributes:
        id: The word's id in the file.
        points: ``(N, 2)`` float64 polygon, raw file coordinates, N >= 4.
        text: Its transcription (``"text"``), or None when the file gives none.
    """

    id: str
    points: np.ndarray
    text: str | None

    @property
    def dont_care(self) -> bool:
        """Whether the word is flagged *don't care* (its text is ``"###"``)."""
        return self.text == DONT_CARE


def load_images(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an annotation file and return its ``"images"`` object, unchecked below that level.

    Raises:
        AnnotationError: (a ``ValueError``) the file cannot be read, is not JSON, or has no
            ``"images"`` object; the message names the file.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8-sig") as f:
            data = json.load(f)
    except OSError as e:
        raise AnnotationError(f"cannot read annotation file '{name}': {e.strerror}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"annotation file '{name}' is not valid JSON: {e}") from e
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict):
        raise AnnotationError(
            f"annotation file '{name}' has no 'images' object; expected {_EXPECTED}"
        )
    return images


def annotated_keys(path: str | os.PathLike[str]) -> list[str]:
    """The image keys an annotation file names, sorted.

    Raises:
        AnnotationError: see :func:`load_images`.
    """
    return sorted(load_images(path))


def read_words(path: str | os.PathLike[str], key: str) -> list[Word]:
    """The words of one image of an annotation file, in file order.

    Args:
        path: The annotation file.
        key: The image's key.

    Returns:
        Its words (an empty list for an image annotated with no words).

    Raises:
        AnnotationError: (a ``ValueError``) the file or this image's entry is malformed; the
            message names the file, the image and the word.
        NotAnnotatedError: (a ``KeyError``) the file has no entry for ``key``.
    """
    name = os.fspath(path)
    images = load_images(name)
    if key not in images:
        raise NotAnnotatedError(key, name, sorted(images))
    return parse_words(name, key, images[key])


def parse_words(path: str, key: str, entry: Any) -> list[Word]:
    """Check and convert one image's entry (``{"words": {...}}``) of the file ``path``.

    Raises:
        AnnotationError: the entry, a word or a point is malformed.
    """
    where = f"image {key!r}"
    words = entry.get("words", {}) if isinstance(entry, dict) else None
    if not isinstance(words, dict):
        raise _fail(path, where, "must be an object with a 'words' object")
    out = []
    for word_id, word in words.items():
        word_where = f"{where}, word {word_id!r}"
        if not isinstance(word, dict) or "points" not in word:
            raise _fail(path, word_where, "must be an object with 'points'")
        text = word.get("text")
        out.append(
            Word(
                id=str(word_id),
                points=_parse_points(path, word_where, word["points"]),
                text=text if isinstance(text, str) else None,
            )
        )
    return out


def _fail(path: str, where: str, what: str) -> AnnotationError:
    return AnnotationError(f"annotation file '{path}', {where}: {what}")


def _is_finite_number(value: Any) -> bool:
    # bool is an int; a point given as true/false is a mistake, never 1/0.
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


def _parse_points(path: str, where: str, points: Any) -> np.ndarray:
    if not isinstance(points, list) or len(points) < 4:
        raise _fail(
            path, where, f"'points' must be a list of at least 4 [x, y] pairs, got {points!r:.80}"
        )
    out = np.empty((len(points), 2), dtype=np.float64)
    for i, pair in enumerate(points):
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(_is_finite_number(v) for v in pair)
        ):
            raise _fail(
                path, where, f"point {i} must be [x, y] with finite numbers, got {pair!r:.60}"
            )
        out[i] = pair
    return out
