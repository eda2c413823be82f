"""This cache side by side with the stores a user would pick instead, on one folder and cap.

Variants (each measured in its own fresh process; a peer that is not installed is skipped
with the reason):

* ``pillow``: Pillow decode + EXIF + RGB + cap from the JPEG files (no store);
* ``simplejpeg``: libjpeg-turbo through simplejpeg, then the same orientation and cap
  (counted as identical only where every pixel equals Pillow's);
* ``jpeg-lmdb``: the JPEG bytes in LMDB, decoded with Pillow on every read (how OCR toolkits
  store images);
* ``litdata-raw`` / ``litdata-zstd``: LitData ``optimize`` of the decoded, capped arrays
  (no compression / zstd), random access by position (LitData has no access by key; it
  decompresses a zstd chunk whole on first access and keeps it, so its first pass is
  reported too);
* ``cache-raw`` / ``cache-zstd``: this project's store.

Per variant: build time, store size, time to the first image from process start (imports
included), the first random pass over every image, a random-access owned read (median of 3
timed passes after that first one), a
2-worker DataLoader epoch (the second, workers kept), and how many images equal Pillow's
pixels. The peers are an optional install that must not replace the CPU torch::

    pip install --no-deps litdata && pip install lightning-utilities filelock boto3 requests \\
        tifffile obstore simplejpeg
    python tools/bench_peers.py ../shared/data/sroie-dev/img --json docs/bench_peers.json
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
import time
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = (
    "pillow",
    "simplejpeg",
    "jpeg-lmdb",
    "litdata-raw",
    "litdata-zstd",
    "cache-raw",
    "cache-zstd",
)
_NEEDS = {"simplejpeg": "simplejpeg", "litdata-raw": "litdata", "litdata-zstd": "litdata"}


def _folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _keys(images: Path) -> list[str]:
    return sorted(p.name for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``ImageOps.exif_transpose`` on an array (the eight EXIF cases)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: a.transpose(1, 0, 2)[::-1],
    }
    return np.ascontiguousarray(ops[orientation](pixels)) if orientation in ops else pixels


def _litdata_item(job: tuple[str, str, int | None]) -> dict[str, Any]:
    from lmdb_cache import decode_file

    folder, key, cap = job
    return {"key": key, "image": decode_file(os.path.join(folder, key), max_side=cap).pixels}


def build(variant: str, images: Path, out: Path, cap: int | None) -> None:
    """Make the variant's store at ``out`` (nothing for the decoders)."""
    keys = _keys(images)
    if variant.startswith("cache-"):
        from lmdb_cache import build_cache

        build_cache(images, out, max_side=cap, codec=variant.split("-")[1])
    elif variant == "jpeg-lmdb":
        import lmdb

        out.mkdir(parents=True)
        env = lmdb.open(str(out), map_size=4 * _folder_bytes(images) + (64 << 20))
        with env.begin(write=True) as txn:
            for key in keys:
                txn.put(key.encode(), (images / key).read_bytes())
        env.close()
    elif variant.startswith("litdata-"):
        from litdata import optimize

        optimize(
            fn=_litdata_item,
            inputs=[(str(images), key, cap) for key in keys],
            output_dir=str(out),
            chunk_bytes="64MB",
            compression=None if variant == "litdata-raw" else "zstd",
            num_workers=1,
        )


