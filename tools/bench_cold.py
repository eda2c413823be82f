"""Cold and warm reads: a raw store, a zstd store and the JPEG folder, from an emptied page cache.

Every other benchmark here reads from a warm page cache. This one asks what an epoch costs
when the bytes are not in memory yet: the first epoch after a reboot, a store larger than RAM,
or a fresh cloud machine. For each variant it:

1. empties the page cache of the variant's files: ``fsync``, then
   ``posix_fadvise(POSIX_FADV_DONTNEED)`` on the store's ``data.mdb`` (raw, zstd) or on every
   JPEG file (jpeg), and checks with ``mincore`` which fraction of their pages is resident
   before and after (a file system may ignore the advice: tmpfs keeps files in memory, so a
   "cold" epoch there is warm; the output says so);
2. in a fresh process, reads every image once in a random order (``--seed``): the cold epoch;
   then once more in another order: the warm epoch. A store read is ``reader[key]`` (an owned
   array; zstd decompresses), a jpeg read is ``decode_file(path, max_side, "bilinear")``, what
   the OCR dataset does when it reads from disk. Each read is timed;
3. reads the block device's counters (``/sys/dev/block/MAJ:MIN/stat``: reads completed and
   sectors read, of the whole disk when the file lies on a partition) and the process's
   ``/proc/self/io`` ``read_bytes`` around each epoch. The device counters are machine-wide:
   another program reading from the same disk inflates them (a note says when they disagree
   with the process's own count);
4. turns the device's bytes and read requests of each epoch into the epoch's I/O time on three
   device classes, as a lower bound that ignores queue depth and the CPU time of the reads:

       t = max(bytes / bandwidth, requests / IOPS)

   local NVMe 3 GB/s and 500k IOPS, cloud block SSD 250 MB/s and 3k IOPS, network file
   system 100 MB/s and 1k IOPS. The measured cold time is only right for this machine's
   disk; a VM's virtual disk is often backed by the host's page cache, so its "cold" reads
   are far faster than a real device's, hence the derived figures. The request count is this
   kernel's (merged requests, capped by the device's readahead and request size).

The stores are built (``build_cache``, ``--max-side`` 640 by default) in a scratch folder
(``--scratch``, a temporary folder by default) that is removed at the end unless ``--keep``;
a kept folder is brought up to date, not rebuilt, on the next run. The stores are measured on
the scratch folder's disk, the JPEG files on the image folder's disk.

    python tools/bench_cold.py --json docs/bench_cold.json --repeat 2
    python tools/bench_cold.py --images data/val --limit 4 --variants raw jpeg   # a smoke run

Exit status: 0 measured, 1 a measurement failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import mmap
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

DEFAULT_IMAGES = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sroie-dev" / "img"
)
VARIANTS = ("raw", "zstd", "jpeg")
SECTOR_BYTES = 512  # /sys/block/*/stat counts 512-byte sectors whatever the device's block size
EVICTED_MAX = 0.01  # resident fraction after eviction above which the epoch is not cold

# name -> (bytes per second, read requests per second)
DEVICE_CLASSES: dict[str, tuple[float, float]] = {
    "local NVMe": (3e9, 500_000),
    "cloud block SSD": (250e6, 3_000),
    "network filesystem": (100e6, 1_000),
}
FORMULA = "t = max(bytes / bandwidth, requests / IOPS)"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the page cache ------------------------------------------------------------------------


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    c_void_p, c_size_t, c_int = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    libc.mmap.restype = c_void_p
    libc.mmap.argtypes = [c_void_p, c_size_t, c_int, c_int, c_int, ctypes.c_long]
    libc.munmap.argtypes = [c_void_p, c_size_t]
    libc.mincore.argtypes = [c_void_p, c_size_t, c_void_p]
    return libc


def resident_pages(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(resident, total)`` pages of a file in the page cache, from ``mincore``.

    The file is mapped read-only and never touched, so asking changes nothing.

    Returns:
        The counts, or None when ``mincore`` would not tell the truth: since Linux 5.0 it
        reports every page of a file the caller neither owns nor may write as resident.

    Raises:
        OSError: the file cannot be opened or mapped.
    """
    st = os.stat(path)
    if st.st_uid != os.geteuid() and os.geteuid() != 0 and not os.access(path, os.W_OK):
        return None
    page = mmap.PAGESIZE
    total = -(-st.st_size // page)
    if total == 0:
        return 0, 0
    libc = _libc()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        addr = libc.mmap(None, st.st_size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of '{path}' failed: {os.strerror(err)}")
    finally:
        os.close(fd)
    try:
        vec = (ctypes.c_ubyte * total)()
        if libc.mincore(addr, st.st_size, vec) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mincore of '{path}' failed: {os.strerror(err)}")
    finally:
        libc.munmap(addr, st.st_size)
    return sum(v & 1 for v in vec), total


def resident_fraction(paths: list[Path]) -> float | None:
    """The fraction of the files' pages in the page cache (None: mincore cannot tell)."""
    resident = total = 0
    for path in paths:
        counts = resident_pages(path)
        if counts is None:
            return None
        resident, total = resident + counts[0], total + counts[1]
    return resident / total if total else None


def evict(path: str | os.PathLike[str]) -> None:
    """Ask the kernel to drop a file's pages from the page cache.

    ``fsync`` first: dirty pages are not dropped. Pages mapped by a live process are not
    dropped either, and some file systems (tmpfs) ignore the advice: check with
    :func:`resident_fraction`.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --- the block device ----------------------------------------------------------------------


def find_block_device(path: str | os.PathLike[str]) -> tuple[str | None, Path | None, str]:
    """The disk holding ``path``: ``(name, its stat file, note)``.

    A partition's counters are taken from its parent disk. Where there is no stat file to
    read, name or file is None and the note says why.
    """
    dev = os.stat(path).st_dev
    major, minor = os.major(dev), os.minor(dev)
    if major == 0:
        reason = "tmpfs, overlayfs, NFS or a btrfs subvolume: no device counters"
        return None, None, f"device {major}:{minor} is not a block device ({reason})"
    link = Path(f"/sys/dev/block/{major}:{minor}")
    try:
        node = link.resolve(strict=True)
    except OSError as e:
        return None, None, f"{link} is not readable ({e.strerror}): no device counters"
    disk = node.parent if (node / "partition").exists() else node
    stat_file = disk / "stat"
    try:
        stat_file.read_text()
    except OSError as e:
        return disk.name, None, f"{stat_file} is not readable ({e.strerror}): no counters"
    note = (
        f"{node.name} is a partition: counters of the whole disk {disk.name}"
        if disk != node
        else ""
    )
    return disk.name, stat_file, note


def device_reads(stat_file: Path | None) -> tuple[int, int] | None:
    """``(read requests completed, bytes read)`` so far, from a block device's stat file
    (fields 1 and 3 of the kernel's Documentation/block/stat.rst), or None."""
    if stat_file is None:
        return None
    try:
        fields = stat_file.read_text().split()
        return int(fields[0]), int(fields[2]) * SECTOR_BYTES
    except (OSError, IndexError, ValueError):
        return None


def process_read_bytes() -> int | None:
    """Bytes this process has caused to be fetched from storage (``/proc/self/io``), or None."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


# --- the model -----------------------------------------------------------------------------


def derived_seconds(nbytes: int | None, requests: int | None) -> dict[str, float | None]:
    """The I/O time of ``nbytes`` in ``requests`` on each of :data:`DEVICE_CLASSES`:
    ``max(bytes / bandwidth, requests / IOPS)``, a lower bound (no queueing, no CPU); None
    where a count is unknown."""
    return {
        name: None if nbytes is None or requests is None else max(nbytes / bw, requests / iops)
        for name, (bw, iops) in DEVICE_CLASSES.items()
    }


def _delta(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before


def _field(counters: tuple[int, int] | None, index: int) -> int | None:
    return None if counters is None else counters[index]


class _Mark(NamedTuple):
    """The clock and the read counters at one instant."""

    seconds: float
    device: tuple[int, int] | None
    process: int | None


def _mark(stat_file: Path | None) -> _Mark:
    return _Mark(time.perf_counter(), device_reads(stat_file), process_read_bytes())


def _epoch_figures(begin: _Mark, end: _Mark, per_read: list[float]) -> dict[str, Any]:
    """One epoch's figures from the marks around it and the time of each read."""
    n = len(per_read)
    ordered = sorted(per_read)
    seconds = end.seconds - begin.seconds
    requests = _delta(_field(end.device, 0), _field(begin.device, 0))
    nbytes = _delta(_field(end.device, 1), _field(begin.device, 1))
    return {
        "images": n,
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else None,
        "median_ms": statistics.median(ordered) * 1e3,
        "p90_ms": ordered[math.ceil(0.9 * n) - 1] * 1e3,  # nearest rank
        "max_ms": ordered[-1] * 1e3,
        "device_read_bytes": nbytes,
        "device_read_requests": requests,
        "process_read_bytes": _delta(end.process, begin.process),
        "bytes_per_image": None if nbytes is None else nbytes / n,
        "requests_per_image": None if requests is None else requests / n,
        "derived_seconds": derived_seconds(nbytes, requests),
    }


# --- one variant, in a fresh process -------------------------------------------------------


def _timed_reads(read: Callable[[str], object], keys: list[str]) -> list[float]:
    per_read = []
    for key in keys:
        start = time.perf_counter()
        read(key)
        per_read.append(time.perf_counter() - start)
    return per_read


def _opener(variant: str, target: Path, max_side: int) -> Callable[[str], object]:
    """Open the variant's source; returns a function that reads one image by key."""
    from lmdb_cache import CacheReader, decode_file

    if variant != "jpeg":
        return CacheReader(target).__getitem__

    def decode(key: str) -> object:
        return decode_file(target / key, max_side=max_side, resample="bilinear")

    return decode


def _child(variant: str, target: Path, keys_file: Path, seed: int, max_side: int) -> int:
    """Open ``target``, read every key cold then warm; print one JSON line.

    The cold epoch includes opening the store: a cold start pays it, and LMDB's first page
    fault may read ahead much of a small store.
    """
    from PIL import Image

    import lmdb_cache  # noqa: F401  (imported before the clock starts)

    Image.init()  # Pillow imports its format plugins on first use: not during the epoch
    keys = json.loads(keys_file.read_text())
    name, stat_file, note = find_block_device(target)
    order = random.Random(seed)
    cold_keys, warm_keys = list(keys), list(keys)
    order.shuffle(cold_keys)
    order.shuffle(warm_keys)
    begin = _mark(stat_file)
    read = _opener(variant, target, max_side)
    opened = _mark(stat_file)
    cold = _timed_reads(read, cold_keys)
    end = _mark(stat_file)
    warm = _timed_reads(read, warm_keys)
    result = {
        "open": {
            "seconds": opened.seconds - begin.seconds,
            "device_read_bytes": _delta(_field(opened.device, 1), _field(begin.device, 1)),
            "process_read_bytes": _delta(opened.process, begin.process),
        },
        "device": name,
        "device_note": note,
        "epochs": {
            "cold": _epoch_figures(begin, end, cold),
            "warm": _epoch_figures(end, _mark(stat_file), warm),
        },
    }
    print(json.dumps(result))
    return 0


def _run_child(variant: str, target: Path, keys_file: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", variant, str(target)]
    command += [str(keys_file), "--seed", str(args.seed), "--max-side", str(args.max_side)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the {variant} reader exited {proc.returncode}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the measurement -----------------------------------------------------------------------


def _prepare(args: argparse.Namespace, work: Path) -> tuple[list[str], dict[str, Any]]:
    """Build the stores; returns the keys every variant holds and what each variant reads."""
    from lmdb_cache import build_cache
    from lmdb_cache.images import scan_images

    keys = scan_images(args.images)
    if args.limit is not None:
        keys = keys[: args.limit]
    source = args.images
    if args.limit is not None:  # build_cache takes a folder: link the first N files into one
        source = work / f"images-first-{len(keys)}"
        for key in keys:
            link = source / key
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to((args.images / key).resolve())
    targets: dict[str, Any] = {}
    builds: dict[str, Any] = {}
    for codec in ("raw", "zstd"):
        if codec not in args.variants:
            continue
        store = work / f"{codec}-{args.max_side}.lmdb"
        _log(f"building {store.name} from {len(keys)} images...")
        result = build_cache(
            source, store, max_side=args.max_side, codec=codec, workers=args.workers
        )
        for key, reason in result.failures:
            _log(f"  not stored: {key}: {reason}")
        failed = {key for key, _ in result.failures}
        keys = [key for key in keys if key not in failed]
        builds[codec] = {
            "seconds": result.seconds,
            "images": result.images,
            "pixel_bytes": result.total_bytes,
            "data_mdb_bytes": os.path.getsize(store / "data.mdb"),
            "failures": result.failures,
        }
        targets[codec] = {"target": store, "files": [store / "data.mdb"]}
    if "jpeg" in args.variants:
        targets["jpeg"] = {"target": args.images, "files": [args.images / k for k in keys]}
        builds["jpeg"] = {"file_bytes": sum(os.path.getsize(args.images / k) for k in keys)}
    return keys, {"targets": targets, "builds": builds}


def _measure(
    variant: str, files: list[Path], target: Path, keys_file: Path, args: argparse.Namespace
) -> dict:
    """Evict the variant's files, check, and read them cold then warm in a fresh process."""
    before = resident_fraction(files)
    for path in files:
        evict(path)
    after = resident_fraction(files)
    notes = []
    if after is None:
        notes.append("mincore cannot report residency for these files (not ours to write)")
    elif after > EVICTED_MAX:
        notes.append(
            f"{after:.0%} of the pages stayed resident after eviction (the file system ignores "
            "POSIX_FADV_DONTNEED, or another process maps them): the cold epoch is not cold"
        )
    result = _run_child(variant, target, keys_file, args)
    for epoch, figures in result["epochs"].items():
        device, own = figures["device_read_bytes"], figures["process_read_bytes"]
        if device is not None and own is not None and device > 1.1 * own + 256e3:
            notes.append(
                f"{epoch}: the device read {device / 1e6:.1f} MB, this process "
                f"{own / 1e6:.1f} MB: other I/O on the disk inflated the device counters"
            )
    if result["device_note"]:
        notes.append(result["device_note"])
    return {
        "variant": variant,
        "resident_before": before,
        "resident_after_eviction": after,
        "files": len(files),
        "file_bytes": sum(os.path.getsize(p) for p in files),
        **result,
        "notes": notes,
    }


# --- the report ----------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _device_info(name: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {"name": name}
    for field in ("read_ahead_kb", "max_sectors_kb", "rotational"):
        try:
            info[field] = int(Path(f"/sys/block/{name}/queue/{field}").read_text())
        except (OSError, ValueError):
            info[field] = None
    return info


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _report(doc: dict[str, Any]) -> None:
    print(f"\n{doc['images']} images, --max-side {doc['max_side']}, seed {doc['seed']}")
    print(f"derived epoch I/O time: {FORMULA}  (a lower bound: no queueing, no CPU)")
    for name, (bw, iops) in DEVICE_CLASSES.items():
        print(f"  {name}: {bw / 1e6:,.0f} MB/s, {iops:,.0f} IOPS")
    classes = " | ".join(f"{name} s" for name in DEVICE_CLASSES)
    print(
        "\n| run | variant | epoch | s | img/s | median ms | p90 ms | device MB | requests "
        f"| MB/image | requests/image | {classes} |"
    )
    print("|---" * (11 + len(DEVICE_CLASSES)) + "|")
    for run, results in enumerate(doc["runs"], start=1):
        for r in results:
            for epoch, e in r["epochs"].items():
                mb = None if e["device_read_bytes"] is None else e["device_read_bytes"] / 1e6
                per = None if e["bytes_per_image"] is None else e["bytes_per_image"] / 1e6
                derived = " | ".join(_fmt(t, ".3f") for t in e["derived_seconds"].values())
                print(
                    f"| {run} | {r['variant']} | {epoch} | {e['seconds']:.3f} "
                    f"| {_fmt(e['images_per_s'], ',.1f')} | {e['median_ms']:.3f} "
                    f"| {e['p90_ms']:.3f} | {_fmt(mb, ',.1f')} "
                    f"| {_fmt(e['device_read_requests'], ',')} | {_fmt(per, '.3f')} "
                    f"| {_fmt(e['requests_per_image'], '.2f')} | {derived} |"
                )
    print()
    for run, results in enumerate(doc["runs"], start=1):
        for r in results:
            line = (
                f"run {run} {r['variant']}: {r['files']} file(s), {r['file_bytes'] / 1e6:,.1f} MB "
                f"on {r['device'] or 'no block device'}; resident "
                f"{_fmt(r['resident_before'], '.1%')} before eviction, "
                f"{_fmt(r['resident_after_eviction'], '.1%')} after"
            )
            if r["variant"] != "jpeg":
                opened = r["open"]
                mb = opened["device_read_bytes"]
                line += (
                    f"; opening the store (in the cold epoch) took {opened['seconds'] * 1e3:.1f} "
                    f"ms and {_fmt(None if mb is None else mb / 1e6, ',.1f')} MB from the device"
                )
            print(line)
            for note in r["notes"]:
                print(f"  note: {note}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_cold.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--images",
        type=Path,
        default=DEFAULT_IMAGES,
        metavar="DIR",
        help="image folder, read recursively (default: ../shared/data/sroie-dev/img)",
    )
    add("--limit", type=int, metavar="N", help="only the first N images (smoke runs)")
    add("--max-side", type=int, default=640, help="cap of the stores and of the decodes (640)")
    add(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="what to read, in this order (all three)",
    )
    add(
        "--repeat",
        type=int,
        default=1,
        metavar="R",
        help="run the whole measurement R times and report each run, for the spread (1)",
    )
    add("--seed", type=int, default=0, help="seed of the random read orders (0)")
    add("--workers", type=int, help="decoding processes of the builds (all CPUs)")
    add(
        "--scratch",
        type=Path,
        metavar="DIR",
        help="build the stores in DIR/bench_cold, on the disk to measure (default: a temp dir)",
    )
    add("--keep", action="store_true", help="keep the stores (with --scratch: reused next time)")
    add("--json", type=Path, metavar="FILE", help="write every figure to FILE")
    add("--child", nargs=3, help=argparse.SUPPRESS)
    return parser


def _usage_error(args: argparse.Namespace) -> str | None:
    if not args.images.is_dir():
        default = args.images == DEFAULT_IMAGES
        where = (
            " (the default: ../shared/data/sroie-dev/img beside the checkout)" if default else ""
        )
        return f"{args.images}{where} is not a folder of images; pass --images DIR"
    for name in ("limit", "max_side", "repeat", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    return None


def _measure_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Build the stores in ``work``, then measure every variant ``--repeat`` times."""
    keys, prepared = _prepare(args, work)
    if not keys:
        raise RuntimeError(f"no image to read in {args.images}")
    keys_file = work / "keys.json"
    keys_file.write_text(json.dumps(keys))
    runs = []
    for run in range(args.repeat):
        results = []
        for variant in args.variants:
            _log(f"run {run + 1}/{args.repeat}: {variant}...")
            spec = prepared["targets"][variant]
            results.append(_measure(variant, spec["files"], spec["target"], keys_file, args))
        runs.append(results)
    devices = sorted({r["device"] for r in runs[0] if r["device"]})
    return {
        "machine": {**_machine(), "devices": [_device_info(d) for d in devices]},
        "images": len(keys),
        "max_side": args.max_side,
        "seed": args.seed,
        "formula": FORMULA,
        "device_classes": {
            name: {"bytes_per_s": bw, "iops": iops} for name, (bw, iops) in DEVICE_CLASSES.items()
        },
        "builds": prepared["builds"],
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    from lmdb_cache import CacheError

    args = _parser().parse_args(argv)
    if args.child:
        variant, target, keys_file = args.child
        return _child(variant, Path(target), Path(keys_file), args.seed, args.max_side)
    problem = _usage_error(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    tmp = None if args.scratch else tempfile.mkdtemp(prefix="bench_cold_")
    work = Path(tmp) if tmp else args.scratch / "bench_cold"
    work.mkdir(parents=True, exist_ok=True)
    try:
        figures = _measure_all(args, work)
    except (RuntimeError, CacheError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    doc = {
        "command": " ".join(["tools/bench_cold.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        **figures,
    }
    _report(doc)
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
