"""The ``lmdb-cache`` group and the commands that build, validate, describe and copy a store
(also installed as ``build-cache``, ``validate-cache`` and ``cache-info``); ``compare`` holds
``diff``.

Only ``cli`` prints or exits. Exit status: 0 success, 1 failure or problems found,
2 usage error (bad arguments, or settings that contradict an existing cache).
"""

from __future__ import annotations

import sys

import click

from ..check.copy import copy_cache
from ..check.validate import validate_cache
from ..errors import (
    CacheError,
    CacheNotFoundError,
    FormatVersionError,
    NotACacheError,
)
from ..format import codecs
from ..read.reader import open_cache
from ..reporting import human_bytes
from ..write.build import default_output
from .build import build_command
from .compare import diff_command
from .inspect import ls_command, show_command
from .merge import merge_command
from .progress import CONTEXT, Bar, emit_json, fail_usage


@click.command("validate", context_settings=CONTEXT)
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
    listed key can be read, every pixel length and checksum, the manifest's counts and its
    records digest (the store's identity); with --source, stale entries; with --annotations,
    that every annotated image is present. Images that failed at build time are warnings. A
    damaged cache always gives a report (each problem names the database, the key and the
    fix), never a crash.

    Exit status: 0 healthy, 1 problems found, 2 usage error.

    \b
    Examples:
      validate-cache data/val.lmdb
      validate-cache data/val.lmdb --source data/val --annotations data/val.json --json
    """
    bar = Bar(enabled=not (quiet or as_json), desc="checksums", unit="B")

    try:
        report = validate_cache(
            cache,
            source=source,
            annotations=annotations,
            checksums=not no_checksums,
            progress=bar,
        )
    except (CacheNotFoundError, ValueError) as e:
        fail_usage(str(e))
        return
    except CacheError as e:
        if as_json:  # still one document
            problem = {"kind": "error", "key": None, "message": str(e)}
            emit_json({"path": cache, "ok": False, "problems": [problem]})
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    finally:
        bar.close()
    if as_json:
        emit_json(report.as_dict())
    else:
        for finding in report.problems:
            click.echo(f"PROBLEM {finding.kind}: {finding.message}")
        if not quiet:
            for finding in report.warnings:
                click.echo(f"warning {finding.kind}: {finding.message}")
            checked = (
                f", {human_bytes(report.checked_bytes)} checksummed" if report.checked_bytes else ""
            )
            verdict = "healthy" if report.ok else f"{len(report.problems)} problem(s)"
            click.echo(f"{report.path}: {report.images} images{checked}: {verdict}")
    sys.exit(0 if report.ok else 1)


@click.command("info", context_settings=CONTEXT)
@click.argument("cache", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def info_command(cache: str, as_json: bool) -> None:
    """Show CACHE's manifest: format, settings, counts, sizes and identity.

    The identity (32 hex digits) is the same for two stores with the same settings and records
    (a copy, a rebuild of the same images) and differs once a record or setting does; compare
    two stores with 'lmdb-cache diff A B'. A store written before its manifest kept a records
    digest is read through once to work it out.

    \b
    Example:
      cache-info data/val.lmdb --json
    """
    import os

    identity_error = None
    try:
        with open_cache(cache, snapshot_seconds=None) as reader:
            manifest = dict(reader.manifest)
            failures = reader.failures()
            entries = len(reader)
            try:
                identity: str | None = reader.identity
            except CacheError as e:  # a damaged record met by the walk of an older store
                identity, identity_error = None, str(e)
    except CacheNotFoundError as e:
        fail_usage(str(e))
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
        "identity": identity,
        **({"identity_error": identity_error} if identity_error else {}),
        "file_bytes": disk,
        "failures": [{"key": k, "reason": r} for k, r in failures],
    }
    if as_json:
        emit_json(doc)
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
    click.echo(f"identity:     {identity or f'unknown ({identity_error})'}")
    click.echo(f"pixel bytes:  {human_bytes(manifest['total_bytes'])}")
    click.echo(f"file size:    {human_bytes(disk)}")
    click.echo(f"max side:     {cap}")
    click.echo(f"resample:     {settings['resample']}")
    codec = settings.get("codec", codecs.DEFAULT)
    level = f" (level {settings.get('level')})" if codecs.get(codec).levels else ""
    click.echo(f"codec:        {codec}{level}")
    click.echo(f"pillow:       {settings.get('pillow_version')}")
    click.echo(f"source:       {manifest['source_root']}")
    click.echo(f"created:      {manifest['created']}")
    click.echo(f"updated:      {manifest['updated']}")
    click.echo(f"failed:       {len(failures)}")
    for key, reason in failures:
        click.echo(f"  {key}: {reason}")


@click.command("copy", context_settings=CONTEXT)
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
    bar = Bar(enabled=not (quiet or as_json), desc="validating copy", unit="B")

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
            progress=bar,
            on_wait=on_wait,
        )
    except (FileExistsError, FileNotFoundError, CacheNotFoundError, NotACacheError) as e:
        fail_usage(str(e))
        return
    except (FormatVersionError, CacheError) as e:
        if as_json:
            emit_json({"source": src, "destination": dst, "ok": False, "error": str(e)})
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    finally:
        bar.close()
    if as_json:
        emit_json(result.as_dict())
    elif not quiet:
        checked = "validated" if result.report is not None else "not validated (--no-validate)"
        click.echo(
            f"{dst}: {result.images} images, {human_bytes(result.data_bytes)} "
            f"(source {human_bytes(result.source_bytes)}), {checked}, {result.seconds:.1f} s"
        )


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="lmdb-image-cache")
def cli() -> None:
    """A persistent, memory-mapped cache of decoded images in LMDB.

    Build it once with 'build', check it with 'validate', inspect it with 'info', list its
    records with 'ls', look at one image (and its polygons) with 'show', ship it to another
    machine's local disk with 'copy', compare two stores with 'diff', join the shards of a
    build made on several machines (build --shard I/N) with 'merge'. The first three also
    exist as build-cache, validate-cache and cache-info.

    \b
    Examples:
      lmdb-cache build data/val --max-side 640
      lmdb-cache validate data/val.lmdb --source data/val
      lmdb-cache info data/val.lmdb --json
      lmdb-cache ls data/val.lmdb
      lmdb-cache show data/val.lmdb receipt_001.jpg -o receipt.png --annotations data/val.json
      lmdb-cache copy data/val.lmdb /local/ssd/val.lmdb
      lmdb-cache diff data/val.lmdb /local/ssd/val.lmdb
      lmdb-cache merge part0.lmdb part1.lmdb part2.lmdb -o data/train.lmdb
    """


cli.add_command(build_command)
cli.add_command(validate_command)
cli.add_command(info_command)
cli.add_command(copy_command)
cli.add_command(ls_command)
cli.add_command(show_command)
cli.add_command(diff_command)
cli.add_command(merge_command)


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
