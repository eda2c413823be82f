"""Private memory that grows with the store: a million small records, two source trees.

Builds (once, in a separate process whose peak memory it reports) a store of ``--records``
distinct 8 x 8 images written with ``CacheWriter``, then runs in a fresh process for each
tree (``--tree NAME=PATH``, the package imported from PATH; this checkout by default):

- ``epoch``: ``CacheDataset`` over every key, a ``DataLoader`` with ``--workers`` fork workers
  and shuffled batches of 256, one epoch. A thread samples every 0.5 s the memory of the main
  process and of each worker from ``/proc/PID/smaps_rollup``: USS (private clean + dirty),
  PSS, RSS and the private dirty part of USS (memory the process wrote: what a file-backed
  page that only it maps, counted in USS too, is not). It reports the main process after the
  imports, after the dataset is made and at its peak, and each worker's first sample and peak
  (growth = peak USS - first USS).
- ``access`` (``--access``): random reads by position (``reader.record_at``) and by key
  (``reader[key]``) in one process, the first call apart (that is where a key list is made),
  per read after it. The trees alternate, ``--rounds`` times, each in a fresh process.

Run it alone (2 cores: anything beside it moves the timings)::

    python tools/bench_memory.py --store /tmp/mem.lmdb --tree before=/tmp/tree-before \\
        --tree after=. --access --json docs/bench_memory.json

Exit status: 0 done, 2 usage error.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BATCH = 256


def smaps(pid: int) -> dict[str, int] | None:
    """USS, PSS and RSS of ``pid`` in bytes (``/proc/PID/smaps_rollup``), None once it is gone."""
    fields: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            fields[name] = int(parts[0]) * 1024
    return {
        "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        "private_dirty": fields.get("Private_Dirty", 0),
        "anonymous": fields.get("Anonymous", 0),
        "pss": fields.get("Pss", 0),
        "rss": fields.get("Rss", 0),
    }


def peak_hwm() -> int:
    """This process's peak resident memory (``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# --- the children --------------------------------------------------------------------------


