"""``lmdb-cache diff``: which records and settings differ between two stores."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..check.diff import StoreDiff, diff_caches
from ..errors import CacheError, CacheNotFoundError, NotACacheError
from .progress import CONTEXT, emit_json, fail_usage


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


def _print(result: StoreDiff) -> None:
    """The human report: one line a difference, then a summary."""
    click.echo(f"A {result.a}: identity {result.identity_a}")
    click.echo(f"B {result.b}: identity {result.identity_b}")
    for name, values in result.settings.items():
        click.echo(f"setting {name}: {_show(values['a'])} (A) != {_show(values['b'])} (B)")
    for key in result.only_a:
        click.echo(f"- {key}")
    for key in result.only_b:
        click.echo(f"+ {key}")
    for key, fields in result.changed:
        click.echo(f"~ {key} ({', '.join(fields)})")
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if result.same:
        click.echo("same: identical settings and records")
        return
    click.echo(
        f"differ: {len(result.only_a)} only in A, {len(result.only_b)} only in B, "
        f"{len(result.changed)} changed, {len(result.settings)} setting(s)"
    )


@click.command("diff", context_settings=CONTEXT)
@click.argument("a", type=click.Path(path_type=str))
@click.argument("b", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def diff_command(a: str, b: str, as_json: bool) -> None:
    """Show which records and settings differ between the stores A and B.

    Compares the stores' identities first (cache-info shows them): equal identities and
    settings mean the same store, decided from the two manifests without reading a record.
    Otherwise it walks both stores' metadata side by side in key order (never a pixel) and
    lists each difference on a line of its own:

    \b
      setting NAME: VALUE (A) != VALUE (B)
      - KEY               only in A
      + KEY               only in B
      ~ KEY (FIELDS)      in both, the record differs in FIELDS: checksum (the
                          pixels), width, height, raw_width, raw_height,
                          orientation, codec, level, extra

    Where a source was read from, and when, does not count: a copy of a store, and a rebuild
    of the same images with the same settings, are the same as the original.

    --json prints one document: {"same": bool, "identity": {"a": ..., "b": ...}, "only_a":
    [keys], "only_b": [keys], "changed": [{"key": ..., "fields": [...]}], "settings":
    {name: {"a": ..., "b": ...}}, "walked": bool, "warnings": [...]}.

    Exit status: 0 the same, 1 they differ (or a store is damaged), 2 usage error (a path that
    holds no store).

    \b
    Examples:
      lmdb-cache diff data/val.lmdb /local/ssd/val.lmdb
      lmdb-cache diff old/train.lmdb data/train.lmdb --json
    """
    try:
        result = diff_caches(a, b)
    except (CacheNotFoundError, NotACacheError) as e:
        fail_usage(str(e))
    except CacheError as e:
        if as_json:  # still one document
            emit_json({"same": False, "a": a, "b": b, "error": str(e)})
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    if as_json:
        emit_json(result.as_dict())
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
    else:
        _print(result)
    sys.exit(0 if result.same else 1)
