"""Where a training or validation sample's time goes, per image source and pipeline.

Variants: each image source (``disk``: decode per read at full size, as without a cache;
``preload``: decode all at start-up into a dict; ``cache``: an LMDB cache capped at the
transform size, read by a dataset with the same ``max_side``) with each pipeline (``new``: the
package's batch path, ``OCRDataset.__getitems__``; ``reference``: the code before issue 9, kept
in ``tools/reference_pipeline.py``). Every variant runs in its own fresh process, one after the
other, on the same images and annotations, and reports:

* per-stage cost per sample, in that one process (one core), after one untimed pass:
  ``read`` (the source's load: decode, dict lookup or cache read), ``transform``,
  ``targets`` (DBNet maps, train only), ``other`` (polygon geometry, sample assembly,
  collate: the batch's time minus the three stages), and ``ipc``: the time from a batch
  finished in a DataLoader worker to the batch received in the main process (1 worker with
  one batch in flight, so the worker is idle and the main process waiting);
* a DataLoader pass with ``--workers`` persistent workers: time to the first batch from
  process start, the steady (second) epoch, images/s, images/s per worker, and memory (PSS
  summed over the main process and its workers).

    python tools/bench_loader.py IMAGES ANN --split train --json docs/bench_loader_train.json
    python tools/bench_loader.py IMAGES ANN --split val --json docs/bench_loader_val.json

Take timings alone on the machine (nothing else running).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SOURCES = ("disk", "preload", "cache")
PIPELINES = ("reference", "new")
STAGES = ("read", "transform", "targets", "other")


class _Timed:
    """Wraps a callable (a transform, the targets, a source's load) and sums its time."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:  # size, resample: what the dataset reads
        return getattr(self.inner, name)


def _stamped(collate_fn: Any) -> Any:
    def stamp(samples: Any) -> Any:
        batch = collate_fn(samples)
        if isinstance(batch, dict):
            batch["_sent"] = time.perf_counter()
        else:
            batch._sent = time.perf_counter()
        return batch

    return stamp


def _count(batch: Any) -> int:
    return len(batch["filename"]) if isinstance(batch, dict) else len(batch)


def _sent(batch: Any) -> float:
    return batch["_sent"] if isinstance(batch, dict) else batch._sent


def _pss(pids: list[int]) -> int:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _datasets(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(the dataset the loaders iterate, the package dataset, its collate function)."""
    from ocr.data.collate import collate
    from ocr.data.loader import build_dataset
    from tools.reference_pipeline import ReferenceDataset, reference_collate

    train = args.split == "train"
    cfg: dict[str, Any] = {
        "image_path": args.images,
        "annotation_path": args.annotations,
        "transform": {"name": "train" if train else "val", "size": args.size},
        "image_cache": args.cache if args.source == "cache" else None,
        "preload_images": args.source == "preload",
        "max_side": args.size if args.source == "cache" else None,
    }
    dataset = build_dataset(cfg, {} if train else None, seed=1)
    if args.pipeline == "new":
        return dataset, dataset, collate
    return ReferenceDataset(dataset, train, args.size, train), dataset, reference_collate


def _stage_pass(args: argparse.Namespace) -> dict[str, float]:
    """Per-sample stage costs over one timed pass (after an untimed one)."""
    data, dataset, collate_fn = _datasets(args)
    holder = data if args.pipeline == "reference" else dataset
    load = _Timed(dataset.source.load)
    dataset.source.load = load
    holder.transform = transform = _Timed(holder.transform)
    targets = None
    if holder.targets is not None:
        holder.targets = targets = _Timed(holder.targets)
    n = len(data)
    batches = [list(range(i, min(i + args.batch_size, n))) for i in range(0, n, args.batch_size)]

    def one_pass() -> float:
        start = time.perf_counter()
        for indices in batches:
            if args.pipeline == "new":
                collate_fn(data.__getitems__(indices))
            else:
                collate_fn([data[i] for i in indices])
        return time.perf_counter() - start

    dataset.set_epoch(0)
    one_pass()
    for timer in (load, transform, targets):
        if timer is not None:
            timer.seconds = 0.0
    dataset.set_epoch(1)
    total = one_pass()
    stages = {
        "read": load.seconds,
        "transform": transform.seconds,
        "targets": targets.seconds if targets is not None else 0.0,
    }
    stages["other"] = total - sum(stages.values())
    stages["total"] = total
    return {name: 1000 * seconds / n for name, seconds in stages.items()}


def _loader(data: Any, collate_fn: Any, workers: int, batch_size: int, prefetch: int = 2) -> Any:
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(
        data,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_stamped(collate_fn),
        persistent_workers=True,
        prefetch_factor=prefetch,
        generator=torch.Generator().manual_seed(0),
    )


def _ipc(args: argparse.Namespace) -> float:
    """ms per sample from a batch finished in the worker to the batch in the main process.

    One worker with one batch in flight: it is idle while its batch travels, so nothing but
    the transfer (pickling, the pipe, unpickling in the main process) is timed.
    """
    data, _, collate_fn = _datasets(args)
    loader = _loader(data, collate_fn, 1, args.batch_size, prefetch=1)
    for _ in loader:  # starts the worker; its first pass pays the page faults
        pass
    waits, images = 0.0, 0
    for batch in loader:
        waits += time.perf_counter() - _sent(batch)
        images += _count(batch)
    return 1000 * waits / images


def _epochs(args: argparse.Namespace, started: float) -> dict[str, float]:
    import psutil

    data, _, collate_fn = _datasets(args)
    loader = _loader(data, collate_fn, args.workers, args.batch_size)
    first = None
    images = 0
    for batch in loader:
        if first is None:
            first = time.time() - started
        images += _count(batch)
    start = time.perf_counter()
    pss = 0
    for i, _ in enumerate(loader):
        if i == len(loader) // 2:
            workers = [c.pid for c in psutil.Process().children(recursive=True)]
            pss = _pss([os.getpid(), *workers])
    steady = time.perf_counter() - start
    return {
        "images": images,
        "first_batch_s": first or 0.0,
        "epoch_s": steady,
        "images_per_s": images / steady,
        "images_per_s_per_worker": images / steady / args.workers,
        "pss_mib": pss / 2**20,
    }


def child(args: argparse.Namespace) -> int:
    """Runs one variant in this (fresh) process and prints one JSON line."""
    import cv2
    import psutil
    import torch

    started = psutil.Process().create_time()
    # One thread each, before any fork: costs per core, and workers inherit it (setting
    # OpenCV's pool in a forked child whose parent used it hangs).
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    row: dict[str, Any] = {"source": args.source, "pipeline": args.pipeline}
    row.update(_epochs(args, started))
    row["stages_ms"] = _stage_pass(args)
    row["stages_ms"]["ipc"] = _ipc(args)
    print(json.dumps(row))
    return 0


def _run(source: str, pipeline: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    subprocess.run(["sync"], check=False)
    command = [
        sys.executable, __file__, str(args.images), str(args.annotations),
        "--child", source, pipeline, "--split", args.split, "--cache", str(cache),
        "--workers", str(args.workers), "--batch-size", str(args.batch_size),
        "--size", str(args.size),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"variant {source}/{pipeline} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _find(rows: list[dict[str, Any]], source: str, pipeline: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["source"] == source and r["pipeline"] == pipeline), None)


def _report(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, float]:
    print(
        f"\n{args.split}: transform size {args.size}, batch {args.batch_size}, "
        f"{args.workers} workers; {_machine()}\n"
    )
    print("| source | pipeline | read | transform | targets | other | total | ipc |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s = r["stages_ms"]
        print(
            f"| {r['source']} | {r['pipeline']} | {s['read']:.3f} | {s['transform']:.3f} | "
            f"{s['targets']:.3f} | {s['other']:.3f} | {s['total']:.3f} | {s['ipc']:.3f} |"
        )
    print(
        "\n| source | pipeline | first batch (s) | steady epoch (s) | images/s "
        "| images/s per worker | PSS (MiB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['source']} | {r['pipeline']} | {r['first_batch_s']:.2f} | {r['epoch_s']:.3f} | "
            f"{r['images_per_s']:.1f} | {r['images_per_s_per_worker']:.1f} | {r['pss_mib']:.0f} |"
        )
    ratios: dict[str, float] = {}
    new, ref = _find(rows, "cache", "new"), _find(rows, "cache", "reference")
    if new and ref:

        def work(row: dict[str, Any]) -> float:
            return sum(row["stages_ms"][k] for k in STAGES)

        ratios["cache_sample_reference_over_new"] = work(ref) / work(new)
        if args.split == "train":
            ratios["targets_reference_over_new"] = (
                ref["stages_ms"]["targets"] / new["stages_ms"]["targets"]
            )
    disk = _find(rows, "disk", "new")
    if new and disk:
        ratios["epoch_disk_over_cache"] = disk["epoch_s"] / new["epoch_s"]
    if ratios:
        print()
        for name, value in ratios.items():
            print(f"{name}: {value:.1f}x")
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", type=Path, help="image folder")
    parser.add_argument("annotations", type=Path, help="annotation JSON of the folder")
    parser.add_argument("--split", choices=("train", "val"), default="val")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=640, help="transform size and cache cap")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the cache")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument("--child", nargs=2, metavar=("SOURCE", "PIPELINE"), help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.source, args.pipeline = args.child
        args.images, args.annotations = str(args.images), str(args.annotations)
        return child(args)
    if not args.images.is_dir() or not args.annotations.is_file():
        print(
            f"error: need an image folder and an annotation file, "
            f"got {args.images} {args.annotations}",
            file=sys.stderr,
        )
        return 2
    from lmdb_cache import build_cache

    tmp = tempfile.TemporaryDirectory(prefix="bench_loader_") if args.scratch is None else None
    scratch = Path(tmp.name) if tmp else args.scratch
    cache = scratch / f"cap{args.size}.lmdb"
    if "cache" in args.sources and not cache.exists():
        build_cache(args.images, cache, max_side=args.size)
    rows = []
    for source in args.sources:
        for pipeline in args.pipelines:
            row = _run(source, pipeline, args, cache)
            rows.append(row)
            s = row["stages_ms"]
            print(
                f"{source:8s} {pipeline:9s} total {s['total']:8.3f} ms/sample  ipc "
                f"{s['ipc']:6.3f}  epoch {row['epoch_s']:7.3f} s  {row['images_per_s']:7.1f} img/s",
                file=sys.stderr,
            )
    ratios = _report(rows, args)
    if args.json is not None:
        doc = {
            "split": args.split,
            "size": args.size,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "machine": _machine(),
            "rows": rows,
            "ratios": ratios,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
