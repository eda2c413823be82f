"""Command line: ``build-cache``, ``validate-cache``, ``cache-info`` and the ``lmdb-cache`` group
(which adds ``copy``, ``ls`` and ``show``).

The only module that prints or exits. Exit status: 0 success, 1 failure or problems found,
2 usage error (bad arguments, or settings that contradict an existing cache).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .build import build_cache, default_output
from .cli_inspect import ls_command, show_command
from .cli_util import _CTX, _Bar, _ByteBar, _emit_json, _fail_usage, _size
from .codecs import CODECS, DEFAULT_LEVEL, MAX_LEVEL, MIN_LEVEL
from .copy import copy_cache
from .errors import (
    BuildLockedError,
    CacheError,
    CacheNotFoundError,
    FormatVersionError,
    NotACacheError,
    SettingsMismatchError,
)
from .estimate import estimate_store, size_warning
from .images import IMAGE_SUFFIXES, RESAMPLE_FILTERS, scan_images
from .reader import open_cache
from .settings import KEEP
from .store import store_exists
from .validate import validate_cache


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


@click.command("build", context_settings=_CTX)
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
    type=click.Choice(CODECS),
    default=None,
    help="How pixels are stored: raw (a read is a memory copy) or zstd (4-20x smaller on "
    "receipts, a read decompresses). Default: the existing cache's, raw for a new cache. "
    "Changing it encodes the stored pixels again, no image is decoded again.",
)
@click.option(
    "--level",
    type=click.IntRange(MIN_LEVEL, MAX_LEVEL),
    default=None,
    help=f"zstd level (implies --codec zstd). Default: the cache's, else {DEFAULT_LEVEL}.",
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
    """
    target = output if output is not None else default_output(src)
    exists = store_exists(target)
    try:
        keys = scan_images(src, exclude=target) if rebuild or not exists else None
    except NotADirectoryError as e:
        _fail_usage(str(e))
        return
    if not exists and not keys:
        message = (
            f"no images below '{src}' (looked for {', '.join(sorted(IMAGE_SUFFIXES))} in any "
            "case); nothing was written"
        )
        if as_json:
            _emit_json({"output": target, "ok": False, "images": 0, "error": message})
        click.echo(f"Error: {message}", err=True)
        sys.exit(1)
    # A new full-size store (or a rebuild asked to be full size): say first what it will cost.
    full_size = max_side is None or (max_side == "keep" and not exists)
    size_note = size_warning(estimate_store(src, keys)) if keys and full_size else None
    if size_note is not None and not as_json:
        click.echo(f"warning: {size_note}", err=True)
    bar = _Bar(enabled=not (quiet or as_json), desc="decoding")
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
        )
    except (
        SettingsMismatchError,
        BuildLockedError,
        NotACacheError,
        FormatVersionError,
        NotADirectoryError,
    ) as e:
        bar.close()
        _fail_usage(str(e))
        return
    except (CacheError, OSError) as e:  # a damaged store, a full disk: not a usage error
        bar.close()
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    except ValueError as e:
        bar.close()
        _fail_usage(str(e))
        return
    bar.close()
    if as_json:
        doc = result.as_dict()
        if size_note is not None:
            doc["warnings"] = [size_note, *doc["warnings"]]
        _emit_json(doc)
    elif not quiet:
        rate = result.decoded / result.seconds if result.seconds else 0.0
        cap = result.settings.get("max_side")
        made = f"max side {cap}" if cap else "full size"
        if result.settings.get("codec", "raw") != "raw":
            made += f", zstd level {result.settings.get('level')}"
        click.echo(
            f"{result.output}: {result.images} images ({made}), "
            f"{_size(result.total_bytes)} of pixels "
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


@click.command("validate", context_settings=_CTX)
@click.argument("cache", type=click.Path(path_type=str))
@click.option(
    "--source",
    type=click.Path(file_okay=False, exists=True, path_type=str),
    default=None,
    help="The folder the cache was built from: report changed, missing and new images.",
)
@click.option(
    "--annotations",
    type=click.Path(dir_okay=False, exists=True, path_type=str),
    default=None,
    help='Annotation JSON ({"images": {"<file>": ...}}): report annotated images not cached.',
)
@click.option(
    "--no-checksums", is_flag=True, help="Skip the pixel checksums (fast, checks structure only)."
)
@click.option("--quiet", "-q", is_flag=True, help="Print only problems.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document with the report on stdout."
)
def validate_command(
    cache: str,
    source: str | None,
    annotations: str | None,
    no_checksums: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Prove that CACHE is intact and current.

    Checks that data.mdb is as long as LMDB needs, LMDB's own structure (with its offline
    verifier), the format version, every record's metadata checksum and schema, that every
    listed key can be read, every pixel length and checksum, and the manifest's counts; with
    --source, stale entries; with --annotations, that every annotated image is present. Images
    that failed at build time are warnings. A damaged cache always gives a report (each
    problem names the database, the key and the fix), never a crash.

    Exit status: 0 healthy, 1 problems found, 2 usage error.

    \b
    Examples:
      validate-cache data/val.lmdb
      validate-cache data/val.lmdb --source data/val --annotations data/val.json --json
    """
    bar = _ByteBar(enabled=not (quiet or as_json), desc="checksums")

    try:
        report = validate_cache(
            cache,
            source=source,
            annotations=annotations,
            checksums=not no_checksums,
            progress=bar.update,
        )
    except (CacheNotFoundError, ValueError) as e:
        _fail_usage(str(e))
        return
    except CacheError as e:
        if as_json:  # still one document
            problem = {"kind": "error", "key": None, "message": str(e)}
            _emit_json({"path": cache, "ok": False, "problems": [problem]})
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    finally:
        bar.close()
    if as_json:
        _emit_json(report.as_dict())
    else:
        for finding in report.problems:
            click.echo(f"PROBLEM {finding.kind}: {finding.message}")
        if not quiet:
            for finding in report.warnings:
                click.echo(f"warning {finding.kind}: {finding.message}")
            checked = f", {_size(report.checked_bytes)} checksummed" if report.checked_bytes else ""
            verdict = "healthy" if report.ok else f"{len(report.problems)} problem(s)"
            click.echo(f"{report.path}: {report.images} images{checked}: {verdict}")
    sys.exit(0 if report.ok else 1)


@click.command("info", context_settings=_CTX)
@click.argument("cache", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def info_command(cache: str, as_json: bool) -> None:
    """Show CACHE's manifest: format, settings, counts and sizes.

    \b
    Example:
      cache-info data/val.lmdb --json
    """
    import os

    try:
        with open_cache(cache) as reader:
            manifest = dict(reader.manifest)
            failures = reader.failures()
            entries = len(reader)
    except CacheNotFoundError as e:
        _fail_usage(str(e))
        return
    except CacheError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    disk = sum(
        os.path.getsize(os.path.join(cache, name))
        for name in os.listdir(cache)
        if os.path.isfile(os.path.join(cache, name))
    )
    doc = {
        "path": cache,
        **manifest,
        "entries": entries,
        "file_bytes": disk,
        "failures": [{"key": k, "reason": r} for k, r in failures],
    }
    if as_json:
        _emit_json(doc)
        return
    settings = manifest["settings"]
    cap = settings.get("max_side") or "none (full size)"
    click.echo(f"cache:        {cache}")
    click.echo(f"format:       {manifest['format']} v{manifest['format_version']}")
    click.echo(
        "complete:     "
        + ("yes" if manifest["complete"] else "NO (build interrupted; re-run build-cache)")
    )
    click.echo(f"images:       {entries}")
    click.echo(f"pixel bytes:  {_size(manifest['total_bytes'])}")
    click.echo(f"file size:    {_size(disk)}")
    click.echo(f"max side:     {cap}")
    click.echo(f"resample:     {settings['resample']}")
    codec = settings.get("codec", "raw")
    click.echo(
        f"codec:        {codec}" + (f" (level {settings.get('level')})" if codec != "raw" else "")
    )
    click.echo(f"pillow:       {settings.get('pillow_version')}")
    click.echo(f"source:       {manifest['source_root']}")
    click.echo(f"created:      {manifest['created']}")
    click.echo(f"updated:      {manifest['updated']}")
    click.echo(f"failed:       {len(failures)}")
    for key, reason in failures:
        click.echo(f"  {key}: {reason}")


@click.command("copy", context_settings=_CTX)
@click.argument("src", type=click.Path(path_type=str))
@click.argument("dst", type=click.Path(path_type=str))
@click.option(
    "--compact",
    is_flag=True,
    help="Leave out free pages (a smaller copy of a store that was updated; slower to copy).",
)
@click.option(
    "--no-validate", is_flag=True, help="Do not validate the copy (it is validated by default)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def copy_command(
    src: str, dst: str, compact: bool, no_validate: bool, quiet: bool, as_json: bool
) -> None:
    """Copy the store SRC to DST: a consistent snapshot, safe while build-cache runs.

    The way to ship a cache to other machines: LMDB must not live on a network filesystem
    (NFS, Lustre, SMB), so copy the store to local disk on each node. A build running on SRC
    is waited for; the copy is one snapshot of SRC's last commit, written beside DST, validated
    (structure, records, checksums) and only then renamed to DST: DST is either a complete
    valid store or absent.

    Exit status: 0 copied and valid, 1 the copy failed (damaged source, disk full), 2 usage
    error (DST exists, SRC is not a cache).

    \b
    Examples:
      lmdb-cache copy data/train.lmdb /local/ssd/train.lmdb
      lmdb-cache copy data/train.lmdb /local/ssd/train.lmdb --compact --json
    """
    bar = _ByteBar(enabled=not (quiet or as_json), desc="validating copy")

    if not (quiet or as_json):
        click.echo(f"copying {src} -> {dst}" + (" (compacting)" if compact else ""), err=True)

    def on_wait(pid: int | None) -> None:
        if not as_json:
            who = f"pid {pid}" if pid else "another process"
            click.echo(f"waiting for the build ({who}) writing {src} to finish", err=True)

    try:
        result = copy_cache(
            src,
            dst,
            compact=compact,
            validate=not no_validate,
            progress=bar.update,
            on_wait=on_wait,
        )
    except (FileExistsError, FileNotFoundError, CacheNotFoundError, NotACacheError) as e:
        _fail_usage(str(e))
        return
    except (FormatVersionError, CacheError) as e:
        if as_json:
            _emit_json({"source": src, "destination": dst, "ok": False, "error": str(e)})
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    finally:
        bar.close()
    if as_json:
        _emit_json(result.as_dict())
    elif not quiet:
        checked = "validated" if result.report is not None else "not validated (--no-validate)"
        click.echo(
            f"{dst}: {result.images} images, {_size(result.data_bytes)} "
            f"(source {_size(result.source_bytes)}), {checked}, {result.seconds:.1f} s"
        )


@click.group(context_settings=_CTX)
@click.version_option(package_name="lmdb-image-cache")
def cli() -> None:
    """A persistent, memory-mapped cache of decoded images in LMDB.

    Build it once with 'build', check it with 'validate', inspect it with 'info', list its
    records with 'ls', look at one image (and its polygons) with 'show', ship it to another
    machine's local disk with 'copy'. The first three also exist as build-cache,
    validate-cache and cache-info.

    \b
    Examples:
      lmdb-cache build data/val --max-side 640
      lmdb-cache validate data/val.lmdb --source data/val
      lmdb-cache info data/val.lmdb --json
      lmdb-cache ls data/val.lmdb
      lmdb-cache show data/val.lmdb receipt_001.jpg -o receipt.png --annotations data/val.json
      lmdb-cache copy data/val.lmdb /local/ssd/val.lmdb
    """


cli.add_command(build_command)
cli.add_command(validate_command)
cli.add_command(info_command)
cli.add_command(copy_command)
cli.add_command(ls_command)
cli.add_command(show_command)


def main() -> None:
    cli.main(prog_name="lmdb-cache")


def build_cache_main() -> None:
    build_command.main(prog_name="build-cache")


def validate_cache_main() -> None:
    validate_command.main(prog_name="validate-cache")


def cache_info_main() -> None:
    info_command.main(prog_name="cache-info")


__all__ = [
    "cli",
    "main",
    "build_cache_main",
    "validate_cache_main",
    "cache_info_main",
    "default_output",
]
