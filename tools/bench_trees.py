"""Two checkouts of this project side by side: is a change free on the paths it touches?

Every measurement runs in a fresh process whose ``PYTHONPATH`` is one checkout, old and new
alternating (``--pairs`` times), on the same stores, so both trees meet the same page cache
and the same CPU; the report gives each tree's median with its range and the new/old ratio of
each pair (median and range). Run it alone on the machine: anything beside it moves the figures.

* ``build``: ``build_cache(images, out, max_side=640, workers=2)`` into a fresh folder, the
  process's wall and CPU time (decode, encode and commit).
* ``read-raw``, ``read-zstd``: a store built once (by the new tree) and read by each: the
  first pass of a fresh reader over every key (``reader[key]``: metadata, checks, one copy)
  and then, after one untimed pass, the median per read of ``--passes`` passes of
  ``reader[key]`` (owned copy), ``reader.view(key)`` (zero copy; a decompression for zstd)
  and ``reader.read_into(key, slot)`` (one reused array).
* ``loader``: each tree's own ``tools/bench_loader.py --split val --sources cache --pipelines
  new`` (annotations from ``--annotations``): the validation epoch of 2 DataLoader workers
  from a store capped at 640, and the per-sample read and transform stages.

    git worktree add /tmp/old-tree 64fb768
    python tools/convert_icdar.py ../shared/data/sroie-dev/box data/sroie.json \\
        --images ../shared/data/sroie-dev/img
    python tools/bench_trees.py /tmp/old-tree . --images ../shared/data/sroie-dev/img \\
        --annotations data/sroie.json --pairs 5 --json docs/bench_trees.json

Exit status: 0 done, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

BUILD = """
import json, resource, sys, time
from lmdb_cache import build_cache
start = time.perf_counter()
build_cache(sys.argv[1], sys.argv[2], max_side=640, workers=2)
wall = time.perf_counter() - start
own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
print(json.dumps({"build wall s": wall, "build cpu s": cpu}))
"""

READ = """
import json, statistics, sys, time
import numpy as np
from lmdb_cache import open_cache
store, passes = sys.argv[1], int(sys.argv[2])
reader = open_cache(store)
keys = reader.keys()
start = time.perf_counter()
for key in keys:
    reader[key]
first = (time.perf_counter() - start) / len(keys) * 1e6
slots = {key: np.empty((m["height"], m["width"], 3), np.uint8)
         for key, m in ((k, reader.meta(k)) for k in keys)}
variants = {
    "owned read us": lambda key: reader[key],
    "view us": lambda key: reader.view(key),
    "read_into us": lambda key: reader.read_into(key, slots[key]),
}
for fn in variants.values():
    for key in keys:
        fn(key)
times = {name: [] for name in variants}
for _ in range(passes):
    for name, fn in variants.items():
        start = time.perf_counter()
        for key in keys:
            fn(key)
        times[name].append((time.perf_counter() - start) / len(keys) * 1e6)
