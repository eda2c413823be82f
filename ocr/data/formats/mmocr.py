"""MMOCR 1.x text detection JSON: ``{"metainfo": ..., "data_list": [...]}``.

Each entry of ``data_list`` has ``img_path`` and ``instances``, each instance a flat
``polygon`` ``[x1, y1, x2, y2, ...]`` and ``ignore`` (true: a don't-care word). The format
carries no transcriptions: a word gets ``"text": "###"`` when ignored and no text otherwise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .base import DONT_CARE, ConvertError, Format, make_word, word_id


def read(src: Path, images: Path | None) -> dict[str, Any]:
    """Convert the MMOCR annotation file ``src``.

    The key of an entry is its ``img_path`` relative to ``images`` when the path lies below
    that folder (as given or resolved from the working directory), else as written.
    """
    try:
        doc = json.loads(src.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise ConvertError(src, f"line {e.lineno}", f"not JSON: {e.msg}") from e
    entries = doc.get("data_list") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ConvertError(src, "top level", "expected an object with a 'data_list' list")
    out: dict[str, Any] = {}
    for index, entry in enumerate(entries):
        where = f"data_list entry {index}"
        if not isinstance(entry, dict) or not isinstance(entry.get("img_path"), str):
            raise ConvertError(src, where, "expected an object with an 'img_path' string")
        instances = entry.get("instances", [])
        if not isinstance(instances, list):
            raise ConvertError(src, where, "'instances' must be a list")
        words = {
            word_id(i): _word(src, f"{where}, instance {i}", instance)
            for i, instance in enumerate(instances)
        }
        out[_key(entry["img_path"], images)] = {"words": words}
    return {"images": out}


def _word(src: Path, where: str, instance: Any) -> dict[str, Any]:
    polygon = instance.get("polygon") if isinstance(instance, dict) else None
    if (
        not isinstance(polygon, list)
        or len(polygon) < 8
        or len(polygon) % 2
        or not all(_finite(v) for v in polygon)
    ):
        raise ConvertError(
            src, where, f"'polygon' must be a flat list of at least 8 numbers, got {polygon!r:.80}"
        )
    ignore = instance.get("ignore", False)
    if not isinstance(ignore, bool):
        raise ConvertError(src, where, f"'ignore' must be true or false, got {ignore!r:.40}")
    points = [(polygon[i], polygon[i + 1]) for i in range(0, len(polygon), 2)]
    return make_word(points, DONT_CARE if ignore else None)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _key(img_path: str, images: Path | None) -> str:
    if images is None:
        return img_path
    for path, root in ((Path(img_path), images), (Path(img_path).resolve(), images.resolve())):
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return img_path


FORMAT = Format(
    name="mmocr",
    summary="MMOCR 1.x textdet JSON (data_list of img_path + instances with a flat polygon)",
    example="ocr-convert mmocr textdet_test.json -o test.json --images data/icdar2015",
    read=read,
)
