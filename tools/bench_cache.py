"""Cache read vs decode, side by side in one run.

For every image of a folder (default ../shared/data/sroie-dev/img) this times, per image:
  (a) decoding with Pillow: read + decode + EXIF orientation + RGB (images.decode_file);
  (b) reading the record of a full-size cache into an owned array (reader[key]);
  (c) copying the same arrays already held in RAM (np.empty_like + np.copyto): the work of (b)
      without the store, i.e. the one-memcpy bound;
  (d) a zero-copy view (reader.view(key)), in microseconds;
and (a')/(b')/(c')/(d') for a cache built with --max-side (default 1024), where (a') is decoding
the same source with the cap (and without it, the (a) timing).

Steady state: the page cache is filled and this process's mapping touched by one untimed pass
over each store, then one untimed round of every read variant; the variants are interleaved
pass by pass and each figure is the median of --repeat per-pass totals. First touch: (b) and
(d) are also timed on their first pass in a fresh process (a subprocess per run), where every
mapped page is faulted in once.

The caches are built in a scratch folder that is deleted afterwards, or in --cache-dir (kept
and reused when already there). Exit status: 0 every goal PASSes, 1 a goal FAILs, 2 bad usage.

    python tools/bench_cache.py --json docs/bench_cache.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import PIL

from lmdb_cache import CacheError, build_cache, open_cache
from lmdb_cache.images import decode_file, scan_images

DEFAULT_SOURCE = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sroie-dev" / "img"
)

# Goals, each checked on the figures of one run.
READ_VS_COPY_MIN = 0.8  # throughput (b) / throughput (c), full size
READ_VS_DECODE_MIN = 20.0  # (a) time / (b) time, full size ("about 20x expected")
VIEW_MAX_US = 1000.0  # a view is counted in microseconds: under a millisecond per image
CAPPED_VS_DECODE_MIN = 100.0  # decode time / (b') time, against the faster of the two decodes


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": "unknown", "memory_gib": None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        thp = "unknown"
    return {
        **info,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "transparent_hugepage": thp,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "py_lmdb": lmdb.__version__,
        "lmdb": ".".join(map(str, lmdb.version())),
        "date": datetime.date.today().isoformat(),
    }


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _one_pass(fn: Callable[[str], object], keys: list[str]) -> tuple[float, int]:
    """Seconds and minor page faults of one call of ``fn`` per key (results dropped at once)."""
    faults = _minor_faults()
    start = time.perf_counter()
    for key in keys:
        fn(key)
    seconds = time.perf_counter() - start
    return seconds, _minor_faults() - faults


def _interleaved(
    variants: dict[str, Callable[[str], object]],
    keys: list[str],
    repeat: int,
    warmup: bool = False,
) -> dict[str, dict[str, Any]]:
    """Median pass of each variant; passes alternate so drift hits every variant alike.

    With ``warmup`` one untimed round runs first: on a VM whose freed memory goes back to the
    host, the first pass after a large allocation pays host page faults on fresh destination
    memory (up to 3x slower), which is not what a long-running loader sees.
    """
    if warmup:
        for fn in variants.values():
            _one_pass(fn, keys)
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            samples[name].append(_one_pass(fn, keys))
    return {
        name: {
            "seconds": statistics.median(s for s, _ in passes),
            "passes": [round(s, 6) for s, _ in passes],
            "minor_faults": statistics.median(f for _, f in passes),
        }
        for name, passes in samples.items()
    }


def _bench_store(store: Path, keys: list[str], repeat: int) -> dict[str, Any]:
    """(b), (c) and (d) on one store, warm."""
    with open_cache(store) as reader:
        pixel_bytes = sum(reader.meta(k)["nbytes"] for k in keys)
        # Untimed: fills the page cache and faults this process's mapping in. Kept for the record.
        warmup = _one_pass(reader.__getitem__, keys)
        held = {key: reader[key].image for key in keys}
        # Diagnostics: one destination, faulted in once and reused, so these two copies pay
        # neither the allocation nor the page faults of a fresh array.
        reused = np.ones(max(a.nbytes for a in held.values()), dtype=np.uint8)

        def copy_held(key: str) -> None:
            src = held[key]
            np.copyto(np.empty_like(src), src)

        def view_into_reused(key: str) -> None:
            src = reader.view(key).image
            np.copyto(reused[: src.nbytes].reshape(src.shape), src)

        def held_into_reused(key: str) -> None:
            src = held[key]
            np.copyto(reused[: src.nbytes].reshape(src.shape), src)

        timings = _interleaved(
            {
                "read": reader.__getitem__,
                "copy": copy_held,
                "view": reader.view,
                "view_into_reused": view_into_reused,
                "held_into_reused": held_into_reused,
            },
            keys,
            repeat,
            warmup=True,
        )
        held.clear()
    return {
        "images": len(keys),
        "pixel_bytes": pixel_bytes,
        "warmup_pass": {"seconds": warmup[0], "minor_faults": warmup[1]},
        **timings,
    }


def _bench_decode(
    source: Path, keys: list[str], max_side: int, repeat: int
) -> dict[str, dict[str, Any]]:
    """(a) and (a'): full decode and decode + cap of the same files."""
    for key in keys:  # the encoded files themselves come from the page cache too
        (source / key).read_bytes()
    return _interleaved(
        {
            "decode_full": lambda k: decode_file(source / k),
            "decode_capped": lambda k: decode_file(source / k, max_side=max_side),
        },
        keys,
        repeat,
    )


def _child_first_pass(store: str, variant: str) -> int:
    """In a fresh process: open, then two passes of ``variant``; prints one JSON line."""
    start = time.perf_counter()
    reader = open_cache(store)
    keys = reader.keys()
    opened = time.perf_counter() - start
    fn = reader.__getitem__ if variant == "read" else reader.view
    first = _one_pass(fn, keys)
    second = _one_pass(fn, keys)
    result = {
        "images": len(keys),
        "pixel_bytes": sum(reader.meta(k)["nbytes"] for k in keys),
        "open_seconds": opened,
        "first_seconds": first[0],
        "first_minor_faults": first[1],
        "second_seconds": second[0],
        "second_minor_faults": second[1],
    }
    reader.close()
    print(json.dumps(result))
    return 0


def _fresh_process(store: Path, variant: str, runs: int) -> dict[str, Any]:
    """Median over ``runs`` fresh processes of :func:`_child_first_pass`."""
    outputs = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(store), variant],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"fresh-process pass over '{store}' ({variant}) exited {proc.returncode}:\n"
                f"{proc.stderr}"
            )
        outputs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {field: statistics.median(out[field] for out in outputs) for field in outputs[0]} | {
        "runs": runs
    }


