"""ICDAR 2015 (Incidental Scene Text): a folder of ``gt_img_N.txt``, image ``img_N.<ext>``.

Each line is ``x1,y1,x2,y2,x3,y3,x4,y4,transcription`` (UTF-8 with a BOM, CRLF); the
transcription ``###`` marks a don't-care word and may itself contain commas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import ConvertError, Format
from .box_lines import read_box_folder


def read(src: Path, images: Path | None) -> dict[str, Any]:
    """Convert the folder ``src`` of ``gt_img_N.txt`` files.

    The key of ``gt_img_N.txt`` is ``img_N`` with the suffix of the file of that stem in
    ``images`` when there is one, else ``img_N.jpg``.
    """
    files = sorted(p for p in src.iterdir() if p.name.startswith("gt_") and p.suffix == ".txt")
    if not files:
        raise ConvertError(src, "folder", "no gt_img_N.txt files; pass the ground-truth folder")
    return read_box_folder(files, images, lambda file: file.stem[len("gt_") :], require_text=True)


FORMAT = Format(
    name="icdar2015",
    summary="folder of gt_img_N.txt (x1,y1,...,x4,y4,text; ### = don't care) for img_N.jpg",
    example="ocr-convert icdar2015 ch4_test_gt -o test.json --images ch4_test_images",
    read=read,
)
