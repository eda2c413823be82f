"""``lmdb-cache ls`` and ``lmdb-cache show``: look inside a store."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import click
import numpy as np
from PIL import Image

from ..annotations import AnnotationError, NotAnnotatedError, read_words
from ..draw import draw_polygons
from ..errors import CacheError, CacheNotFoundError, MissingImageError
from ..format import codecs
from ..geometry import points_in_upright_frame, transform_points, upright_to_pixels
from ..read.reader import CacheReader, open_cache
from ..read.records import Record
from ..reporting import human_bytes
from .progress import CONTEXT, fail_usage


def _open_or_exit(cache: str) -> CacheReader:
    """Open a store as the read commands do: no store is a usage error (2), a damaged one or
    another format a failure (1)."""
    try:
        return open_cache(cache)
    except CacheNotFoundError as e:
        fail_usage(str(e))
    except CacheError as e:
        click.echo(f"Error: {e}", err=True)
    sys.exit(1)


def _listing(key: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "key": key,
        "width": meta["width"],
        "height": meta["height"],
        "raw_width": meta["raw_width"],
        "raw_height": meta["raw_height"],
        "orientation": meta["orientation"],
        "nbytes": meta["nbytes"],
        "stored_nbytes": codecs.of(meta).stored_length(meta),
        "codec": codecs.of(meta).name,
        "has_extra": "extra" in meta,
    }


def _listings(reader: CacheReader) -> Iterator[dict[str, Any]]:
    """One listing per record in storage order, metadata only, one record at a time."""
    for key in reader.iter_keys():
        try:
            meta = reader.meta_uncached(key)
        except MissingImageError:
            continue  # removed by an update since its chunk of keys was listed
        yield _listing(key, meta)


@click.command("ls", context_settings=CONTEXT)
@click.argument("cache", type=click.Path(path_type=str))
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON list on stdout, an object a record."
)
def ls_command(cache: str, as_json: bool) -> None:
    """List CACHE's records in storage order: key, stored size, bytes, orientation, codec.

    Reads the metadata only (never the pixels), one record at a time. "bytes" is what the
    store holds for the pixels (the zstd frame for a compressed record). --json gives one
    object per record: key, width, height, raw_width, raw_height, orientation, nbytes (pixel
    bytes), stored_nbytes, codec and has_extra.

    Exit status: 0 listed, 1 the cache is damaged (a record read before the damage is listed;
    the JSON list is closed), 2 usage error (no cache at CACHE).

    \b
    Examples:
      lmdb-cache ls data/val.lmdb
      lmdb-cache ls data/val.lmdb --json
    """
    with _open_or_exit(cache) as reader:
        counts = {"records": 0, "stored": 0, "pixels": 0, "compressed": 0, "turned": 0}
        if not as_json:
            click.echo(f"{'key':<30}  {'size':>11}  {'bytes':>9}  orientation  codec")
        try:
            for row in _listings(reader):
                counts["records"] += 1
                counts["stored"] += row["stored_nbytes"]
                counts["pixels"] += row["nbytes"]
                counts["compressed"] += row["codec"] != codecs.DEFAULT
                counts["turned"] += row["orientation"] != 1
                if as_json:
                    opening = "[\n  " if counts["records"] == 1 else ",\n  "
                    click.echo(opening + json.dumps(row), nl=False)
                else:
                    size = f"{row['width']}x{row['height']}"
                    click.echo(
                        f"{row['key']:<30}  {size:>11}  {human_bytes(row['stored_nbytes']):>9}  "
                        f"{row['orientation']:>11}  {row['codec']}"
                    )
        except CacheError as e:
            if as_json:
                click.echo("[]" if not counts["records"] else "\n]")
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
    if as_json:
        click.echo("[]" if not counts["records"] else "\n]")
        return
    click.echo(
        f"{counts['records']} records, {human_bytes(counts['stored'])} stored "
        f"({human_bytes(counts['pixels'])} of pixels), {counts['compressed']} compressed, "
        f"{counts['turned']} turned upright by EXIF"
    )


_CARE_COLOUR = (255, 0, 0)
_DONT_CARE_COLOUR = (0, 90, 255)


def _draw_annotations(record: Record, annotations: str, line_width: int) -> tuple[np.ndarray, str]:
    """The record's pixels with its annotated words drawn, and a line saying what was drawn.

    Exits with status 2 on a malformed annotation file or a key it does not annotate.
    """
    try:
        words = read_words(annotations, record.key)
    except (AnnotationError, NotAnnotatedError) as e:
        fail_usage(str(e))
    meta = record.meta
    points = np.concatenate([w.points for w in words]) if words else np.zeros((0, 2))
    upright = points_in_upright_frame(
        points, meta["orientation"], meta["raw_width"], meta["raw_height"]
    )
    matrix = upright_to_pixels(meta) if upright else record.raw_to_pixels
    care = [transform_points(matrix, w.points) for w in words if not w.dont_care]
    ignored = [transform_points(matrix, w.points) for w in words if w.dont_care]
    image = draw_polygons(record.image, care, _CARE_COLOUR, line_width)
    image = draw_polygons(image, ignored, _DONT_CARE_COLOUR, line_width, dashed=True)
    frame = "upright frame (they fit only the rotated image)" if upright else "raw file frame"
    note = f"{len(words)} polygons ({len(ignored)} don't care) from the {frame}"
    return image, note


@click.command("show", context_settings=CONTEXT)
@click.argument("cache", type=click.Path(path_type=str))
@click.argument("key")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="The PNG file to write (written as PNG whatever its name).",
)
@click.option(
    "--annotations",
    type=click.Path(dir_okay=False, exists=True, path_type=str),
    default=None,
    help='Annotation JSON ({"images": {KEY: {"words": ...}}}): draw KEY\'s polygons.',
)
@click.option(
    "--line-width",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Width of the drawn outlines, in pixels.",
)
def show_command(
    cache: str, key: str, output: str, annotations: str | None, line_width: int
) -> None:
    """Write the stored pixels of KEY in CACHE as a PNG, optionally with its polygons drawn.

    The PNG holds exactly what a reader gets: upright (EXIF orientation applied), at the size
    the cache was built with. With --annotations, each word's polygon is mapped from the raw
    file frame onto the stored pixels (the record's raw_to_pixels: orientation, then the cap's
    scale) and outlined in red, don't-care words ("###") dashed in blue. Polygons a dataset
    gives already upright (they fit only the rotated size, orientations 5-8) are recognised
    and not rotated twice.

    Exit status: 0 written, 1 the cache is damaged or OUTPUT cannot be written, 2 usage error
    (no cache, KEY not in it, KEY not in the annotations, a malformed annotation file).

    \b
    Examples:
      lmdb-cache show data/val.lmdb receipt_001.jpg -o receipt.png
      lmdb-cache show data/val.lmdb receipt_001.jpg -o check.png --annotations data/val.json
    """
    with _open_or_exit(cache) as reader:
        try:
            record = reader[key]
        except MissingImageError:
            fail_usage(
                f"image {key!r} is not in cache '{cache}'; keys are POSIX paths relative to the "
                f"folder given to build-cache: list them with 'lmdb-cache ls {cache}'"
            )
        except CacheError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
    image, drawn = record.image, ""
    if annotations is not None:
        image, note = _draw_annotations(record, annotations, line_width)
        drawn = f", {note}"
    try:
        Image.fromarray(image).save(output, format="PNG")
    except OSError as e:
        click.echo(f"Error: cannot write '{output}': {e.strerror or e}", err=True)
        sys.exit(1)
    meta = record.meta
    click.echo(
        f"{output}: {key!r} as stored, {meta['width']}x{meta['height']} (raw "
        f"{meta['raw_width']}x{meta['raw_height']}, orientation {meta['orientation']}){drawn}"
    )
