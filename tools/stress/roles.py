"""Child roles every scenario uses: reference decodes, API builds, reading a store.

``tools/stress_cache.py _ROLE ARGS...`` runs one of them (see ``cli.ROLES``); each prints one
JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import zlib

from lmdb_cache import CacheError, decode_file, open_cache


def role_refs(argv: list[str]) -> int:
    """``_refs SIDE FILE...``: [height, width, CRC-32] of a fresh decode of each file (null
    where it does not decode)."""
    side = None if argv[0] == "None" else int(argv[0])
    out: list[list[int] | None] = []
    for path in argv[1:]:
        try:
            px = decode_file(path, max_side=side).pixels
            out.append([int(px.shape[0]), int(px.shape[1]), zlib.crc32(px.data)])
        except CacheError:
            out.append(None)
    print(json.dumps(out))
    return 0


def role_build(argv: list[str]) -> int:
    """``_build SRC OUT [--max-side N] [--rebuild] [--commit-images N]``: the Python API."""
    from lmdb_cache import build_cache

    p = argparse.ArgumentParser(prog="_build")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--max-side", type=int)
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--commit-images", type=int, default=256)
    a = p.parse_args(argv)
    side = {} if a.max_side is None else {"max_side": a.max_side}
    result = build_cache(a.src, a.out, rebuild=a.rebuild, commit_images=a.commit_images, **side)
    return 0 if result.ok else 1


def role_pixels(argv: list[str]) -> int:
    """``_pixels STORE``: {key: [height, width, CRC-32]} of every record."""
    out = {}
    with open_cache(argv[0]) as reader:
        for key in reader.keys():
            image = reader[key].image
            out[key] = [int(image.shape[0]), int(image.shape[1]), zlib.crc32(image.data)]
    print(json.dumps(out))
    return 0


def role_read(argv: list[str]) -> int:
    """``_read STORE [KEY]``: ``open_cache(STORE)[KEY]`` (or every record, the manifest and the
    failures); exit 1 with {"error", "message"} on a CacheError. Anything else propagates."""
    try:
        with open_cache(argv[0]) as reader:
            keys = argv[1:] or reader.keys()
            for key in keys:
                reader[key]
            if not argv[1:]:
                reader.failures(), reader.manifest, len(reader)
    except CacheError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
        return 1
    print(json.dumps({"error": None, "records": len(keys)}))
    return 0
