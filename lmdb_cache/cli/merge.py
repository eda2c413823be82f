"""``lmdb-cache merge``: the shards of a build (or several stores) joined into one store."""

from __future__ import annotations

import sys

import click

from ..check.merge import MergeError, merge_caches
from ..errors import (
    CacheError,
    CacheNotFoundError,
    FormatVersionError,
    NotACacheError,
    SettingsMismatchError,
)
from ..reporting import human_bytes
from .progress import CONTEXT, Bar, emit_json, fail_usage


@click.command("merge", context_settings=CONTEXT)
@click.argument("parts", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, help="The merged store (a new path).")
@click.option(
    "--no-validate", is_flag=True, help="Do not validate the merged store (validated by default)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def merge_command(
    parts: tuple[str, ...], output: str, no_validate: bool, quiet: bool, as_json: bool
) -> None:
    """Join the stores PARTS into one new store: the shards of a build, or distinct datasets.

    N machines each build one shard of a folder with build-cache --shard I/N (I from 0); merge
    writes the store one build of the whole folder would have: the same keys, pixels,
    metadata and checksums. Records are copied as stored (no decode), key by key in LMDB's
    append mode. The store is written beside OUTPUT, validated and only then renamed: OUTPUT
    is either complete and valid or absent.

    Refused, naming the parts: different settings (cap, filter, codec, level, Pillow), shards
    of different splits, a shard given twice or missing, a part whose build did not finish,
    a key held by two parts.

    Exit status: 0 merged and valid, 1 the merge failed (a damaged part, disk full, a key in
    two parts), 2 usage error (OUTPUT exists, a part is not a store, parts that do not fit).

    \b
    Examples:
      build-cache data/train --max-side 640 --shard 0/3 -o part0.lmdb   # on machine 0
      build-cache data/train --max-side 640 --shard 1/3 -o part1.lmdb   # on machine 1 ...
      lmdb-cache merge part0.lmdb part1.lmdb part2.lmdb -o data/train.lmdb
      validate-cache data/train.lmdb --source data/train
    """
    bar = Bar(enabled=not (quiet or as_json), desc="merging")
    try:
        result = merge_caches(list(parts), output, validate=not no_validate, progress=bar)
    except (
        FileExistsError,
        FileNotFoundError,
        CacheNotFoundError,
        NotACacheError,
        SettingsMismatchError,
    ) as e:
        bar.close()
        fail_usage(str(e))
        return
    except MergeError as e:
        bar.close()
        if "is in both" not in str(e):  # parts that do not fit, found before writing
            fail_usage(str(e))
            return
        _fail(parts, output, e, as_json)
    except (FormatVersionError, CacheError, OSError) as e:
        bar.close()
        _fail(parts, output, e, as_json)
    bar.close()
    if as_json:
        emit_json(result.as_dict())
    elif not quiet:
        checked = "validated" if result.report is not None else "not validated (--no-validate)"
        split = f" ({result.shards} shards)" if result.shards else ""
        click.echo(
            f"{output}: {result.images} images from {len(parts)} parts{split}, "
            f"{human_bytes(result.data_bytes)}, {checked}, {result.seconds:.1f} s"
        )


def _fail(parts: tuple[str, ...], output: str, error: Exception, as_json: bool) -> None:
    if as_json:
        emit_json({"parts": list(parts), "output": output, "ok": False, "error": str(error)})
    click.echo(f"Error: {error}", err=True)
    sys.exit(1)
