"""Generate a small synthetic receipt set: images plus annotations in the raw file frame.

Each receipt is a paper-like page with lines of text; some are saved greyscale or PNG, and some
JPEGs are stored rotated with an EXIF orientation tag (3, 6 or 8), the way phone cameras write
them, with their polygons given in the raw (stored) frame as the original pipeline expects.

    python tools/make_samples.py data/samples            # 24 images + data/samples.json
    python tools/make_samples.py data/big --count 500 --seed 1 --scale 2.5  # photo-sized
    python tools/make_samples.py data/mine --labels icdar2015  # data/mine_gt/gt_*.txt
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ORIENTATION_TAG = 0x0112

# For a file tagged with orientation N, the transposition that turns the upright page into the
# stored (raw) pixels: the inverse of what a reader applies.
_TO_RAW = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def upright_to_raw(points: np.ndarray, orientation: int, width: int, height: int) -> np.ndarray:
    """Map points of an upright ``width x height`` page to the raw frame of a file tagged
    ``orientation`` (3, 6 or 8). Pixel-corner coordinates."""
    x, y = points[:, 0], points[:, 1]
    if orientation == 3:
        return np.stack([width - x, height - y], axis=1)
    if orientation == 6:  # raw is the page rotated 90 degrees counter-clockwise
        return np.stack([y, width - x], axis=1)
    if orientation == 8:  # raw is the page rotated 90 degrees clockwise
        return np.stack([height - y, x], axis=1)
    return points.copy()


def _words(rng: np.random.Generator) -> str:
    alphabet = string.ascii_uppercase + string.digits + "   .:-$"
    return "".join(rng.choice(list(alphabet), size=int(rng.integers(6, 22)))).strip() or "TOTAL"


def make_receipt(
    rng: np.random.Generator, width: int, height: int, texts: list[str] | None = None
) -> tuple[Image.Image, list[np.ndarray]]:
    """One upright receipt and the quadrilaterals of its text lines (their texts appended to
    ``texts`` when given)."""
    paper = rng.normal(238, 6, size=(height, width)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(np.stack([paper, paper, (paper * 0.97).astype(np.uint8)], axis=2))
    image = image.filter(ImageFilter.GaussianBlur(0.6))
    draw = ImageDraw.Draw(image)
    polygons = []
    y = int(height * 0.05)
    while y < height * 0.92:
        size = int(rng.integers(max(10, height // 60), max(12, height // 28)))
        font = ImageFont.load_default(size=size)
        text = _words(rng)
        x = int(rng.integers(int(width * 0.04), int(width * 0.3)))
        ink = int(rng.integers(10, 70))
        draw.text((x, y), text, fill=(ink, ink, ink), font=font)
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        if right - left > 4 and bottom - top > 4 and right < width:
            polygons.append(
                np.array([[left, top], [right, top], [right, bottom], [left, bottom]], float)
            )
            if texts is not None:
                texts.append(text)
        y = bottom + int(rng.integers(size // 2, size * 2))
    return image, polygons


LABELS = ("json", "icdar2015")


def generate(out: Path, count: int, seed: int, scale: float = 1.0, labels: str = "json") -> Path:
    """Write ``count`` receipts under ``out`` and their labels; returns where the labels are.

    ``scale`` multiplies the page size (360-900 pixels wide at 1; phone photos of receipts
    are nearer 3), text included, so decoding costs what real scans cost. ``labels``:
    ``json`` writes ``<out>.json`` (this project's annotation format); ``icdar2015`` writes
    the folder ``<out>_gt`` of ICDAR 2015 files instead, ``gt_<image stem>.txt`` (UTF-8 with a
    BOM, CRLF, ``x1,y1,...,x4,y4,text``), for ``ocr-convert icdar2015``. The pages and the
    points are the same for either.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {', '.join(LABELS)}, got {labels!r}")
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    annotations: dict = {"images": {}}
    texts: dict[str, list[str]] = {}
    for i in range(count):
        width = int(int(rng.integers(360, 900)) * scale)
        height = int(width * rng.uniform(1.3, 2.6))
        lines: list[str] = []
        page, polygons = make_receipt(rng, width, height, lines)
        name = f"receipt_{i:04d}." + ("png" if i % 7 == 4 else "jpg")
        orientation = (1, 1, 3, 6, 8, 1)[i % 6] if name.endswith(".jpg") else 1
        if i % 5 == 3:
            page = page.convert("L")
        raw = page.transpose(_TO_RAW[orientation]) if orientation in _TO_RAW else page
        raw_polygons = [upright_to_raw(p, orientation, width, height) for p in polygons]
        if name.endswith(".jpg"):
            exif = Image.Exif()
            if orientation != 1:
                exif[ORIENTATION_TAG] = orientation
            raw.save(out / name, quality=90, exif=exif)
        else:
            raw.save(out / name)
        annotations["images"][name] = {
            "words": {
                f"{j:04d}": {"points": np.round(p, 2).tolist()} for j, p in enumerate(raw_polygons)
            }
        }
        texts[name] = lines
    if labels == "icdar2015":
        return _write_icdar2015(annotations, texts, out.parent / f"{out.name}_gt")
    path = out.with_suffix(".json") if out.suffix == "" else out.parent / (out.name + ".json")
    path.write_text(json.dumps(annotations, indent=1))
    return path


def _write_icdar2015(annotations: dict, texts: dict[str, list[str]], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, entry in annotations["images"].items():
        rows = []
        for word, text in zip(entry["words"].values(), texts[name], strict=True):
            coords = ",".join(f"{v:g}" for point in word["points"] for v in point)
            rows.append(f"{coords},{text}\r\n")
        path = folder / f"gt_{Path(name).stem}.txt"
        path.write_text("".join(rows), encoding="utf-8-sig", newline="")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the images into")
    parser.add_argument("--count", type=int, default=24, help="number of receipts (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="page size multiplier (default 1: 360-900 px wide)"
    )
    parser.add_argument(
        "--labels",
        choices=LABELS,
        default="json",
        help="json: OUT.json, this project's format (default); icdar2015: the folder OUT_gt of "
        "gt_<image>.txt files, to try ocr-convert on",
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    path = generate(args.out, args.count, args.seed, args.scale, args.labels)
    print(f"wrote {args.count} receipts to {args.out}/ and {args.labels} labels to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
