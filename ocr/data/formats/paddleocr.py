"""PaddleOCR detection labels: ``path/img.jpg<TAB>[{"transcription": ..., "points": ...}]``.

One image a line; ``points`` is a list of ``[x, y]`` (4 or more); the transcription ``###``
marks a don't-care word.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .base import ConvertError, Format, make_word, word_id


def read(src: Path, images: Path | None) -> dict[str, Any]:
    """Convert the PaddleOCR label file ``src``; keys are the paths as written."""
    out: dict[str, Any] = {}
    text = src.read_bytes().decode("utf-8-sig")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        path, tab, labels = line.partition("\t")
        if not tab or not path:
            raise ConvertError(src, where, f"expected 'path<TAB>[...]', got {line!r:.80}")
        try:
            words = json.loads(labels)
        except json.JSONDecodeError as e:
            raise ConvertError(src, where, f"the labels are not JSON: {e.msg}") from e
        if not isinstance(words, list):
            raise ConvertError(src, where, "the labels must be a JSON list")
        if path in out:
            raise ConvertError(src, where, f"image {path!r} is listed a second time")
        out[path] = {
            "words": {
                word_id(i): _word(src, f"{where}, word {i}", word) for i, word in enumerate(words)
            }
        }
    return {"images": out}


def _word(src: Path, where: str, word: Any) -> dict[str, Any]:
    if not isinstance(word, dict):
        raise ConvertError(src, where, "expected an object with 'transcription' and 'points'")
    text = word.get("transcription")
    if not isinstance(text, str):
        raise ConvertError(src, where, f"'transcription' must be a string, got {text!r:.40}")
    points = word.get("points")
    if not isinstance(points, list) or len(points) < 4 or not all(_pair(p) for p in points):
        raise ConvertError(
            src, where, f"'points' must be a list of at least 4 [x, y], got {points!r:.80}"
        )
    return make_word(points, text)


def _pair(point: Any) -> bool:
    return (
        isinstance(point, list)
        and len(point) == 2
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in point
        )
    )


FORMAT = Format(
    name="paddleocr",
    summary="PaddleOCR det label file (path<TAB>JSON list of transcription + points)",
    example="ocr-convert paddleocr train_icdar2015_label.txt -o train.json --images train_data",
    read=read,
)
