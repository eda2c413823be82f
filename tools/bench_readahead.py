"""Batch read-ahead on a cold store: does telling the kernel about a batch's records first help?

A cold read of a mapped store faults its pages in one at a time, or one read-around window
at a time, each fault waiting for its I/O. Naming every record of a batch first
(``posix_fadvise(WILLNEED)`` on each record's byte range, found with ``pread`` alone by
``format.extents.Tree.value_range``, since py-lmdb's ``get`` reads a value while looking it
up) lets the kernel send that I/O out together. This script measures it: a raw store of the
image folder is evicted from the page cache before each epoch (``tools/bench_cold.evict``),
and a fresh process reads every record once in a seeded random order, in batches of
``--batch``:

* ``readahead``: the environment as a ``CacheReader`` opens it (LMDB's default: the kernel's
  read-around on each fault);
* ``readahead+willneed``: the same, each batch's ranges named first;
* ``nordahead``: ``MDB_NORDAHEAD`` (``readahead=False``, what LMDB advises for a store
  larger than RAM): each fault reads one page;
* ``nordahead+willneed``: the same, each batch's ranges named first.

Reported per epoch: seconds, images/s, the device's bytes and read requests
(``/sys/block/<dev>/stat``) and the mean and peak number of reads in flight on the device,
sampled every millisecond (``/sys/block/<dev>/inflight``). Run it alone.

    python tools/bench_readahead.py ../shared/data/sroie-dev/img --repeat 2 \\
        --json docs/bench_readahead.json

Exit status: 0 done, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lmdb  # noqa: E402

from lmdb_cache.format.extents import Extents  # noqa: E402
from lmdb_cache.format.schema import DB_PIXELS, MAX_DBS  # noqa: E402
from tools.bench_cold import device_reads, evict, find_block_device  # noqa: E402

VARIANTS = ("readahead", "readahead+willneed", "nordahead", "nordahead+willneed")


class _Inflight(threading.Thread):
    """Samples the device's reads in flight every millisecond."""

    def __init__(self, path: Path | None) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while self.path is not None and not self.done.is_set():
            try:
                self.samples.append(int(self.path.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                return
            time.sleep(0.001)


def _child(variant: str, store: Path, seed: int, batch: int) -> dict[str, Any]:
    """One cold epoch in this (fresh) process."""
    data = str(store / "data.mdb")
    ahead = "nordahead" not in variant
    env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=MAX_DBS, readahead=ahead)
    pixels = env.open_db(DB_PIXELS, create=False)
    with env.begin() as txn:
        keys = [bytes(k) for k in txn.cursor(db=pixels).iternext(keys=True, values=False)]
    env.close()
    random.Random(seed).shuffle(keys)
    evict(data)  # with the store unmapped: the kernel keeps the pages a process maps
    env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=MAX_DBS, readahead=ahead)
    pixels = env.open_db(DB_PIXELS, create=False)
    extents = Extents(data)
    tree = extents.tree(env.info()["last_txnid"])
    fd = os.open(data, os.O_RDONLY)
    name, stat_file, _ = find_block_device(data)
    inflight = _Inflight(stat_file.parent / "inflight" if stat_file is not None else None)
    before = device_reads(stat_file)
    inflight.start()
    start = time.perf_counter()
    nbytes = 0
    with env.begin() as txn:
        for at in range(0, len(keys), batch):
            group = keys[at : at + batch]
            if "willneed" in variant and tree is not None:
                for key in group:
                    found = tree.value_range(DB_PIXELS, key)
                    if found is not None:
                        os.posix_fadvise(fd, found[0], found[1], os.POSIX_FADV_WILLNEED)
            for key in group:
                nbytes += len(txn.get(key, db=pixels))
    seconds = time.perf_counter() - start
    inflight.done.set()
    inflight.join()
    after = device_reads(stat_file)
    os.close(fd)
    extents.close()
    env.close()
    samples = inflight.samples or [0]
    return {
        "variant": variant,
        "images": len(keys),
        "seconds": seconds,
        "images_per_s": len(keys) / seconds,
        "pixel_bytes": nbytes,
        "device": name,
        "device_requests": None if before is None or after is None else after[0] - before[0],
        "device_bytes": None if before is None or after is None else after[1] - before[1],
        "inflight_mean": statistics.mean(samples),
        "inflight_max": max(samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "images", type=Path, nargs="?", default=ROOT.parent / "shared/data/sroie-dev/img"
    )
    parser.add_argument("--max-side", type=int, default=640, help="cap of the store (640)")
    parser.add_argument("--batch", type=int, default=8, help="records per batch (8)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of every variant (2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the store")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, store, seed, batch = args.child
        print(json.dumps(_child(variant, Path(store), int(seed), int(batch))))
        return 0
    if not args.images.is_dir():
        parser.error(f"'{args.images}' is not a folder of images")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench_readahead-"))
    store = scratch / f"raw-{args.max_side}.lmdb"
    if not store.exists():
        # In a process of its own: this one must not keep the store mapped (its pages could
        # not be evicted then).
        build = "import sys; from lmdb_cache.cli import build_cache_main as m; m()"
        subprocess.run(
            [sys.executable, "-c", build, str(args.images), "-o", str(store), "-q"]
            + ["--max-side", str(args.max_side)],
            check=True,
        )
    rows = []
    for run in range(args.repeat):
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--child", variant, str(store), str(args.seed + run)]
            out = subprocess.run(
                [*cmd, str(args.batch)], capture_output=True, text=True, check=True
            )
            row = json.loads(out.stdout)
            row["run"] = run + 1
            rows.append(row)
            mb = (row["device_bytes"] or 0) / 1e6
            print(
                f"run {run + 1} {variant:20} {row['seconds']:7.3f} s "
                f"{row['images_per_s']:8.1f} img/s  device {mb:6.1f} MB in "
                f"{row['device_requests']} requests, in flight mean "
                f"{row['inflight_mean']:.2f} max {row['inflight_max']}"
            )
    doc = {
        "command": " ".join(["python", "tools/bench_readahead.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d"),
        "images": rows[0]["images"] if rows else 0,
        "max_side": args.max_side,
        "batch": args.batch,
        "rows": rows,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if args.scratch is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
