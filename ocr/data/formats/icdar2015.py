"""ICDAR 2015 (Incidental Scene Text): a folder of ``gt_img_N.txt``, image ``img_N.<ext>``.

Each line is ``x1,y1,x2,y2,x3,y3,x4,y4,transcription`` (UTF-8 with a BOM, CRLF); the
transcription ``###`` marks a don't-care word and may itself contain commas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import ConvertError, Format, image_names, make_word, word_id
from .box_lines import read_box_lines


def read(src: Path, images: Path | None) -> dict[str, Any]:
    """Convert the folder ``src`` of ``gt_img_N.txt`` files.

    The key of ``gt_img_N.txt`` is ``img_N`` with the suffix of the file of that stem in
    ``images`` when there is one, else ``img_N.jpg``.
    """
    files = sorted(p for p in src.iterdir() if p.name.startswith("gt_") and p.suffix == ".txt")
    if not files:
        raise ConvertError(src, "folder", "no gt_img_N.txt files; pass the ground-truth folder")
    names = image_names(images)
    out: dict[str, Any] = {}
    for file in files:
        stem = file.stem[len("gt_") :]
        words = {
            word_id(i): make_word(points.tolist(), text)
            for i, (points, text) in enumerate(read_box_lines(file, require_text=True))
        }
        out[names.get(stem, stem + ".jpg")] = {"words": words}
    return {"images": out}


FORMAT = Format(
    name="icdar2015",
    summary="folder of gt_img_N.txt (x1,y1,...,x4,y4,text; ### = don't care) for img_N.jpg",
    example="ocr-convert icdar2015 ch4_test_gt -o test.json --images ch4_test_images",
    read=read,
)
