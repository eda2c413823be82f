"""Raw vs zstd stores side by side: size, build time, and the cost of an owned read.

For each cap (``--max-side``, ``none`` for full size) it builds a raw and a zstd store of the
same folder into a scratch folder, then in this one process (warm page cache, one untimed pass
first) alternates the read variants pass by pass and reports the median per-image time of
``--repeat`` passes, with the range:

* ``decode + cap``: Pillow decode, EXIF, RGB and the cap (``decode_file``), what a run pays
  without a cache (only timed where ``--decode`` is given: it takes a while at full size);
* ``raw owned read``: ``reader[key].image`` from the raw store;
* ``zstd owned read``: the same from the zstd store (decompression into a new array);
* ``zstd read_into``: decompression into one reused array (a batch slot).

Every zstd read is checked to equal the raw store's pixels.

    python tools/bench_codecs.py ../shared/data/sroie-dev/img --max-side 640 none --decode \\
        --json docs/bench_codecs.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _passes(variants: dict[str, Any], keys: list[str], repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # untimed round: page faults, first metadata decode
        for key in keys:
            fn(key)
    for _ in range(repeat):
        for name, fn in variants.items():
            start = time.perf_counter()
            for key in keys:
                fn(key)
            times[name].append(1000 * (time.perf_counter() - start) / len(keys))
    return times


def _one_cap(images: Path, cap: int | None, scratch: Path, args: argparse.Namespace) -> dict:
    from lmdb_cache import build_cache, decode_file, open_cache

    label = str(cap) if cap else "none"
    stores = {}
    for codec in ("raw", "zstd"):
        path = scratch / f"{label}-{codec}.lmdb"
        start = time.perf_counter()
        level = {} if args.level is None else {"level": args.level}
        result = build_cache(images, path, max_side=cap, codec=codec, **level)
        stores[codec] = {
            "path": path,
            "build_s": time.perf_counter() - start,
            "data_bytes": os.path.getsize(path / "data.mdb"),
            "pixel_bytes": result.total_bytes,
            "images": result.images,
        }
    raw, packed = open_cache(stores["raw"]["path"]), open_cache(stores["zstd"]["path"])
    keys = raw.keys()
    for key in keys:
        if not np.array_equal(raw[key].image, packed[key].image):
            raise SystemExit(f"zstd pixels differ from raw for {key}")
    slots = {key: np.empty_like(raw[key].image) for key in keys}
    variants: dict[str, Any] = {
        "raw owned read": lambda k: raw[k].image,
        "zstd owned read": lambda k: packed[k].image,
        "zstd read_into": lambda k: packed.read_into(k, slots[k]),
    }
    if args.decode:
        variants["decode + cap"] = lambda k: decode_file(images / k, max_side=cap)
    times = _passes(variants, keys, args.repeat)
    raw.close()
    packed.close()
    row = {
        "max_side": cap,
        "images": len(keys),
        "stores": {c: {k: v for k, v in s.items() if k != "path"} for c, s in stores.items()},
        "size_ratio_zstd_over_raw": stores["zstd"]["data_bytes"] / stores["raw"]["data_bytes"],
        "ms_per_image": {
            name: {"median": statistics.median(t), "min": min(t), "max": max(t)}
            for name, t in times.items()
        },
    }
    return row


def _report(rows: list[dict], args: argparse.Namespace) -> None:
    from lmdb_cache.format.codecs.zstd import DEFAULT_LEVEL

    level = args.level if args.level is not None else DEFAULT_LEVEL
    print(f"\nzstd level {level}, {args.repeat} timed passes per variant (median, range)\n")
    print("| cap | store | images | data.mdb | ratio to raw | build (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        cap = r["max_side"] or "full size"
        for codec, s in r["stores"].items():
            ratio = s["data_bytes"] / r["stores"]["raw"]["data_bytes"]
            print(
                f"| {cap} | {codec} | {s['images']} | {s['data_bytes'] / 1e6:.1f} MB | "
                f"{ratio:.3f} | {s['build_s']:.1f} |"
            )
    print("\n| cap | variant | ms / image | range |")
    print("|---|---|---:|---|")
    for r in rows:
        cap = r["max_side"] or "full size"
        for name, t in r["ms_per_image"].items():
            print(f"| {cap} | {name} | {t['median']:.3f} | {t['min']:.3f}-{t['max']:.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", type=Path, help="image folder")
    parser.add_argument(
        "--max-side", nargs="+", default=["640"], help="caps to try; 'none' for full size"
    )
    parser.add_argument(
        "--level", type=int, default=None, help="zstd level (default: build-cache's default)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed passes per variant (5)")
    parser.add_argument("--decode", action="store_true", help="also time decode + cap")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the stores")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.images.is_dir():
        print(f"error: {args.images} is not a folder of images", file=sys.stderr)
        return 2
    caps = [None if c.lower() == "none" else int(c) for c in args.max_side]
    tmp = tempfile.TemporaryDirectory(prefix="bench_codecs_") if args.scratch is None else None
    scratch = Path(tmp.name) if tmp else args.scratch
    rows = [_one_cap(args.images, cap, scratch, args) for cap in caps]
    _report(rows, args)
    if args.json is not None:
        from lmdb_cache.format.codecs.zstd import DEFAULT_LEVEL

        level = args.level if args.level is not None else DEFAULT_LEVEL
        args.json.write_text(json.dumps({"level": level, "rows": rows}, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