class _Reader:
    """One variant's random access: ``read(i)`` returns image ``i`` as an owned array."""

    def __init__(self, variant: str, images: Path, out: Path, cap: int | None) -> None:
        self.variant, self.images, self.out, self.cap = variant, images, out, cap
        self.keys = _keys(images)
        self._handle: Any = None

    def _open(self) -> Any:
        if self._handle is not None:
            return self._handle
        if self.variant.startswith("cache-"):
            from lmdb_cache import open_cache

            self._handle = open_cache(self.out)
        elif self.variant == "jpeg-lmdb":
            import lmdb

            self._handle = lmdb.open(str(self.out), readonly=True, lock=False)
        elif self.variant.startswith("litdata-"):
            from litdata import StreamingDataset

            self._handle = StreamingDataset(str(self.out))
            # Position -> key, since LitData's order is its own.
            self.keys = [self._handle[i]["key"] for i in range(len(self._handle))]
        else:
            self._handle = True
        return self._handle

    def __len__(self) -> int:
        return len(self.keys)

    def close(self) -> None:
        """Close the store before DataLoader workers fork (py-lmdb refuses an environment
        inherited across fork)."""
        if self._handle is not None and hasattr(self._handle, "close"):
            self._handle.close()
        self._handle = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None}

    def read(self, i: int) -> np.ndarray:
        handle = self._open()
        key = self.keys[i]
        if self.variant.startswith("cache-"):
            return handle[key].image
        if self.variant == "jpeg-lmdb":
            from lmdb_cache.images import decode_bytes

            with handle.begin() as txn:
                data = txn.get(key.encode())
            return decode_bytes(data, key, max_side=self.cap).pixels
        if self.variant.startswith("litdata-"):
            return np.array(handle[i]["image"])
        if self.variant == "simplejpeg":
            import simplejpeg
            from PIL import Image

            from lmdb_cache.images import cap_pixels

            path = self.images / key
            pixels = simplejpeg.decode_jpeg(path.read_bytes(), colorspace="RGB")
            with Image.open(path) as im:
                orientation = int(im.getexif().get(0x0112, 1) or 1)
            return cap_pixels(_orient(pixels, orientation), self.cap, "bilinear")
        from lmdb_cache import decode_file

        return decode_file(self.images / key, max_side=self.cap).pixels

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read(i)


def child(args: argparse.Namespace) -> int:
    import psutil
    import torch
    from torch.utils.data import DataLoader

    from lmdb_cache import decode_file

    started = psutil.Process().create_time()
    torch.set_num_threads(1)
    reader = _Reader(args.variant, args.images, args.out, args.cap)
    reader.read(0)
    first = time.time() - started
    order = list(range(len(reader)))
    random.Random(0).shuffle(order)
    start = time.perf_counter()
    for i in order:  # the first pass: page faults, per-process state, LitData's chunk cache
        reader.read(i)
    first_pass = 1000 * (time.perf_counter() - start) / len(order)
    passes = []
    for _ in range(3):
        start = time.perf_counter()
        for i in order:
            reader.read(i)
        passes.append(1000 * (time.perf_counter() - start) / len(order))
    identical = sum(
        np.array_equal(
            reader.read(i), decode_file(args.images / reader.keys[i], max_side=args.cap).pixels
        )
        for i in range(len(reader))
    )
    reader.close()
    loader = DataLoader(
        _Reader(args.variant, args.images, args.out, args.cap),
        batch_size=1,
        num_workers=2,
        collate_fn=list,
        persistent_workers=True,
    )
    for _ in loader:
        pass
    start = time.perf_counter()
    for _ in loader:
        pass
    epoch = time.perf_counter() - start
    print(json.dumps({
        "first_image_s": first, "first_pass_ms": first_pass, "read_ms": statistics.median(passes),
        "read_ms_range": [min(passes), max(passes)], "epoch_s": epoch,
        "identical": identical, "images": len(reader),
    }))  # fmt: skip
    return 0