out = {"first pass us": first}
out.update({name: statistics.median(t) for name, t in times.items()})
print(json.dumps(out))
"""


def _run(tree: Path, code: str, *args: object) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout)


def _loader(tree: Path, images: Path, annotations: Path, scratch: Path) -> dict[str, float]:
    out = scratch / "loader.json"
    command = [
        sys.executable,
        str(tree / "tools" / "bench_loader.py"),
        str(images),
        str(annotations),
        "--split",
        "val",
        "--sources",
        "cache",
        "--pipelines",
        "new",
        "--scratch",
        str(scratch / "loader"),
        "--json",
        str(out),
    ]
    done = subprocess.run(
        command,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: bench_loader: {done.stderr.strip()[-1500:]}")
    row = json.loads(out.read_text())["rows"][0]
    return {
        "val epoch s": row["epoch_s"],
        "read ms": row["stages_ms"]["read"],
        "transform ms": row["stages_ms"]["transform"],
    }


def _stores(new: Path, images: Path, scratch: Path) -> dict[str, Path]:
    code = (
        "import sys\nfrom lmdb_cache import build_cache\n"
        "build_cache(sys.argv[1], sys.argv[2], max_side=640, workers=2, codec=sys.argv[3])"
    )
    stores = {}
    for codec in ("raw", "zstd"):
        stores[codec] = scratch / f"{codec}.lmdb"
        subprocess.run(
            [sys.executable, "-c", code, str(images), str(stores[codec]), codec],
            env={**os.environ, "PYTHONPATH": str(new)},
            check=True,
        )
    return stores


def _pairs(trees: dict[str, Path], job: Any, pairs: int) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for i in range(pairs):
        order = list(trees) if i % 2 == 0 else list(reversed(trees))
        for name in order:
            runs[name].append(job(trees[name]))
            print(f"  pair {i + 1}/{pairs} {name}: {runs[name][-1]}", file=sys.stderr)
    return runs


def _summary(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for measure in runs["new"][0]:
        old = [r[measure] for r in runs["old"]]
        new = [r[measure] for r in runs["new"]]
        ratios = [n / o for n, o in zip(new, old, strict=True)]
        out[measure] = {
            "old": {"median": statistics.median(old), "min": min(old), "max": max(old)},
            "new": {"median": statistics.median(new), "min": min(new), "max": max(new)},
            "new/old": {
                "median": statistics.median(ratios),
                "min": min(ratios),
                "max": max(ratios),
            },
        }
    return out


def _table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'measure':<28}{'old (range)':>26}{'new (range)':>26}{'new/old (range)':>22}"]
    for section, measures in results.items():
        for measure, m in measures.items():
            o, n, r = m["old"], m["new"], m["new/old"]
            lines.append(
                f"{section + ': ' + measure:<28}"
                f"{o['median']:>10.2f} ({o['min']:.2f}-{o['max']:.2f})".rjust(26)
                + f"{n['median']:>10.2f} ({n['min']:.2f}-{n['max']:.2f})".rjust(26)
                + f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})".rjust(22)
            )
    return "\n".join(lines)


def _machine() -> str:
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/bench_trees.py", description=__doc__.split("\n")[0])
    p.add_argument("old", type=Path, help="the old checkout (e.g. a git worktree)")
    p.add_argument("new", type=Path, help="the new checkout (e.g. .)")
    p.add_argument("--images", type=Path, default=ROOT.parent / "shared/data/sroie-dev/img")
    p.add_argument("--pairs", type=int, default=5, help="alternating old/new runs (default 5)")
    p.add_argument("--passes", type=int, default=30, help="timed passes per read (default 30)")
    p.add_argument(
        "--annotations",
        type=Path,
        default=ROOT / "data" / "sroie.json",
        help="annotation JSON of --images, for the loader section",
    )
    p.add_argument("--only", nargs="+", choices=("build", "read-raw", "read-zstd", "loader"))
    p.add_argument("--json", type=Path, help="write the figures there too")
    args = p.parse_args(argv)
    for tree in (args.old, args.new):
        if not (tree / "lmdb_cache" / "__init__.py").is_file():
            p.error(f"'{tree}' is not a checkout of this project (no lmdb_cache/__init__.py)")
    if not args.images.is_dir():
        p.error(f"'{args.images}' is not a folder of images; pass --images")
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    wanted = args.only or ["build", "read-raw", "read-zstd", "loader"]
    if "loader" in wanted and not args.annotations.is_file():
        p.error(f"'{args.annotations}' is not an annotation file; pass --annotations (or --only)")
    results: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-trees-") as tmp:
        scratch = Path(tmp)
        if "build" in wanted:
            counter = iter(range(10**6))

            def build(tree: Path) -> dict[str, float]:
                return _run(tree, BUILD, args.images, scratch / f"build-{next(counter)}.lmdb")

            print("build", file=sys.stderr)
            results["build"] = _summary(_pairs(trees, build, args.pairs))
        reads = [w for w in wanted if w.startswith("read-")]
        stores = _stores(trees["new"], args.images, scratch) if reads else {}
        for section in reads:
            store = stores[section.removeprefix("read-")]
            print(section, file=sys.stderr)
            results[section] = _summary(
                _pairs(
                    trees,
                    lambda tree, store=store: _run(tree, READ, store, args.passes),
                    args.pairs,
                )
            )
        if "loader" in wanted:
            print("loader", file=sys.stderr)
            results["loader"] = _summary(
                _pairs(
                    trees,
                    lambda tree: _loader(tree, args.images, args.annotations, scratch),
                    args.pairs,
                )
            )
    report = {
        "machine": _machine(),
        "command": " ".join(["python", "tools/bench_trees.py", *(argv or sys.argv[1:])]),
        "old": str(trees["old"]),
        "new": str(trees["new"]),
        "images": str(args.images),
        "pairs": args.pairs,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "results": results,
    }
    print(f"{report['machine']}; {args.pairs} alternating pairs, fresh processes")
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
