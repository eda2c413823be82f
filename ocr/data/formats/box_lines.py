"""The text line shared by ICDAR 2015 and SROIE: ``x1,y1,x2,y2,x3,y3,x4,y4,transcription``,
and their folder of one such file per image."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .base import ConvertError, image_names, make_word, word_id


def read_box_lines(
    path: str | os.PathLike[str], *, require_text: bool = False
) -> list[tuple[np.ndarray, str]]:
    """Read a per-image box file: one quadrilateral and its transcription a line.

    Handles CRLF line ends, a UTF-8 byte-order mark (Latin-1 when the file is not UTF-8),
    blank lines and commas inside the transcription (everything after the 8th comma).

    Args:
        path: The text file.
        require_text: Whether a line must have the 9th field (ICDAR 2015 always has it).

    Returns:
        ``((4, 2) float64 points, transcription)`` per non-blank line, in file order.

    Raises:
        ConvertError: a line lacks a field or a coordinate is not a number; names file and line.
    """
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(",", 8)
        if len(parts) < (9 if require_text else 8):
            raise ConvertError(
                path, f"line {number}", f"expected x1,y1,...,x4,y4,text, got {line!r:.80}"
            )
        try:
            coords = [float(p) for p in parts[:8]]
        except ValueError:
            raise ConvertError(
                path, f"line {number}", f"the first 8 fields must be numbers, got {line!r:.80}"
            ) from None
        transcription = parts[8] if len(parts) > 8 else ""
        out.append((np.array(coords, dtype=np.float64).reshape(4, 2), transcription))
    return out


def read_box_folder(
    files: list[Path], images: Path | None, stem_of: Callable[[Path], str], require_text: bool
) -> dict[str, Any]:
    """The document of per-image box files: each file's words (ids in line order) under the
    key of the image of stem ``stem_of(file)``: the file of that stem in ``images`` when there
    is one, else ``STEM.jpg``."""
    names = image_names(images)
    out: dict[str, Any] = {}
    for file in files:
        stem = stem_of(file)
        words = {
            word_id(i): make_word(points.tolist(), text)
            for i, (points, text) in enumerate(read_box_lines(file, require_text=require_text))
        }
        out[names.get(stem, stem + ".jpg")] = {"words": words}
    return {"images": out}