def _status(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return 0


def build(store: str, records: int) -> dict[str, Any]:
    """Write ``records`` distinct 8 x 8 images; the writer's peak memory and time. The peak
    (``VmHWM``) counts the store's own pages the writer maps; the samples of ``RssAnon`` and
    ``RssFile`` every 0.1 s tell its memory from those."""
    import numpy as np

    from lmdb_cache import CacheWriter

    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            for name in peaks:
                peaks[name] = max(peaks[name], _status(name))

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    with CacheWriter(store) as writer:
        for i in range(records):
            image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            writer.add(f"train/{i // 1000:04d}/img_{i:07d}.png", image=image)
    done.set()
    return {
        "records": records,
        "seconds": time.perf_counter() - start,
        "peak_bytes": peak_hwm(),
        "peak_anonymous": peaks["RssAnon"],
        "peak_file": peaks["RssFile"],
    }


class _Sampler(threading.Thread):
    """Samples the main process and the loader's workers every ``interval`` seconds."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.pids: list[int] = []
        self.first: dict[int, dict[str, int]] = {}
        self.peak: dict[int, dict[str, int]] = {}
        self.main_peak: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def sample(self) -> None:
        now = smaps(os.getpid())
        if now is not None:
            self.main_peak = _higher(self.main_peak, now)
        for pid in list(self.pids):
            seen = smaps(pid)
            if seen is None:
                continue
            self.first.setdefault(pid, seen)
            self.peak[pid] = _higher(self.peak.get(pid, {}), seen)


def _higher(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: max(a.get(k, 0), v) for k, v in b.items()}


def epoch(store: str, workers: int, freeze: bool = False) -> dict[str, Any]:
    """One shuffled epoch of ``CacheDataset`` with ``workers`` fork workers; ``freeze``: move
    every object of the main process out of the garbage collector's reach before the workers
    fork (``gc.freeze``), so that their collections do not write to the pages they share."""
    import torch
    from torch.utils.data import DataLoader

    from lmdb_cache.torch import CacheDataset, collate

    torch.set_num_threads(1)
    after_imports = smaps(os.getpid())
    start = time.perf_counter()
    dataset = CacheDataset(store)
    made_s = time.perf_counter() - start
    after_dataset = smaps(os.getpid())
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate,
        multiprocessing_context="fork",
        generator=torch.Generator().manual_seed(0),
    )
    sampler = _Sampler()
    sampler.start()
    images = 0
    start = time.perf_counter()
    if freeze:
        gc.freeze()
    iterator = iter(loader)
    sampler.pids = [w.pid for w in iterator._workers]  # type: ignore[attr-defined]
    sampler.sample()  # each worker's first sample: as forked, before it has read anything
    for batch, _metas, _extras in iterator:
        images += len(batch)
    sampler.sample()
    epoch_s = time.perf_counter() - start
    sampler.stop.set()
    del iterator
    worker_rows = [
        {"first": sampler.first[pid], "peak": sampler.peak[pid]}
        for pid in sampler.pids
        if pid in sampler.first
    ]
    return {
        "images": images,
        "dataset_seconds": made_s,
        "epoch_seconds": epoch_s,
        "main_after_imports": after_imports,
        "main_after_dataset": after_dataset,
        "main_peak": sampler.main_peak,
        "workers": worker_rows,
    }


def access(store: str, reads: int, seed: int) -> dict[str, Any]:
    """Random reads by position and by key: the first call, then the mean per read."""
    from lmdb_cache import open_cache

    out: dict[str, Any] = {}
    with open_cache(store) as reader:
        n = len(reader)
        rng = random.Random(seed)
        positions = [rng.randrange(n) for _ in range(reads)]
        start = time.perf_counter()
        reader.record_at(positions[0])
        out["position_first_s"] = time.perf_counter() - start
        start = time.perf_counter()
        for i in positions:
            reader.record_at(i)
        out["position_us"] = (time.perf_counter() - start) / reads * 1e6
        keys = [reader.key_at(i) for i in positions]
    with open_cache(store) as reader:
        start = time.perf_counter()
        reader[keys[-1]]
        out["key_first_s"] = time.perf_counter() - start
        rng.shuffle(keys)
        start = time.perf_counter()
        for key in keys:
            reader[key]
        out["key_us"] = (time.perf_counter() - start) / reads * 1e6
        out["rss_after"] = smaps(os.getpid())
    return out


# --- the parent ----------------------------------------------------------------------------


def _child(tree: Path, *args: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"child {args[0]} under {tree} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f}"


def _print_epoch(name: str, row: dict[str, Any]) -> None:
    growth = [w["peak"]["uss"] - w["first"]["uss"] for w in row["workers"]]
    dirty = [w["peak"]["private_dirty"] - w["first"]["private_dirty"] for w in row["workers"]]
    print(
        f"{name:>8}: main RSS {_mb(row['main_after_imports']['rss'])} MB after imports, "
        f"{_mb(row['main_after_dataset']['rss'])} MB with the dataset "
        f"({row['dataset_seconds']:.2f} s), peak {_mb(row['main_peak']['rss'])} MB "
        f"(USS {_mb(row['main_peak']['uss'])}, PSS {_mb(row['main_peak']['pss'])}); workers' "
        f"USS growth {', '.join(_mb(g) for g in growth)} MB (private dirty "
        f"{', '.join(_mb(g) for g in dirty)}), peak PSS "
        f"{', '.join(_mb(w['peak']['pss']) for w in row['workers'])} MB; "
        f"epoch {row['epoch_seconds']:.1f} s for {row['images']:,} images"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="the store (made if absent)")
    parser.add_argument("--records", type=int, default=1_000_000, help="records (1,000,000)")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a source tree to run (repeat; default: this checkout as 'this')",
    )
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (4)")
    parser.add_argument("--access", action="store_true", help="also time random access")
    parser.add_argument(
        "--freeze", action="store_true", help="also an epoch with gc.freeze() before the fork"
    )
    parser.add_argument("--reads", type=int, default=20000, help="reads per access run")
    parser.add_argument("--rounds", type=int, default=3, help="access alternations (3)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "build":  # also under another tree: --child build PATH RECORDS
            result = build(rest[0], int(rest[1]))
        elif kind == "epoch":
            result = epoch(rest[0], int(rest[1]), rest[2:] == ["freeze"])
        else:
            result = access(rest[0], int(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return 0
    if args.store is None:
        parser.error("--store is required")
    trees: dict[str, Path] = {}
    for spec in args.tree or [f"this={ROOT}"]:
        name, sep, path = spec.partition("=")
        if not sep or not (Path(path) / "lmdb_cache").is_dir():
            parser.error(f"--tree {spec!r}: expected NAME=PATH of a checkout holding lmdb_cache/")
        trees[name] = Path(path)
    report: dict[str, Any] = {"machine": os.uname().nodename, "cpus": os.cpu_count()}
    store = str(args.store)
    newest = list(trees.values())[-1]
    if not args.store.exists():
        report["build"] = _child(newest, "build", store, str(args.records))
        b = report["build"]
        print(
            f"built {b['records']:,} records in {b['seconds']:.0f} s, writer peak "
            f"{_mb(b['peak_bytes'])} MB (VmHWM; sampled peaks: anonymous "
            f"{_mb(b['peak_anonymous'])} MB, the store's mapped pages {_mb(b['peak_file'])} MB)"
        )
    report["epoch"] = {}
    for name, tree in trees.items():
        row = _child(tree, "epoch", store, str(args.workers))
        report["epoch"][name] = row
        _print_epoch(name, row)
        if args.freeze:
            row = _child(tree, "epoch", store, str(args.workers), "freeze")
            report["epoch"][name + "+freeze"] = row
            _print_epoch(name + "+freeze", row)
    if args.access:
        report["access"] = {name: [] for name in trees}
        for r in range(args.rounds):
            for name, tree in trees.items():
                row = _child(tree, "access", store, str(args.reads), str(r))
                report["access"][name].append(row)
                print(
                    f"{name:>8}: by position first {row['position_first_s'] * 1e3:.1f} ms then "
                    f"{row['position_us']:.1f} us/read; by key first "
                    f"{row['key_first_s'] * 1e3:.1f} ms then {row['key_us']:.1f} us/read; RSS "
                    f"{_mb(row['rss_after']['rss'])} MB"
                )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
