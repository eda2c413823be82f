"""A store larger than RAM, once: steady random-order epochs, raw against zstd.

Builds, with ``CacheWriter`` from arrays, a raw store of distinct 640 x 640 tiles cut from the
real receipts (full-size decodes, tiles at shifted offsets, some mirrored: real content, no two
tiles alike) until it holds ``--ratio`` times this machine's RAM (``MemTotal``), and a zstd
store of the same tiles (which fits in RAM). Then, for each store in a fresh process, it reads
every tile once per epoch in a new random order, ``--epochs`` times, and reports per epoch:
images/s, the device's bytes per image and read requests (``/sys/block/<dev>/stat``), and the
page-cache residency of ``data.mdb`` at the epoch's end (``mincore``). ``--raw-variants``
reads the raw store more ways, each in its own fresh process (``reader``: as ``CacheReader``
opens it; ``readahead``, ``nordahead``, ``nordahead+willneed``: the pixels alone, with the
kernel's read-around, without it, and without it but each batch named to the kernel first).
The stores are deleted at the end (``--keep`` keeps them).

This is a benchmark run recorded in docs/benchmarks.md, never a test or a CI step: it writes
about 1.3 x RAM to disk. Run it alone.

    python tools/bench_past_ram.py ../shared/data/sroie-dev/img --scratch /tmp/past_ram \\
        --raw-variants reader,nordahead+willneed --json docs/bench_past_ram_2.json

Exit status: 0 done, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lmdb_cache import CacheReader, CacheWriter  # noqa: E402
from lmdb_cache.format.extents import Extents  # noqa: E402
from lmdb_cache.format.schema import DB_PIXELS, MAX_DBS  # noqa: E402
from lmdb_cache.images import decode_file, scan_images  # noqa: E402
from tools.bench_cold import device_reads, find_block_device, resident_pages  # noqa: E402

TILE = 640


def _ram_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _tiles(images: Path, count: int, seed: int):
    """``count`` distinct TILE x TILE tiles of the receipts: (key, array)."""
    rng = random.Random(seed)
    pages = [decode_file(images / key).pixels for key in scan_images(images)]
    pages = [p for p in pages if p.shape[0] >= TILE and p.shape[1] >= TILE]
    made = 0
    shift = 0
    while made < count:
        for p, page in enumerate(pages):
            h, w = page.shape[:2]
            y = (shift * 97 + rng.randrange(0, 64)) % (h - TILE + 1)
            x = (shift * 61 + rng.randrange(0, 64)) % (w - TILE + 1)
            tile = page[y : y + TILE, x : x + TILE]
            if shift % 2:
                tile = tile[:, ::-1]
            yield f"tile/{shift:05d}/{p:03d}_{y}_{x}.png", np.ascontiguousarray(tile)
            made += 1
            if made >= count:
                return
        shift += 1


def _build(images: Path, out: Path, codec: str, count: int, seed: int) -> float:
    start = time.perf_counter()
    with CacheWriter(out, codec=codec) as writer:
        for key, tile in _tiles(images, count, seed):
            writer.add(key, image=tile)
    return time.perf_counter() - start


BATCH = 32
VARIANTS = ("reader", "reader-nordahead", "readahead", "nordahead", "nordahead+willneed")


def _epochs(store: Path, epochs: int, seed: int, variant: str = "reader") -> list[dict[str, Any]]:
    """In this (fresh) process: ``epochs`` random-order passes over every record.

    ``reader``: ``CacheReader`` as it opens a store (the kernel's read-around on each fault);
    ``reader-nordahead``: ``CacheReader(readahead=False)``, each batch given to ``prefetch``
    first (what ``CacheDataset(readahead=False)`` does).
    The others read the pixels' bytes alone (no metadata, no checks) from a plain environment:
    ``readahead`` as LMDB opens it by default (read-around), ``nordahead`` with
    ``MDB_NORDAHEAD``, ``nordahead+willneed`` with each batch of ``BATCH`` records named to the
    kernel first (``posix_fadvise(WILLNEED)`` on each record's byte range,
    ``Tree.value_range``).
    """
    data = store / "data.mdb"
    _, stat_file, _ = find_block_device(data)
    out = []
    if variant.startswith("reader"):
        reader = CacheReader(store, readahead=variant == "reader")
        keys: list[Any] = list(reader.keys())

        def read(group: list[Any]) -> None:
            if not reader.readahead:
                reader.prefetch(group)
            for key in group:
                reader[key]

        close = reader.close
    else:
        ahead = variant == "readahead"
        env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=MAX_DBS, readahead=ahead)
        pixels = env.open_db(DB_PIXELS, create=False)
        with env.begin() as txn:
            keys = [bytes(k) for k in txn.cursor(db=pixels).iternext(keys=True, values=False)]
        extents = Extents(str(data))
        tree = extents.tree(env.info()["last_txnid"])
        fd = os.open(data, os.O_RDONLY)

        def read(group: list[Any]) -> None:
            for key in group if variant.endswith("willneed") else ():
                found = tree.value_range(DB_PIXELS, key) if tree is not None else None
                if found is not None:
                    os.posix_fadvise(fd, found[0], found[1], os.POSIX_FADV_WILLNEED)
            with env.begin() as txn:
                for key in group:
                    txn.get(key, db=pixels)  # a copy out of the map, as reader[key]

        def close() -> None:
            os.close(fd)
            extents.close()
            env.close()

    for epoch in range(epochs):
        random.Random(seed + epoch).shuffle(keys)
        before = device_reads(stat_file)
        start = time.perf_counter()
        for at in range(0, len(keys), BATCH):
            read(keys[at : at + BATCH])
        seconds = time.perf_counter() - start
        after = device_reads(stat_file)
        resident = resident_pages(data)
        out.append(
            {
                "variant": variant,
                "epoch": epoch + 1,
                "seconds": seconds,
                "images_per_s": len(keys) / seconds,
                "device_bytes_per_image": None
                if before is None or after is None
                else (after[1] - before[1]) / len(keys),
                "device_requests_per_image": None
                if before is None or after is None
                else (after[0] - before[0]) / len(keys),
                "resident_fraction": None if resident is None else resident[0] / resident[1],
            }
        )
    close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, help="receipt images to cut tiles from")
    parser.add_argument("--scratch", type=Path, required=True, help="folder for the stores")
    parser.add_argument("--ratio", type=float, default=1.3, help="raw store size / RAM (1.3)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per store (2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--raw-variants",
        default="reader",
        help=f"how to read the raw store, comma-separated from {', '.join(VARIANTS)} (reader)",
    )
    parser.add_argument(
        "--stores", default="raw,zstd", help="which stores to build and read (raw,zstd)"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child = args.child
        print(json.dumps(_epochs(Path(child[0]), int(child[1]), args.seed, child[2])))
        return 0
    if not args.images.is_dir():
        parser.error(f"'{args.images}' is not a folder of images")
    raw_variants = args.raw_variants.split(",")
    if not set(raw_variants) <= set(VARIANTS):
        parser.error(f"--raw-variants: choose from {', '.join(VARIANTS)}")
    ram = _ram_bytes()
    count = int(args.ratio * ram / (TILE * TILE * 3)) + 1
    args.scratch.mkdir(parents=True, exist_ok=True)
    stores = {
        codec: args.scratch / f"{codec}.lmdb"
        for codec in ("raw", "zstd")
        if codec in args.stores.split(",")
    }
    doc: dict[str, Any] = {
        "command": " ".join(["python", "tools/bench_past_ram.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d"),
        "ram_bytes": ram,
        "tiles": count,
        "stores": {},
    }
    try:
        for codec, store in stores.items():
            shutil.rmtree(store, ignore_errors=True)
            print(f"building {codec} store of {count} tiles...", flush=True)
            build_s = _build(args.images, store, codec, count, args.seed)
            size = os.path.getsize(store / "data.mdb")
            print(f"  {size / 1e9:.1f} GB ({size / ram:.2f} x RAM) in {build_s:.0f} s", flush=True)
            epochs = []
            for variant in raw_variants if codec == "raw" else ["reader"]:
                cmd = [sys.executable, __file__, str(args.images), "--scratch", str(args.scratch)]
                cmd += ["--seed", str(args.seed), "--child", str(store), str(args.epochs), variant]
                rows = json.loads(
                    subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                )
                for row in rows:
                    mb = (row["device_bytes_per_image"] or 0) / 1e6
                    print(
                        f"  {variant}, epoch {row['epoch']}: {row['images_per_s']:.0f} img/s, "
                        f"{mb:.2f} MB and {row['device_requests_per_image']:.1f} requests from "
                        f"the device per image, {100 * (row['resident_fraction'] or 0):.0f}% "
                        "resident"
                    )
                epochs += rows
            doc["stores"][codec] = {"data_bytes": size, "build_s": build_s, "epochs": epochs}
            if not args.keep:
                shutil.rmtree(store, ignore_errors=True)
    finally:
        if not args.keep:
            for store in stores.values():
                shutil.rmtree(store, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