def _ensure_store(
    source: Path, out: Path, max_side: int | None, workers: int, source_keys: list[str]
) -> dict[str, Any]:
    """Build ``out`` unless it is already there; check that it holds what the bench expects."""
    info: dict[str, Any] = {"path": str(out), "built": False}
    if not out.exists():
        _log(f"building {out} (max_side={max_side}, {workers} workers)...")
        build = build_cache(source, out, max_side=max_side, workers=workers)
        for key, reason in build.failures:
            _log(f"  not cached: {key}: {reason}")
        info.update(built=True, build_seconds=build.seconds, failures=build.failures)
        _log(f"  {build.images} images, {build.total_bytes / 1e6:,.0f} MB in {build.seconds:.1f} s")
    with open_cache(out) as reader:
        if reader.settings.get("max_side") != max_side:
            raise ValueError(
                f"cache '{out}' was built with max_side={reader.settings.get('max_side')}, the "
                f"bench needs {max_side}; delete it or pass another --cache-dir"
            )
        stored = reader.keys()
    missing = sorted(set(source_keys) - set(stored))
    if missing and not info["built"]:
        raise ValueError(
            f"cache '{out}' lacks {len(missing)} images of '{source}' (first: {missing[0]}); "
            "delete it or pass another --cache-dir"
        )
    info["keys"] = stored
    return info


def _ms(seconds: float, n: int) -> float:
    return seconds / n * 1e3


def _rows(title: str, section: dict[str, Any], decode: dict[str, Any], cap: bool) -> list[str]:
    n, nbytes = section["images"], section["pixel_bytes"]
    full_bytes = section["decode_full_bytes"]

    def row(label: str, t: dict[str, Any], out_bytes: int) -> str:
        lo, hi = min(t["passes"]), max(t["passes"])
        rate = out_bytes / t["seconds"] / 1e6
        return (
            f"| {title} | {label} | {_ms(t['seconds'], n):.3f} | {rate:,.0f}"
            f" | {_ms(lo, n):.3f}-{_ms(hi, n):.3f} | {t['minor_faults'] / n:,.0f} |"
        )

    if cap:
        rows = [
            row("(a') decode + cap (decode_file max_side)", decode["decode_capped"], nbytes),
            row("(a) decode, full size (the (a) timing)", decode["decode_full"], full_bytes),
        ]
        mark = "'"
    else:
        rows = [row("(a) decode with Pillow (EXIF + RGB)", decode["decode_full"], nbytes)]
        mark = ""
    view = section["view"]
    lo, hi = min(view["passes"]), max(view["passes"])
    rows += [
        row(f"(b{mark}) cache read into an owned array", section["read"], nbytes),
        row(f"(c{mark}) copy of the same arrays held in RAM", section["copy"], nbytes),
        f"| {title} | (d{mark}) zero-copy view | {view['seconds'] / n * 1e6:.1f} us | - "
        f"| {lo / n * 1e6:.1f}-{hi / n * 1e6:.1f} us | {view['minor_faults'] / n:,.0f} |",
        row("diagnostic: view copied into a reused buffer", section["view_into_reused"], nbytes),
        row("diagnostic: held array copied into it", section["held_into_reused"], nbytes),
    ]
    return rows


