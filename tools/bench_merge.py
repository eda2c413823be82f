"""``lmdb-cache merge`` against ``lmdb-cache copy`` on the same bytes, side by side.

Builds (once, into ``--scratch``) a store of the image folder and its ``--shards`` shard
builds, run as concurrent processes as on separate machines, checks that the merge of the
shards equals the single build record by record, then times, alternating in fresh
processes (``--pairs`` times each):

* ``copy``: ``lmdb-cache copy WHOLE OUT`` (LMDB's ``mdb_env_copy``, then validation);
* ``merge``: ``lmdb-cache merge PART... -o OUT`` (streamed in append mode, then validation);

and the same two with ``--no-validate``; with ``--unpopulated``, the merge again with its map
faulted in page by page (``LMDB_CACHE_MERGE_POPULATE=0``) instead of populated ahead of the
writes (``MADV_POPULATE_WRITE``). Throughput is the stored pixel bytes over each
command's wall time, so the ratio merge/copy compares the same bytes. Run it alone.

    python tools/bench_merge.py ../shared/data/sroie-dev/img --max-side 640 \\
        --json docs/bench_merge.json

Exit status: 0 done, 1 the merged store differs from the single build, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lmdb_cache import CacheReader  # noqa: E402
from tools.demo import console_script  # noqa: E402


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def _stored(store: Path) -> dict[str, dict[bytes, bytes]]:
    with CacheReader(store) as reader:
        return {
            db: {k: bytes(reader.raw.value(db, k)) for k in reader.raw.keys(db)}
            for db in ("meta", "pixels", "failures")
        }


def _build(
    images: Path, scratch: Path, max_side: str, shards: int
) -> tuple[Path, list[Path], float]:
    whole = scratch / "whole.lmdb"
    build = [console_script("build-cache"), str(images), "--max-side", max_side, "-q"]
    if not whole.exists():
        _timed([*build, "-o", str(whole)])
    parts = [scratch / f"part{i}.lmdb" for i in range(shards)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen([*build, "-o", str(p), "--shard", f"{i}/{shards}", "-j", "1"])
        for i, p in enumerate(parts)
        if not p.exists()
    ]
    for proc in procs:
        proc.wait()
    return whole, parts, time.perf_counter() - start


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, help="image folder")
    parser.add_argument("--max-side", default="640", help="cap of the stores (640; 'none')")
    parser.add_argument("--shards", type=int, default=3, help="shard builds (3)")
    parser.add_argument("--pairs", type=int, default=5, help="alternations of each (5)")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the stores")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--unpopulated",
        action="store_true",
        help="also merge with the map faulted in page by page (LMDB_CACHE_MERGE_POPULATE=0)",
    )
    args = parser.parse_args(argv)
    if not args.images.is_dir():
        parser.error(f"'{args.images}' is not a folder of images")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench_merge-"))
    scratch.mkdir(parents=True, exist_ok=True)
    whole, parts, shard_s = _build(args.images, scratch, args.max_side, args.shards)
    merged = scratch / "check.lmdb"
    shutil.rmtree(merged, ignore_errors=True)
    _timed([console_script("lmdb-cache"), "merge", *map(str, parts), "-o", str(merged), "-q"])
    same = _stored(merged) == _stored(whole)
    shutil.rmtree(merged)
    print(f"merged store equals the single build record by record: {'yes' if same else 'NO'}")
    with CacheReader(whole) as reader:
        nbytes = reader.manifest["total_bytes"]
        images = len(reader)
    runs: dict[str, list[float]] = {}
    out = scratch / "out.lmdb"
    merge = [console_script("lmdb-cache"), "merge", *map(str, parts), "-o", str(out), "-q"]
    commands: dict[str, tuple[list[str], dict[str, str] | None]] = {
        "copy": ([console_script("lmdb-cache"), "copy", str(whole), str(out), "-q"], None),
        "merge": (merge, None),
    }
    if args.unpopulated:
        unpopulated = dict(os.environ, LMDB_CACHE_MERGE_POPULATE="0")
        commands["merge, faulted"] = (merge, unpopulated)
    for _ in range(args.pairs):
        for name, (cmd, env) in commands.items():
            for validate in (True, False):
                shutil.rmtree(out, ignore_errors=True)
                label = name if validate else f"{name} --no-validate"
                runs.setdefault(label, []).append(
                    _timed(cmd if validate else [*cmd, "--no-validate"], env)
                )
    shutil.rmtree(out, ignore_errors=True)
    rows: dict[str, Any] = {}
    print(f"{images} images, {nbytes / 1e6:.1f} MB of pixels, {args.pairs} runs each")
    for label, times in runs.items():
        rate = [nbytes / t / 1e6 for t in times]
        median = statistics.median(rate)
        rows[label] = {"seconds": times, "mb_per_s": rate, "median_mb_per_s": median}
        print(
            f"  {label:22} median {statistics.median(times):7.3f} s  {median:8.1f} MB/s  "
            f"(range {min(rate):.1f}-{max(rate):.1f})"
        )
    ratios = {
        f"{name}{kind}": [
            m / c for m, c in zip(runs[f"{name}{kind}"], runs[f"copy{kind}"], strict=True)
        ]
        for name in commands
        if name != "copy"
        for kind in ("", " --no-validate")
    }
    for kind, values in ratios.items():
        print(f"  {kind} / copy throughput: median {1 / statistics.median(values):.2f} "
              f"(range {1 / max(values):.2f}-{1 / min(values):.2f})")  # fmt: skip
    doc = {
        "command": " ".join(["python", "tools/bench_merge.py", *(argv or sys.argv[1:])]),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
        "images": images,
        "pixel_bytes": nbytes,
        "shard_builds_s": shard_s,
        "merged_equals_single_build": same,
        "runs": rows,
        "throughput_ratio_merge_over_copy": {
            kind: [1 / v for v in values] for kind, values in ratios.items()
        },
    }
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if args.scratch is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
