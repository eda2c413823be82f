"""What the start-up check for changed sources (``cache_stale``) costs the dataset's start-up.

Generates COUNT small PNG images (48x64) with about 20 word polygons each in an annotation
file of the format ``ocr.data.annotations`` reads, builds their cache once, then starts the
validation dataset from the cache, each run in a fresh process, alternating two variants:

* ``check``: as users run it, with the size+mtime comparison of every annotated source;
* ``skip``: the same with the comparison replaced by a no-op (patched in the child process:
  there is deliberately no user option to turn it off).

Each run times process start -> ``build_dataset(...)`` done -> first sample ``dataset[0]``,
the construction itself, and (``check``) the comparison alone, in process. The table gives
min/median/max over ``--repeat`` runs and the ratios check / whole start-up and
check / dataset construction (medians).

    python tools/bench_stale_check.py --count 10000 --repeat 5 --json docs/bench_stale_check.json
    python tools/bench_stale_check.py --count 300 --repeat 2       # a quick try
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("check", "skip")
WIDTH, HEIGHT = 48, 64
WORDS = 20


def child(args: argparse.Namespace) -> int:
    """Runs one variant in this (fresh) process and prints one JSON line."""
    imported_at = time.time()
    import ocr.data.dataset as dataset_module
    from ocr.config import load_config
    from ocr.data.loader import build_dataset

    check_s: list[float] = []
    original = dataset_module.changed_sources

    def timed(*a, **k):
        started = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            check_s.append(time.perf_counter() - started)

    def skipped(*a, **k):
        return []

    dataset_module.changed_sources = timed if args.variant == "check" else skipped
    config = load_config(args.config)
    cfg = dict(
        config["datasets"]["val_dataset"],
        image_path=args.images,
        annotation_path=args.annotations,
        image_cache=args.cache,
    )
    started = time.perf_counter()
    dataset = build_dataset(cfg, config["targets"])
    construct_s = time.perf_counter() - started
    dataset[0]
    done = time.time()
    print(
        json.dumps(
            {
                "variant": args.variant,
                "images": len(dataset),
                "startup_s": done - args.t0,
                "python_start_s": imported_at - args.t0,
                "construct_s": construct_s,
                "check_s": sum(check_s) if check_s else None,
            }
        )
    )
    return 0


def _png_variants(count: int) -> list[bytes]:
    """A few distinct small PNGs, encoded once and written many times (fast to generate)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        pixels = rng.integers(180, 255, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
        out.append(buf.getvalue())
    return out


def _words(rng) -> dict:
    words = {}
    for j in range(WORDS):
        x, y = rng.uniform(0, WIDTH - 8), rng.uniform(0, HEIGHT - 4)
        w, h = rng.uniform(4, 8), rng.uniform(2, 4)
        points = [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]
        words[f"{j:04d}"] = {"points": [[round(a, 2), round(b, 2)] for a, b in points]}
    return words


def generate(images: Path, annotations: Path, count: int) -> None:
    """``count`` PNGs in subfolders of 1000 under ``images`` and their annotation file."""
    import numpy as np

    rng = np.random.default_rng(1)
    variants = _png_variants(16)
    doc: dict = {"images": {}}
    for i in range(count):
        key = f"{i // 1000:03d}/{i:06d}.png"
        path = images / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(variants[i % len(variants)])
        doc["images"][key] = {"words": _words(rng)}
    annotations.write_text(json.dumps(doc, indent=1))


def _run(variant: str, paths: dict[str, Path], config: Path) -> dict:
    command = [
        sys.executable, __file__, "--child", variant,
        "--images", str(paths["images"]), "--annotations", str(paths["annotations"]),
        "--cache", str(paths["cache"]), "--config", str(config),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command += ["--t0", repr(time.time())]  # last: the child's clock starts here
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize(runs: list[dict]) -> dict:
    """Min/median/max per variant and measure, and the ratios of the check's cost."""
    table: dict = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        table[variant] = {
            name: _spread([r[name] for r in mine]) for name in ("startup_s", "construct_s")
        }
    check = [r["check_s"] for r in runs if r["variant"] == "check"]
    table["check_s"] = _spread(check)
    median_check = table["check_s"]["median"]
    table["ratios"] = {
        "check_over_startup": median_check / table["check"]["startup_s"]["median"],
        "check_over_construction": median_check / table["check"]["construct_s"]["median"],
        "startup_check_over_skip": table["check"]["startup_s"]["median"]
        / table["skip"]["startup_s"]["median"],
    }
    return table


def _print_table(table: dict, count: int, repeat: int) -> None:
    print(f"\ndataset start-up from the cache, {count} images, {repeat} fresh processes each")
    print("| measure | min (s) | median (s) | max (s) |")
    print("|---|---:|---:|---:|")
    rows = [
        ("check: process start -> first sample", table["check"]["startup_s"]),
        ("check: build_dataset", table["check"]["construct_s"]),
        ("skip: process start -> first sample", table["skip"]["startup_s"]),
        ("skip: build_dataset", table["skip"]["construct_s"]),
        ("the check itself (changed_sources)", table["check_s"]),
    ]
    for name, s in rows:
        print(f"| {name} | {s['min']:.4f} | {s['median']:.4f} | {s['max']:.4f} |")
    r = table["ratios"]
    print(
        f"\ncheck / whole start-up: {100 * r['check_over_startup']:.2f}%   "
        f"check / dataset construction: {100 * r['check_over_construction']:.1f}%   "
        f"start-up check / skip: {r['startup_check_over_skip']:.3f}x (medians)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="images (keys)")
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per variant")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for images and cache")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "configs/data/base.yaml",
    )
    parser.add_argument("--child", choices=VARIANTS, dest="variant", help=argparse.SUPPRESS)
    for hidden in ("--images", "--annotations", "--cache"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        return child(args)
    if args.count < 1 or args.repeat < 1:
        print("error: --count and --repeat must be at least 1", file=sys.stderr)
        return 2
    from lmdb_cache import build_cache

    tmp = tempfile.TemporaryDirectory(prefix="bench_stale_") if args.scratch is None else None
    scratch = Path(tmp.name) if tmp else args.scratch
    scratch.mkdir(parents=True, exist_ok=True)
    paths = {
        "images": scratch / "img",
        "annotations": scratch / "img.json",
        "cache": scratch / "img.lmdb",
    }
    try:
        started = time.perf_counter()
        generate(paths["images"], paths["annotations"], args.count)
        took = time.perf_counter() - started
        print(f"generated {args.count} images in {took:.1f} s", file=sys.stderr)
        started = time.perf_counter()
        build_cache(paths["images"], paths["cache"], workers=2)
        print(f"built the cache in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        runs = []
        for i in range(args.repeat):
            for variant in VARIANTS:  # alternated, so drifts of the machine hit both alike
                run = _run(variant, paths, args.config)
                runs.append(run)
                check = f", check {run['check_s']:.4f} s" if run["check_s"] is not None else ""
                print(
                    f"run {i + 1}/{args.repeat} {variant}: start-up {run['startup_s']:.3f} s, "
                    f"build_dataset {run['construct_s']:.3f} s{check}",
                    file=sys.stderr,
                )
    finally:
        if tmp is not None:
            tmp.cleanup()
    table = summarize(runs)
    _print_table(table, args.count, args.repeat)
    if args.json is not None:
        machine = {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
        doc = {"count": args.count, "repeat": args.repeat, "machine": machine, **table}
        args.json.write_text(json.dumps({**doc, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