def _fresh_rows(title: str, section: dict[str, Any]) -> list[str]:
    rows = []
    for variant, label in (("read", "(b) owned read"), ("view", "(d) zero-copy view")):
        f = section["fresh"][variant]
        n, nbytes = f["images"], f["pixel_bytes"]
        steady = section[variant]["seconds"] / section["images"] * n
        rows.append(
            f"| {title} | {label} | {f['open_seconds'] * 1e3:.1f} "
            f"| {_ms(f['first_seconds'], n):.3f} | {nbytes / f['first_seconds'] / 1e6:,.0f} "
            f"| {f['first_minor_faults'] / n:,.0f} | {_ms(f['second_seconds'], n):.3f} "
            f"| {f['second_minor_faults'] / n:,.0f} | {_ms(steady, n):.3f} |"
        )
    return rows


def _ratios_and_goals(
    full: dict[str, Any], capped: dict[str, Any], decode: dict[str, Any]
) -> tuple[dict[str, float], list[tuple[str, str, bool]]]:
    n = full["images"]
    t_a, t_a_cap = decode["decode_full"]["seconds"], decode["decode_capped"]["seconds"]
    ratios = {
        "read_vs_copy_throughput_full": full["copy"]["seconds"] / full["read"]["seconds"],
        "read_vs_copy_throughput_capped": capped["copy"]["seconds"] / capped["read"]["seconds"],
        "read_speedup_vs_decode_full": t_a / full["read"]["seconds"],
        "view_us_full": full["view"]["seconds"] / n * 1e6,
        "view_us_capped": capped["view"]["seconds"] / n * 1e6,
        "view_share_of_read_full": full["view"]["seconds"] / full["read"]["seconds"],
        "capped_read_speedup_vs_decode_full": t_a / capped["read"]["seconds"],
        "capped_read_speedup_vs_decode_capped": t_a_cap / capped["read"]["seconds"],
        "first_pass_read_slowdown_full": full["fresh"]["read"]["first_seconds"]
        / full["read"]["seconds"],
        "first_pass_read_slowdown_capped": capped["fresh"]["read"]["first_seconds"]
        / capped["read"]["seconds"],
    }
    worst_capped = min(
        ratios["capped_read_speedup_vs_decode_full"], ratios["capped_read_speedup_vs_decode_capped"]
    )
    goals = [
        (
            f"(b) reaches >= {READ_VS_COPY_MIN:.0%} of (c)'s throughput (full size)",
            f"{ratios['read_vs_copy_throughput_full']:.0%}"
            f" (capped: {ratios['read_vs_copy_throughput_capped']:.0%})",
            ratios["read_vs_copy_throughput_full"] >= READ_VS_COPY_MIN,
        ),
        (
            f"(b) >= {READ_VS_DECODE_MIN:.0f}x faster than (a) (full size)",
            f"{ratios['read_speedup_vs_decode_full']:.1f}x",
            ratios["read_speedup_vs_decode_full"] >= READ_VS_DECODE_MIN,
        ),
        (
            f"zero-copy view costs microseconds (< {VIEW_MAX_US:.0f} us per image)",
            f"{ratios['view_us_full']:.1f} us full size ({ratios['view_share_of_read_full']:.1%}"
            f" of (b)), {ratios['view_us_capped']:.1f} us capped",
            max(ratios["view_us_full"], ratios["view_us_capped"]) < VIEW_MAX_US,
        ),
        (
            f"capped read >= {CAPPED_VS_DECODE_MIN:.0f}x faster than decoding the same image",
            f"{ratios['capped_read_speedup_vs_decode_full']:.0f}x vs full decode, "
            f"{ratios['capped_read_speedup_vs_decode_capped']:.0f}x vs decode + cap",
            worst_capped >= CAPPED_VS_DECODE_MIN,
        ),
    ]
    return ratios, goals


