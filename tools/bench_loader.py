"""One validation-epoch data pass per image source, each in a fresh process.

Variants: disk (decode per read), preload (decode all at start-up into a dict), lmdb-full
(full-size cache), lmdb-cap (cache capped at the transform size, dataset max_side the same).
For each: time from process start to the first batch, steady epoch time (second epoch, workers
kept), images/s, and memory as PSS summed over the main process and its workers (shared
page-cache pages are split between the processes that map them, not double-counted).

    python tools/bench_loader.py ../shared/data/sroie-dev/img data/sroie.json --workers 4 \\
        --scale 1 4 --json docs/bench_loader.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("disk", "preload", "lmdb-full", "lmdb-cap")


def _pss(pids: list[int]) -> int:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def child(args: argparse.Namespace) -> int:
    """Runs one variant in this (fresh) process and prints one JSON line."""
    import psutil
    import torch

    from ocr.data.loader import build_dataset, build_loader

    started = psutil.Process().create_time()
    torch.set_num_threads(1)
    cfg = {
        "image_path": args.images,
        "annotation_path": args.annotations,
        "transform": {"name": "val", "size": args.size},
        "image_cache": None,
        "preload_images": args.variant == "preload",
        "max_side": None,
    }
    if args.variant == "lmdb-full":
        cfg["image_cache"] = args.full_cache
    elif args.variant == "lmdb-cap":
        cfg.update(image_cache=args.cap_cache, max_side=args.size)
    dataset = build_dataset(cfg, None)
    loader = build_loader(
        dataset,
        {"batch_size": args.batch_size, "num_workers": args.workers, "persistent_workers": True},
    )
    first_batch = None
    count = 0
    for batch in loader:
        if first_batch is None:
            first_batch = time.time() - started
        count += len(batch["filename"])
    epoch_start = time.perf_counter()
    pss = 0
    for i, _ in enumerate(loader):
        if i == len(loader) // 2:
            workers = [c.pid for c in psutil.Process().children(recursive=True)]
            pss = _pss([os.getpid(), *workers])
    steady = time.perf_counter() - epoch_start
    print(
        json.dumps(
            {
                "variant": args.variant,
                "images": count,
                "first_batch_s": first_batch,
                "epoch_s": steady,
                "images_per_s": count / steady,
                "pss_mib": pss / 2**20,
            }
        )
    )
    return 0


def _scaled_set(images: Path, annotations: Path, factor: int, scratch: Path) -> tuple[Path, Path]:
    """``factor`` copies of the set under other names (hard links where possible)."""
    if factor == 1:
        return images, annotations
    out = scratch / f"x{factor}"
    out.mkdir(parents=True, exist_ok=True)
    doc = json.loads(annotations.read_text())
    scaled = {"images": {}}
    for name, entry in doc["images"].items():
        for k in range(factor):
            new = f"copy{k}_{name.replace('/', '_')}"
            target = out / new
            if not target.exists():
                try:
                    os.link(images / name, target)
                except OSError:
                    target.write_bytes((images / name).read_bytes())
            scaled["images"][new] = entry
    ann = scratch / f"x{factor}.json"
    ann.write_text(json.dumps(scaled))
    return out, ann


def _run(variant: str, images: Path, ann: Path, caches: dict, args: argparse.Namespace) -> dict:
    subprocess.run(["sync"], check=False)
    command = [
        sys.executable, __file__, "--child", variant, str(images), str(ann),
        "--workers", str(args.workers), "--batch-size", str(args.batch_size),
        "--size", str(args.size),
        "--full-cache", str(caches["full"]), "--cap-cache", str(caches["cap"]),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("annotations", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=640, help="transform size and cache cap")
    parser.add_argument(
        "--scale", type=int, nargs="+", default=[1], help="set sizes to try (copies)"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--scratch", type=Path, default=None, help="folder for caches and copies")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=VARIANTS, dest="variant", help=argparse.SUPPRESS)
    parser.add_argument("--full-cache", help=argparse.SUPPRESS)
    parser.add_argument("--cap-cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        args.images, args.annotations = str(args.images), str(args.annotations)
        return child(args)
    from lmdb_cache import build_cache

    if not args.images.is_dir() or not args.annotations.is_file():
        print(
            f"error: need an image folder and an annotation file, "
            f"got {args.images} {args.annotations}",
            file=sys.stderr,
        )
        return 2
    tmp = tempfile.TemporaryDirectory(prefix="bench_loader_") if args.scratch is None else None
    scratch = Path(tmp.name) if tmp else args.scratch
    rows = []
    for factor in args.scale:
        images, ann = _scaled_set(args.images, args.annotations, factor, scratch)
        caches = {"full": scratch / f"x{factor}-full.lmdb", "cap": scratch / f"x{factor}-cap.lmdb"}
        build_cache(images, caches["full"])
        build_cache(images, caches["cap"], max_side=args.size)
        for variant in args.variants:
            row = {"scale": factor, **_run(variant, images, ann, caches, args)}
            rows.append(row)
            print(
                f"x{factor} {variant:9s} first batch {row['first_batch_s']:7.2f} s  epoch "
                f"{row['epoch_s']:7.2f} s  {row['images_per_s']:8.1f} img/s  "
                f"PSS {row['pss_mib']:8.0f} MiB",
                file=sys.stderr,
            )
    print(f"\n{args.workers} workers, batch {args.batch_size}, transform size {args.size}\n")
    print(
        "| set | variant | images | first batch (s) | steady epoch (s) | images/s "
        "| PSS main+workers (MiB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| x{r['scale']} | {r['variant']} | {r['images']} | {r['first_batch_s']:.2f} | "
            f"{r['epoch_s']:.2f} | {r['images_per_s']:.1f} | {r['pss_mib']:.0f} |"
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"workers": args.workers, "size": args.size, "rows": rows}, indent=2)
        )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
