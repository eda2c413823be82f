"""SROIE (and other per-image ICDAR-style box files): ``NAME.txt``/``NAME.csv`` for ``NAME.jpg``.

Each line is ``x1,y1,x2,y2,x3,y3,x4,y4,transcription``; the transcription may be missing or
contain commas; a BOM and CRLF are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import ConvertError, Format
from .box_lines import read_box_folder


def read(src: Path, images: Path | None) -> dict[str, Any]:
    """Convert the folder ``src`` of ``NAME.csv``/``NAME.txt`` files.

    The key of ``NAME.csv`` is the file of stem ``NAME`` in ``images`` when there is one,
    else ``NAME.jpg``.
    """
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".csv", ".txt"))
    if not files:
        raise ConvertError(src, "folder", "no .csv or .txt annotation files")
    return read_box_folder(files, images, lambda file: file.stem, require_text=False)


FORMAT = Format(
    name="sroie",
    summary="folder of NAME.txt / NAME.csv (x1,y1,...,x4,y4,text) for NAME.jpg",
    example="ocr-convert sroie sroie/box -o sroie.json --images sroie/img",
    read=read,
)
