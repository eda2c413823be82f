"""Annotation files: the JSON format the pipeline reads, and a converter from ICDAR/SROIE text.

The format::

    {"images": {"<filename>": {"words": {"<id>": {"points": [[x, y], ...]}}}}}

``<filename>`` is the image's POSIX path relative to the image folder (the cache's key);
points are in raw file pixel coordinates (before EXIF orientation), at least 4 per polygon.
Images without words are allowed (``"words": {}``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..checks import is_number


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and the entry."""


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


def _fail(path: str, where: str, what: str) -> AnnotationError:
    return AnnotationError(f"annotation file '{path}', {where}: {what}")


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
            or not all(is_number(v, numpy=False) for v in pair)
            or not all(math.isfinite(v) for v in pair)
        ):
            raise _fail(
                path, where, f"point {i} must be [x, y] with finite numbers, got {pair!r:.60}"
            )
        out[i] = pair
    return out


def load_annotations(path: str | os.PathLike[str]) -> dict[str, ImageAnnotation]:
    """Read an annotation JSON file.

    Returns:
        The annotations by image key, in file order.

    Raises:
        AnnotationError: (a ``ValueError``) the file is unreadable or malformed; the message
            names the file and the entry.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8-sig") as f:
            data = json.load(f)
    except OSError as e:
        raise AnnotationError(f"cannot read annotation file '{name}': {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise AnnotationError(f"annotation file '{name}' is not valid JSON: {e}") from e
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict):
        raise AnnotationError(
            f"annotation file '{name}' has no 'images' object; expected "
            '{"images": {"<filename>": {"words": {"<id>": {"points": [[x, y], ...]}}}}}'
        )
    out: dict[str, ImageAnnotation] = {}
    for filename, entry in images.items():
        where = f"image {filename!r}"
        words = entry.get("words", {}) if isinstance(entry, dict) else None
        if not isinstance(words, dict):
            raise _fail(name, where, "must be an object with a 'words' object")
        ann = ImageAnnotation(filename=filename)
        for word_id, word in words.items():
            word_where = f"{where}, word {word_id!r}"
            if not isinstance(word, dict) or "points" not in word:
                raise _fail(name, word_where, "must be an object with 'points'")
            ann.polygons.append(_parse_points(name, word_where, word["points"]))
            ann.word_ids.append(str(word_id))
            text = word.get("text")
            ann.texts.append(text if isinstance(text, str) else None)
        out[filename] = ann
    return out


def parse_icdar_lines(path: str | os.PathLike[str]) -> list[tuple[np.ndarray, str]]:
    """Read an ICDAR/SROIE per-image text file: ``x1,y1,...,x4,y4,transcription`` a line.

    Handles CRLF line ends, a UTF-8 byte-order mark, blank lines and commas inside the text.

    Raises:
        AnnotationError: a line does not start with 8 integers; the message names file and line.
    """
    name = os.fspath(path)
    raw = Path(name).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(",", 8)
        if len(parts) < 8:
            raise _fail(name, f"line {number}", f"expected x1,y1,...,x4,y4,text, got {line!r:.80}")
        try:
            coords = [float(p) for p in parts[:8]]
        except ValueError:
            raise _fail(
                name, f"line {number}", f"the first 8 fields must be numbers: {line!r:.80}"
            ) from None
        transcription = parts[8] if len(parts) > 8 else ""
        out.append((np.array(coords, dtype=np.float64).reshape(4, 2), transcription))
    return out


def convert_icdar_folder(
    box_dir: str | os.PathLike[str], image_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Convert a folder of per-image text files into the JSON annotation format.

    Each ``NAME.csv`` / ``NAME.txt`` describes the image ``NAME.<ext>`` found in ``image_dir``
    (default: ``.jpg``). Returns the JSON document (a dict).
    """
    box_dir = Path(box_dir)
    images: dict[str, Any] = {}
    files = sorted(p for p in box_dir.iterdir() if p.suffix.lower() in (".csv", ".txt"))
    if not files:
        raise AnnotationError(f"no .csv or .txt annotation files in '{box_dir}'")
    available = {}
    if image_dir is not None:
        available = {p.stem: p.name for p in sorted(Path(image_dir).iterdir()) if p.is_file()}
    for file in files:
        filename = available.get(file.stem, file.stem + ".jpg")
        words = {}
        for i, (points, transcription) in enumerate(parse_icdar_lines(file)):
            words[f"{i:04d}"] = {"points": points.tolist(), "text": transcription}
        images[filename] = {"words": words}
    return {"images": images}
