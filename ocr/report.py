"""The evaluation report of ``ocr-eval --report DIR``: one static HTML page, worst image first.

``DIR`` receives:

* ``index.html``: the summary (precision, recall, H-mean and their counts, the checkpoint, the
  split, the image source and its paths, the config digest), then a table with one row per
  image, sorted worst first (``ranked_images``), each with its own scores and counts, a
  thumbnail and a link to its drawing;
* ``drawings/<key>.png``: the image as the dataset serves it, ground truth in green (don't
  care dashed) and detections in red (``ocr.predictions.draw_predictions``);
* ``thumbs/<key>.jpg``: the drawing as a JPEG whose longest side is at most 256 pixels.

The page holds no script and no reference outside ``DIR`` (no server, no network, no fonts
or styles from elsewhere); its links are relative, so the folder can be moved, zipped and
opened anywhere. Every key and path is HTML-escaped, and URL-quoted in links.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from .engine import EvalResult
from .metrics import ImageCounts, ImageScores, image_scores
from .predictions import draw_file_name, draw_predictions

INDEX = "index.html"
DRAWINGS = "drawings"
THUMBS = "thumbs"
#: The longest side of a thumbnail, in pixels.
THUMB_SIDE = 256
_JPEG_QUALITY = 80


@dataclass(frozen=True)
class ReportInfo:
    """What the page says about the evaluation besides its numbers.

    Attributes:
        checkpoint: The checkpoint evaluated, as given.
        split: The dataset evaluated (``val_dataset``).
        source: Where the images came from: ``disk``, ``preload`` or ``cache``.
        image_path: The image folder.
        annotation_path: The annotation file.
        image_cache: The ``.lmdb`` read, or None when the images did not come from a cache.
        config_digest: ``ocr.config.config_digest`` of the config the evaluation ran with.
        iou_threshold: The IoU from which a detection matches a true word.
    """

    checkpoint: str
    split: str
    source: str
    image_path: str
    annotation_path: str
    image_cache: str | None
    config_digest: str
    iou_threshold: float


@dataclass(frozen=True)
class ImageRow:
    """One image of the report: its key, counts and scores (``ocr.metrics.image_scores``)."""

    key: str
    counts: ImageCounts
    scores: ImageScores

    @property
    def missed(self) -> int:
        """True words no detection matched."""
        return self.counts.num_gt - self.counts.matched

    @property
    def false(self) -> int:
        """Detections that matched no true word."""
        return self.counts.num_pred - self.counts.matched


def ranked_images(per_image: Mapping[str, ImageCounts]) -> list[ImageRow]:
    """The images worst first: by H-mean, lowest first; on a tie, the one with more mistakes
    (missed words plus false detections) first; then by key."""
    rows = [ImageRow(key, counts, image_scores(counts)) for key, counts in per_image.items()]
    return sorted(rows, key=lambda r: (r.scores.hmean, -(r.missed + r.false), r.key))


def thumbnail_name(key: str) -> str:
    """``sub/a.jpg`` -> ``sub/a.jpg.jpg``: where under ``thumbs/`` an image's thumbnail goes
    (the drawing's name, ``ocr.predictions.draw_file_name``, as a JPEG)."""
    return draw_file_name(key).removesuffix(".png") + ".jpg"


def write_report(
    folder: str | os.PathLike[str], result: EvalResult, dataset: Any, info: ReportInfo
) -> Path:
    """Write the report of one evaluation into ``folder`` (see the module docstring).

    Args:
        folder: Created if needed; files of an earlier report there are replaced.
        result: An evaluation that kept its predictions (``keep_predictions=True``).
        dataset: The ``OCRDataset`` evaluated (its source gives the pixels to draw on).
        info: What the summary says about the run.

    Returns:
        The path of ``index.html``, written last and atomically (beside it, then renamed).

    Raises:
        ValueError: ``result`` holds no predictions, or not the same images as its counts.
    """
    if result.predictions is None or result.truths is None:
        raise ValueError("the report draws the detections: evaluate with keep_predictions=True")
    if result.predictions.keys() != result.per_image.keys():
        raise ValueError(
            f"the evaluation has detections for {len(result.predictions)} images and counts "
            f"for {len(result.per_image)}; the report needs both for every image"
        )
    out = Path(folder)
    draw_predictions(out / DRAWINGS, dataset, result.predictions, result.truths)
    rows = ranked_images(result.per_image)
    sizes = {row.key: _write_thumbnail(out, row.key) for row in rows}
    page = render_page(result.metrics, rows, info, sizes)
    index = out / INDEX
    temp = out / f".{INDEX}.{os.getpid()}.tmp"
    try:
        temp.write_text(page, encoding="utf-8")
        os.replace(temp, index)
    finally:
        temp.unlink(missing_ok=True)
    return index


def _write_thumbnail(out: Path, key: str) -> tuple[int, int]:
    """Make the thumbnail of ``key``'s drawing; its ``(width, height)``."""
    with Image.open(out / DRAWINGS / draw_file_name(key)) as drawing:
        image = drawing.convert("RGB")
    image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    path = out / THUMBS / thumbnail_name(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=_JPEG_QUALITY)
    return image.size


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { padding: 0.3em 0.6em; border-bottom: 1px solid #ddd; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
#summary { display: flex; gap: 3em; align-items: flex-start; }
#summary th { font-weight: normal; color: #555; }
#images td { vertical-align: middle; }
#images img { display: block; width: auto; height: auto; max-height: 160px; }
.note { color: #555; max-width: 60em; }
"""


def render_page(
    metrics: Mapping[str, Any],
    rows: list[ImageRow],
    info: ReportInfo,
    thumb_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> str:
    """The report's HTML: the summary, then one table row per image in the order of ``rows``.

    Args:
        metrics: The split's metrics (``DetectionMetric.compute``).
        rows: The images, already in the order to show (``ranked_images``).
        info: What the summary says about the run.
        thumb_sizes: Each thumbnail's ``(width, height)``, written on its ``<img>`` so the
            page does not reflow while they load; None leaves them out.
    """
    title = f"ocr-eval report: {info.split}, {info.checkpoint}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{_text(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{_text(title)}</h1>",
        _summary(metrics, len(rows), info),
        _image_table(rows, thumb_sizes or {}),
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def _summary(metrics: Mapping[str, Any], images: int, info: ReportInfo) -> str:
    scores: list[tuple[str, str]] = [
        ("H-mean", f"{metrics['hmean']:.4f}"),
        ("Precision", f"{metrics['precision']:.4f}"),
        ("Recall", f"{metrics['recall']:.4f}"),
        ("True words", str(metrics["num_gt"])),
        ("Detections", str(metrics["num_pred"])),
        ("Matched", str(metrics["matched"])),
        ("Images", str(images)),
    ]
    run: list[tuple[str, str]] = [
        ("Checkpoint", info.checkpoint),
        ("Split", info.split),
        ("Image source", info.source),
        ("Image folder", info.image_path),
        ("Annotations", info.annotation_path),
    ]
    if info.image_cache is not None:
        run.append(("Image cache", info.image_cache))
    run += [
        ("Config digest", info.config_digest),
        ("Match rule", f"IoU >= {info.iou_threshold:g}, ICDAR 2015"),
    ]
    tables = "\n".join(
        "<table>\n"
        + "\n".join(f"<tr><th>{_text(k)}</th><td>{_text(v)}</td></tr>" for k, v in fields)
        + "\n</table>"
        for fields in (scores, run)
    )
    note = (
        '<p class="note">The split\'s precision, recall and H-mean come from the counts summed '
        "over all images, not from an average of the rows below.</p>"
    )
    return f'<h2>Summary</h2>\n<div id="summary">\n{tables}\n</div>\n{note}'


_COLUMNS = (
    ("#", True),
    ("Drawing", False),
    ("Image", False),
    ("H-mean", True),
    ("Precision", True),
    ("Recall", True),
    ("True", True),
    ("Detected", True),
    ("Matched", True),
    ("Missed", True),
    ("False", True),
)


def _image_table(rows: list[ImageRow], sizes: Mapping[str, tuple[int, int]]) -> str:
    head = "".join(
        f'<th class="num">{_text(name)}</th>' if numeric else f"<th>{_text(name)}</th>"
        for name, numeric in _COLUMNS
    )
    body = "\n".join(_image_row(i, row, sizes.get(row.key)) for i, row in enumerate(rows, 1))
    note = (
        '<p class="note">Worst first: by H-mean, lowest first; on a tie, more mistakes (missed '
        "plus false) first; then by name. Each image is scored by the ICDAR 2015 script's "
        "per-image rules: recall is matched / true and precision matched / detected (0 with "
        "no detections); an image without true words has recall 1 and precision 1 when "
        "nothing was detected there, else 0. Don't-care words count neither way. Drawings: "
        "true words in green (don't care dashed), detections in red.</p>"
    )
    return (
        f"<h2>Images</h2>\n{note}\n"
        f'<table id="images">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'
    )


def _image_row(rank: int, row: ImageRow, size: tuple[int, int] | None) -> str:
    drawing = _href(f"{DRAWINGS}/{draw_file_name(row.key)}")
    thumb = _href(f"{THUMBS}/{thumbnail_name(row.key)}")
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    alt = _text(f"drawing of {row.key}")
    s, c = row.scores, row.counts
    numbers = (
        f"{s.hmean:.4f}",
        f"{s.precision:.4f}",
        f"{s.recall:.4f}",
        str(c.num_gt),
        str(c.num_pred),
        str(c.matched),
        str(row.missed),
        str(row.false),
    )
    cells = [
        f'<td class="num">{rank}</td>',
        f'<td><a href="{drawing}"><img src="{thumb}" alt="{alt}"{dims} loading="lazy"></a></td>',
        f'<td class="key"><a href="{drawing}">{_text(row.key)}</a></td>',
        *(f'<td class="num">{n}</td>' for n in numbers),
    ]
    return f'<tr class="image">{"".join(cells)}</tr>'


def _text(value: str) -> str:
    """``value`` safe as HTML text or a quoted attribute."""
    return html.escape(value, quote=True)


def _href(path: str) -> str:
    """A relative link to ``path`` (``/``-separated), URL-quoted, then HTML-escaped."""
    return html.escape(quote(path, safe="/"), quote=True)
