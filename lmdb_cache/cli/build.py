"""``build-cache`` (``lmdb-cache build``): decode a folder into a store, or bring one up to date."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import (
    BuildLockedError,
    CacheError,
    FormatVersionError,
    NotACacheError,
    SettingsMismatchError,
)
from ..format import codecs
from ..format.shards import parse_shard
from ..images import IMAGE_SUFFIXES, RESAMPLE_FILTERS, scan_images
from ..reporting import human_bytes
from ..write.build import build_cache, default_output
from ..write.estimate import estimate_store, size_warning
from ..write.settings import KEEP
from ..write.store import store_exists
from .progress import CONTEXT, Bar, emit_json, fail_usage

_LEVELED = codecs.leveled()  # the codec --level applies to


class _MaxSide(click.ParamType):
    """A positive number of pixels, or ``none`` for full size."""

    name = "N|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str | None:
        if isinstance(value, int) or value is None:
            return value
        text = str(value).strip().lower()
        if text == "keep":
            return "keep"
        if text in ("none", "full"):
            return None
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"{value!r} is not a positive number of pixels or 'none'", param, ctx)


@click.command("build", context_settings=CONTEXT)
@click.argument("src", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=str),
    default=None,
    help="Cache folder to write. Default: SRC with '.lmdb' appended (data/val -> data/val.lmdb).",
)
@click.option(
    "--max-side",
    type=_MaxSide(),
    metavar="N|none",
    default="keep",
    show_default=False,
    help="Downscale so the longest side is at most N pixels (never upscale); the scale "
    "is recorded per image so polygons can follow. 'none': full size. Default: the existing "
    "cache's setting (an update never needs it again), full size for a new cache.",
)
@click.option(
    "--resample",
    type=click.Choice(sorted(RESAMPLE_FILTERS)),
    default=None,
    help="Filter used by --max-side. Default: the existing cache's, bilinear for a new cache.",
)
@click.option(
    "--codec",
    type=click.Choice(codecs.names()),
    default=None,
    help="How pixels are stored: raw (a read is a memory copy) or zstd (4-20x smaller on "
    "receipts, a read decompresses). Default: the existing cache's, raw for a new cache. "
    "Changing it encodes the stored pixels again, no image is decoded again.",
)
@click.option(
    "--level",
    type=click.IntRange(*(_LEVELED.levels or (1, 1))),
    default=None,
    help=f"{_LEVELED.name} level (implies --codec {_LEVELED.name}). Default: the cache's, else "
    f"{_LEVELED.default_level}.",
)
@click.option(
    "-j",
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Decoding processes. Default: all cores.",
)
@click.option(
    "--rebuild",
    is_flag=True,
    help="Decode every image into a new cache beside the old one and swap it in when "
    "complete: to change --max-side or --resample, or to replace a damaged cache. Keeps the "
    "cache's settings unless new ones are given.",
)
@click.option(
    "--shard",
    "shard_text",
    metavar="I/N",
    default=None,
    help="Build only shard I of N (I from 0) into -o: N machines each build one part, then "
    "'lmdb-cache merge' joins them. A source's shard depends on its key alone (a hash).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document with the result on stdout."
)
def build_command(
    src: str,
    output: str | None,
    max_side: int | None,
    resample: str,
    codec: str | None,
    level: int | None,
    workers: int | None,
    rebuild: bool,
    shard_text: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Decode every image below SRC once and store the pixels in an LMDB cache.

    Each image is decoded with Pillow, turned upright by its EXIF orientation, converted to
    RGB uint8 (see docs/format.md for each mode's rule) and stored uncompressed (or, with
    --codec zstd, as one Zstandard frame), so a read needs no image decode. Keys are the
    images' POSIX paths relative to SRC.

    Re-running updates only new, changed and removed images, with the cache's own
    settings; an interrupted build resumes. One build writes a cache at a time: a second one
    exits with status 2 naming the first. A file that cannot be decoded (or is not a regular
    file, or has a name that is not UTF-8) never stops the build: it is reported with its
    reason, recorded in the cache, and the exit status is 1.

    \b
    Exit status: 0 all stored, 1 some sources failed or the cache is damaged or the disk is
    full (a re-run resumes), 2 usage error (bad arguments, other settings than the cache's
    without --rebuild, another build running).

    Before decoding a new full-size cache, the image headers are read to estimate its size: a
    cache far larger than its sources (over 8x and 256 MiB) gets a warning with the size at
    --max-side 640.

    \b
    Examples:
      build-cache data/val --max-side 640        # the ocr configs' transform size: a far
                                                 # smaller cache, and reads nearly free
      build-cache data/val                       # full size: writes data/val.lmdb
      build-cache data/val -o /fast/val.lmdb --json
      build-cache data/val --rebuild             # replace a damaged cache, same settings
      build-cache data/train --codec zstd        # compress an existing cache in place
      build-cache data/train --shard 0/3 -o part0.lmdb   # one part of three (one machine)
      lmdb-cache merge part0.lmdb part1.lmdb part2.lmdb -o data/train.lmdb
    """
    try:
        shard = parse_shard(shard_text) if shard_text is not None else None
    except ValueError as e:
        fail_usage(f"--shard: {e}")
        return
    target = output if output is not None else default_output(src)
    exists = store_exists(target)
    try:
        keys = scan_images(src, exclude=target) if rebuild or not exists else None
    except NotADirectoryError as e:
        fail_usage(str(e))
        return
    if not exists and not keys:
        message = (
            f"no images below '{src}' (looked for {', '.join(sorted(IMAGE_SUFFIXES))} in any "
            "case); nothing was written"
        )
        if as_json:
            emit_json({"output": target, "ok": False, "images": 0, "error": message})
        click.echo(f"Error: {message}", err=True)
        sys.exit(1)
    # A new full-size store (or a rebuild asked to be full size): say first what it will cost.
    full_size = max_side is None or (max_side == "keep" and not exists)
    size_note = size_warning(estimate_store(src, keys)) if keys and full_size else None
    if size_note is not None and not as_json:
        click.echo(f"warning: {size_note}", err=True)
    bar = Bar(enabled=not (quiet or as_json), desc="decoding")
    try:
        result = build_cache(
            src,
            output,
            max_side=KEEP if max_side == "keep" else max_side,
            resample=KEEP if resample is None else resample,
            codec=KEEP if codec is None else codec,
            level=KEEP if level is None else level,
            workers=workers,
            rebuild=rebuild,
            progress=bar,
            shard=shard,
        )
    except (
        SettingsMismatchError,
        BuildLockedError,
        NotACacheError,
        FormatVersionError,
        NotADirectoryError,
    ) as e:
        bar.close()
        fail_usage(str(e))
        return
    except (CacheError, OSError) as e:  # a damaged store, a full disk: not a usage error
        bar.close()
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    except ValueError as e:
        bar.close()
        fail_usage(str(e))
        return
    bar.close()
    if as_json:
        doc = result.as_dict()
        if size_note is not None:
            doc["warnings"] = [size_note, *doc["warnings"]]
        emit_json(doc)
    elif not quiet:
        rate = result.decoded / result.seconds if result.seconds else 0.0
        cap = result.settings.get("max_side")
        made = f"max side {cap}" if cap else "full size"
        codec = result.settings.get("codec", codecs.DEFAULT)
        if codec != codecs.DEFAULT:
            made += f", {codecs.describe(codec, result.settings.get('level'))}"
        click.echo(
            f"{result.output}: {result.images} images ({made}), "
            f"{human_bytes(result.total_bytes)} of pixels "
            f"({result.added} added, {result.updated} updated, {result.unchanged} unchanged, "
            f"{result.removed} removed"
            + (f", {result.recoded} re-encoded" if result.recoded else "")
            + f") in {result.seconds:.1f} s, {rate:.1f} images/s decoded",
            err=True,
        )
    for message in result.warnings:
        if not as_json:
            click.echo(f"warning: {message}", err=True)
    if result.failures:
        if not as_json:
            for key, reason in result.failures:
                click.echo(f"FAILED {key}: {reason}", err=True)
            click.echo(
                f"{len(result.failures)} source(s) failed; every other image is stored. "
                "Fix or remove them and re-run to update.",
                err=True,
            )
        sys.exit(1)
