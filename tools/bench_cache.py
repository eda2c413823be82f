"""Cache read vs decode, side by side in one run.

For every image of a folder (default ../shared/data/sroie-dev/img) this times:
  (a) decoding with Pillow: open + EXIF orientation + RGB (lmdb_cache.images.decode_file);
  (b) reading the record of a full-size cache into an owned array (reader[key]);
  (c) copying the same arrays already held in RAM (np.empty_like + np.copyto): the memcpy bound;
  (d) a zero-copy view (reader.view(key));
and the same for a cache capped with --max-side (default 1024), where (a) is decoding the same
source at full size and with the cap. Caches are built in a scratch folder (or --cache-dir).
Timings are warm (page cache filled by an untimed pass); each is the median of --repeat passes.

    python tools/bench_cache.py --json docs/bench_cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lmdb
import numpy as np
import PIL

from lmdb_cache import build_cache, open_cache
from lmdb_cache.images import decode_file, scan_images

DEFAULT_SOURCE = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sroie-dev" / "img"
)


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "lmdb": lmdb.__version__,
    }


def timed(fn, keys: list[str], repeat: int) -> float:
    """Median over ``repeat`` passes of the time for one pass over ``keys``."""
    passes = []
    for _ in range(repeat):
        start = time.perf_counter()
        for key in keys:
            fn(key)
        passes.append(time.perf_counter() - start)
    return statistics.median(passes)


def bench_store(
    store: Path, source: Path, keys: list[str], repeat: int, max_side: int | None
) -> dict:
    reader = open_cache(store)
    nbytes = sum(reader.meta(k)["nbytes"] for k in keys)
    for key in keys:  # warm: page cache and this process's mapping
        reader[key]
    held = {key: reader[key].image for key in keys}

    def copy_ram(key: str) -> None:
        src = held[key]
        np.copyto(np.empty_like(src), src)

    decode_repeat = max(1, min(repeat, 2))
    result = {
        "images": len(keys),
        "pixel_bytes": nbytes,
        "decode_full_s": timed(lambda k: decode_file(source / k), keys, decode_repeat),
        "read_owned_s": timed(lambda k: reader[k], keys, repeat),
        "copy_ram_s": timed(copy_ram, keys, repeat),
        "view_s": timed(lambda k: reader.view(k), keys, repeat),
    }
    if max_side is not None:
        result["decode_capped_s"] = timed(
            lambda k: decode_file(source / k, max_side=max_side), keys, decode_repeat
        )
    reader.close()
    return result


def report(name: str, r: dict) -> list[str]:
    n = r["images"]
    mb = r["pixel_bytes"] / 1e6

    def row(label: str, seconds: float) -> str:
        return f"| {name} | {label} | {seconds / n * 1e3:.3f} | {mb / seconds:,.0f} |"

    lines = [
        row("(a) decode with Pillow (EXIF + RGB), full size", r["decode_full_s"]),
    ]
    if "decode_capped_s" in r:
        lines.append(row("(a') decode + cap, same images", r["decode_capped_s"]))
    lines += [
        row("(b) cache read into an owned array", r["read_owned_s"]),
        row("(c) copy of the same arrays held in RAM", r["copy_ram_s"]),
        f"| {name} | (d) zero-copy view | {r['view_s'] / n * 1e6:.1f} us | - |",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, nargs="?", default=DEFAULT_SOURCE)
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep/reuse the caches here")
    parser.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(
            f"error: image folder '{args.source}' not found; "
            "pass one, e.g. ../shared/data/sroie-dev/img",
            file=sys.stderr,
        )
        return 2
    scratch = None
    if args.cache_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="bench_cache_")
        args.cache_dir = Path(scratch.name)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    full, capped = args.cache_dir / "full.lmdb", args.cache_dir / f"max{args.max_side}.lmdb"
    for out, cap in ((full, None), (capped, args.max_side)):
        build = build_cache(args.source, out, max_side=cap)
        print(
            f"built {out.name}: {build.images} images, {build.total_bytes / 1e6:.0f} MB",
            file=sys.stderr,
        )
    keys = scan_images(args.source)
    results = {
        "machine": machine(),
        "source": str(args.source),
        "repeat": args.repeat,
        "full": bench_store(full, args.source, keys, args.repeat, None),
        "capped": bench_store(capped, args.source, keys, args.repeat, args.max_side),
        "max_side": args.max_side,
    }
    f, c = results["full"], results["capped"]
    ratios = {
        "read_vs_memcpy_full": f["copy_ram_s"] / f["read_owned_s"],
        "read_speedup_vs_decode_full": f["decode_full_s"] / f["read_owned_s"],
        "view_us_full": f["view_s"] / f["images"] * 1e6,
        "capped_read_speedup_vs_decode": c["decode_full_s"] / c["read_owned_s"],
        "capped_read_speedup_vs_decode_capped": c["decode_capped_s"] / c["read_owned_s"],
        "read_vs_memcpy_capped": c["copy_ram_s"] / c["read_owned_s"],
    }
    goals = {
        "(b) >= 80% of (c) speed, full size": ratios["read_vs_memcpy_full"] >= 0.8,
        "zero-copy view costs microseconds (< 5% of an owned read)": f["view_s"]
        < 0.05 * f["read_owned_s"],
        "capped read >= 100x faster than decoding": ratios["capped_read_speedup_vs_decode"] >= 100,
    }
    results["ratios"] = ratios
    results["goals"] = goals
    m = results["machine"]
    print(
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}, "
        f"numpy {m['numpy']}, Pillow {m['pillow']}, lmdb {m['lmdb']}"
    )
    print(
        f"{f['images']} images from {args.source}; "
        f"warm page cache; median of {args.repeat} passes\n"
    )
    print("| cache | variant | ms / image | MB/s of pixels |")
    print("|---|---|---:|---:|")
    for line in report("full size", f) + report(f"--max-side {args.max_side}", c):
        print(line)
    print()
    print(
        f"- full-size read reaches {ratios['read_vs_memcpy_full']:.0%} of memcpy speed, "
        f"{ratios['read_speedup_vs_decode_full']:.1f}x faster than decoding"
    )
    print(f"- zero-copy view: {ratios['view_us_full']:.1f} us per image")
    print(
        f"- capped read: {ratios['capped_read_speedup_vs_decode']:.0f}x faster than decoding "
        "the same image at full size, "
        f"{ratios['capped_read_speedup_vs_decode_capped']:.0f}x faster than decode + cap"
    )
    for goal, ok in goals.items():
        print(f"- {'PASS' if ok else 'FAIL'}: {goal}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    if scratch is not None:
        scratch.cleanup()
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