def _report(results: dict[str, Any], command: str) -> str:
    m, full, capped = results["machine"], results["full"], results["capped"]
    decode, max_side = results["decode"], results["max_side"]
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['memory_gib']} GiB RAM, Linux {m['kernel']} (THP {m['transparent_hugepage']}); "
        f"Python {m['python']}, numpy {m['numpy']}, Pillow {m['pillow']}, "
        f"py-lmdb {m['py_lmdb']} (LMDB {m['lmdb']}); {m['date']}.",
        "",
        f"Data: {full['images']} images of `{results['source']}`, "
        f"{full['pixel_bytes'] / 1e6:,.0f} MB decoded at full size, "
        f"{capped['pixel_bytes'] / 1e6:,.0f} MB at --max-side {max_side}. "
        "Warm: page cache filled and mapping touched by an untimed pass, then one untimed "
        "round of the read variants; variants interleaved pass by pass, median of "
        f"{results['repeat']} passes (decodes: no untimed round).",
        "",
        "| cache | variant | ms / image | MB/s | passes (ms / image) | minor faults / image |",
        "|---|---|---:|---:|---:|---:|",
        *_rows("full size", full, decode, cap=False),
        *_rows(f"--max-side {max_side}", capped, decode, cap=True),
        "",
        "First pass in a fresh process (median of "
        f"{full['fresh']['read']['runs']} processes; page cache warm):",
        "",
        "| cache | variant | open (ms) | 1st pass ms / image | 1st pass MB/s "
        "| faults / image | 2nd pass ms / image | faults / image | steady (table above) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *_fresh_rows("full size", full),
        *_fresh_rows(f"--max-side {max_side}", capped),
        "",
        "| goal | result | verdict |",
        "|---|---|---|",
    ]
    for goal, result, ok in results["goals"]:
        lines.append(f"| {goal} | {result} | {'PASS' if ok else 'FAIL'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, nargs="?", default=DEFAULT_SOURCE)
    parser.add_argument("--max-side", type=int, default=1024, help="cap of the second cache")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes per variant")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="build_cache decoding processes"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="build (or reuse) and keep the caches here"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--child", nargs=2, metavar=("STORE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return _child_first_pass(*args.child)
    if args.repeat < 1 or args.max_side < 1 or args.workers < 1:
        parser.error("--repeat, --max-side and --workers must be at least 1")
    if not args.source.is_dir():
        _log(
            f"error: image folder '{args.source}' does not exist; pass a folder of images, "
            "e.g. python tools/bench_cache.py ../shared/data/sroie-dev/img"
        )
        return 2
    source_keys = scan_images(args.source)
    if not source_keys:
        _log(f"error: no images in '{args.source}'")
        return 2

    scratch = None
    if args.cache_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="bench_cache_")
        cache_dir = Path(scratch.name)
    else:
        cache_dir = args.cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        try:
            stores = {
                "full": _ensure_store(
                    args.source, cache_dir / "full.lmdb", None, args.workers, source_keys
                ),
                "capped": _ensure_store(
                    args.source,
                    cache_dir / f"max{args.max_side}.lmdb",
                    args.max_side,
                    args.workers,
                    source_keys,
                ),
            }
        except (ValueError, CacheError) as e:
            _log(f"error: {e}")
            return 2
        # Only images both stores hold; a build failure was reported above, never hidden.
        keys = sorted(set(stores["full"].pop("keys")) & set(stores["capped"].pop("keys")))
        results: dict[str, Any] = {
            "machine": _machine(),
            "source": str(args.source),
            "repeat": args.repeat,
            "max_side": args.max_side,
            "stores": stores,
        }
        for name in ("full", "capped"):
            store = Path(stores[name]["path"])
            _log(f"timing reads of {store.name} ({args.repeat} passes per variant)...")
            section = _bench_store(store, keys, args.repeat)
            _log(f"first passes in fresh processes over {store.name}...")
            section["fresh"] = {
                variant: _fresh_process(store, variant, args.repeat) for variant in ("read", "view")
            }
            results[name] = section
        _log(f"timing decodes ({args.repeat} passes each, about a minute)...")
        results["decode"] = _bench_decode(args.source, keys, args.max_side, args.repeat)
    finally:
        if scratch is not None:
            scratch.cleanup()

    full_bytes = results["full"]["pixel_bytes"]
    results["full"]["decode_full_bytes"] = results["capped"]["decode_full_bytes"] = full_bytes
    ratios, goals = _ratios_and_goals(results["full"], results["capped"], results["decode"])
    results["ratios"] = ratios
    results["goals"] = goals
    command = "python tools/bench_cache.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(_report(results, command.strip()))
    if args.json is not None:
        results["goals"] = [
            {"goal": goal, "result": result, "pass": ok} for goal, result, ok in goals
        ]
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(ok for *_, ok in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