def write_plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """An SVG scatter: store size (MB) against owned read time (ms, log scale)."""
    import math

    points = [r for r in rows if "skipped" not in r]
    width, height, left, bottom, top, right = 640, 400, 70, 50, 30, 150
    xs = [math.log10(max(r["read_ms"], 1e-3)) for r in points]
    x0, x1 = math.floor(min(xs)), math.ceil(max(xs))
    y1 = max(r["store_bytes"] for r in points) / 1e6 * 1.15

    def px(value: float) -> float:
        return left + (value - x0) / max(x1 - x0, 1) * (width - left - right)

    def py(mb: float) -> float:
        return height - bottom - mb / y1 * (height - bottom - top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="{left}" y="18" font-size="14">{title}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        'stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
        f'<text x="{(left + width - right) / 2 - 80}" y="{height - 12}">owned random read, ms '
        "(log scale)</text>",
        f'<text x="14" y="{(top + height - bottom) / 2}" transform="rotate(-90 14 '
        f'{(top + height - bottom) / 2})">store size, MB</text>',
    ]
    for decade in range(x0, x1 + 1):
        x = px(decade)
        parts.append(
            f'<line x1="{x}" y1="{height - bottom}" x2="{x}" y2="{height - bottom + 5}" '
            'stroke="black"/>'
        )
        parts.append(f'<text x="{x - 12}" y="{height - bottom + 18}">{10.0**decade:g}</text>')
    placed: list[tuple[float, float]] = []
    for r, lx in zip(points, xs, strict=True):
        x, y = px(lx), py(r["store_bytes"] / 1e6)
        shift = 14 * sum(abs(x - u) < 40 and abs(y - v) < 12 for u, v in placed)
        placed.append((x, y))
        ours = r["variant"].startswith("cache-")
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{"#c0392b" if ours else "#34495e"}"/>'
        )
        parts.append(f'<text x="{x + 8:.1f}" y="{y + 4 + shift:.1f}">{r["variant"]}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def _available(variant: str) -> str | None:
    module = _NEEDS.get(variant)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError:
        return f"{module} is not installed"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", type=Path, help="folder of JPEG images")
    parser.add_argument("--max-side", default="640", help="cap, or 'none' (640)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="write an SVG: size vs read time")
    parser.add_argument("--child", choices=VARIANTS, dest="variant", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cap = None if str(args.max_side).lower() == "none" else int(args.max_side)
    if args.variant:
        return child(args)
    if not args.images.is_dir() or not _keys(args.images):
        print(f"error: {args.images} holds no JPEG images", file=sys.stderr)
        return 2
    tmp = tempfile.TemporaryDirectory(prefix="bench_peers_") if args.scratch is None else None
    scratch = Path(tmp.name) if tmp else args.scratch
    scratch.mkdir(parents=True, exist_ok=True)
    rows = []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for variant in args.variants:
        missing = _available(variant)
        if missing:
            print(f"{variant:13s} skipped: {missing}", file=sys.stderr)
            rows.append({"variant": variant, "skipped": missing})
            continue
        out = scratch / variant
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        build(variant, args.images, out, args.cap)
        built = time.perf_counter() - start
        jpegs = sum((args.images / k).stat().st_size for k in _keys(args.images))
        size = _folder_bytes(out) if out.exists() else jpegs
        subprocess.run(["sync"], check=False)
        cmd = [sys.executable, __file__, str(args.images), "--max-side", str(args.max_side)]
        cmd += ["--child", variant, "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{proc.stderr[-3000:]}")
        row = {"variant": variant, "build_s": built, "store_bytes": size}
        row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        rows.append(row)
        print(
            f"{variant:13s} build {built:6.1f} s  {size / 1e6:8.1f} MB  "
            f"first {row['first_image_s']:5.2f} s  read {row['read_ms']:8.3f} ms  "
            f"epoch {row['epoch_s']:6.2f} s  "
            f"identical {row['identical']}/{row['images']}",
            file=sys.stderr,
        )
    print(
        "\n| variant | build (s) | store (MB) | first image (s) | first pass (ms) "
        "| owned read (ms) | 2-worker epoch (s) | = Pillow |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['variant']} | skipped: {r['skipped']} | | | | | | |")
            continue
        print(
            f"| {r['variant']} | {r['build_s']:.1f} | {r['store_bytes'] / 1e6:.1f} | "
            f"{r['first_image_s']:.2f} | {r['first_pass_ms']:.3f} | {r['read_ms']:.3f} | "
            f"{r['epoch_s']:.2f} | "
            f"{r['identical']}/{r['images']} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"max_side": args.cap, "rows": rows}, indent=2) + "\n")
    if args.plot is not None:
        cap = f"--max-side {args.cap}" if args.cap else "full size"
        write_plot(rows, args.plot, f"{args.images.name}, {cap}: size vs read time")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
