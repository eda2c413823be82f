"""Do training runs repeat to the bit, from disk and from the cache? K short pairs tell.

    python tools/repro_check.py                      # 10 pairs, alone on the machine
    python tools/repro_check.py --hog 2              # the same beside 2 CPU-burning processes
    python tools/repro_check.py --pairs 3 trainer.threads=1 --json runs/repro.json

Each pair trains the demo's DBNet (configs/demo.yaml; 16 train + 8 val generated receipts,
2 epochs, batch 4: seconds to tens of seconds a run on 2 CPUs) twice, each run a fresh
``ocr-train`` process: once reading the images from disk, once from ``.lmdb`` caches of the
same images (``tools/make_samples.py`` and ``build-cache --max-side 640``, made once). Then:

* within the pair, the disk run's ``log.jsonl`` against the cache run's, record by record: the
  step records (``trainer.log_every_steps=1``, passed when ``ocr-train`` knows it: loss and
  the digests of each batch's samples and data), the epoch records (loss, digests, metrics),
  and ``summary.json``'s metrics;
* across pairs, each run against the same run of pair 1: a run must also repeat itself.

It prints one line per pair, ``identical`` or where the runs first differ and whether they were
fed different data or only computed differently (threads, library versions, CPU), then the
match rate (``10/10 identical``). ``--hog N`` runs N busy loops beside the runs (stopped at the
end, on Ctrl-C too) to see whether contention changes anything: it should not, since the
thread count is fixed by the config (``trainer.threads``), not by the load.

KEY=VALUE arguments are ``ocr-train`` overrides given to every run. Exit status: 0 when every
pair is identical, 1 when any differs or a run fails, 2 for a usage error (or another check
holds the ``--work`` folder). What is promised and what changes the bits: docs/training.md,
"Determinism".
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: only tools/ is on the path
    sys.path.insert(0, str(ROOT))

from tools.demo import console_script  # noqa: E402
from tools.folder_lock import FolderBusyError, hold_folder  # noqa: E402
from tools.runlog import (  # noqa: E402
    Divergence,
    compare_records,
    metrics_differ,
    read_log,
    step_log_overrides,
)

CONFIG = ROOT / "configs" / "demo.yaml"
# The cap of the demo config's datasets: the caches must hold the pixels it asks for.
MAX_SIDE = 640
# A busy loop that ends by itself once its parent is gone (even after kill -9).
_HOG = (
    "import os\n"
    "p = os.getppid()\n"
    "while os.getppid() == p:\n"
    "    for _ in range(10**6):\n"
    "        pass\n"
)


class RunFailed(RuntimeError):
    """An ``ocr-train`` run exited with an error; the message holds the end of its output."""


@dataclass
class RunResult:
    """One finished ``ocr-train`` run.

    Attributes:
        folder: Its run folder.
        records: Its ``log.jsonl`` (``tools.runlog.read_log``).
        summary: Its ``summary.json``.
        wall_s: Seconds the process took.
    """

    folder: Path
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    wall_s: float


def main(argv: list[str] | None = None) -> int:
    """Run the check as ``argv`` says; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        with _stop_on_sigterm():
            if args.work is None:
                with tempfile.TemporaryDirectory(prefix="repro_check_") as tmp:
                    return _check(args, Path(tmp))
            with hold_folder(args.work.resolve()):
                return _check(args, args.work.resolve())
    except FolderBusyError as e:
        print(
            f"error: another check holds {e.folder} ({e.holder}); pass another --work",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted; the hogs are stopped", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    positive = _at_least(1)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="ocr-train overrides")
    parser.add_argument(
        "--pairs", type=positive, default=10, metavar="K", help="disk/cache pairs (10)"
    )
    parser.add_argument(
        "--hog",
        type=_at_least(0),
        default=0,
        metavar="N",
        help="run N CPU-burning processes beside the runs (0)",
    )
    parser.add_argument(
        "--train-count", type=positive, default=16, metavar="N", help="train receipts (16)"
    )
    parser.add_argument(
        "--val-count", type=positive, default=8, metavar="N", help="val receipts (8)"
    )
    parser.add_argument(
        "--epochs", type=positive, default=2, metavar="N", help="epochs per run (2)"
    )
    parser.add_argument(
        "--batch-size", type=positive, default=4, metavar="N", help="batch size (4)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=CONFIG,
        help="ocr-train config (configs/demo.yaml); its datasets are pointed at the generated ones",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for the receipts, caches and runs, kept afterwards (its data/ and runs/ "
        "are replaced); default: a temporary folder, removed at the end",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the results (each pair, each difference, the environment) to FILE",
    )
    return parser


def _check(args: argparse.Namespace, work: Path) -> int:
    """Make the data, run the pairs beside the hogs, report; returns the exit status."""
    data = work / "data"
    _make_data(data, args)
    config = args.config.resolve()
    steps = step_log_overrides(config)
    overrides = _data_overrides(data, args) + steps + list(args.overrides)
    print(
        f"pairs: {args.pairs} (disk and cache runs of {_shown(config)}; receipts: "
        f"{args.train_count} train + {args.val_count} val; epochs: {args.epochs}; batch: "
        f"{args.batch_size}); hogs: {args.hog}; folder: {work}",
        file=sys.stderr,
    )
    if not steps:
        print(
            "note: this ocr-train does not know trainer.log_every_steps: comparing epoch "
            "records only",
            file=sys.stderr,
        )
    results: list[dict[str, Any]] = []
    first: tuple[RunResult, RunResult] | None = None
    with hogs(args.hog):
        for index in range(1, args.pairs + 1):
            runs = work / "runs" / f"pair_{index:02d}"
            try:
                pair = (
                    _train(runs / "disk", config, args.epochs, overrides),
                    _train(runs / "cache", config, args.epochs, overrides + _cache(data)),
                )
            except RunFailed as e:
                print(f"pair {index}/{args.pairs}: {e}")
                return 1
            first = first or pair
            result = judge(index, pair, first)
            results.append(result)
            for line in _result_lines(result, args.pairs):
                print(line, flush=True)
    same = sum(r["identical"] for r in results)
    print(f"{same}/{len(results)} identical")
    _print_environment(first)
    if args.json is not None:
        _write_json(args, results, first, bool(steps))
    return 0 if same == len(results) else 1


def judge(
    index: int, pair: tuple[RunResult, RunResult], first: tuple[RunResult, RunResult]
) -> dict[str, Any]:
    """Compare a pair's disk and cache runs, and each with the same run of the first pair.

    Args:
        index: The pair's number (1 for the first pair, which is only compared within).
        pair: Its disk and cache runs.
        first: The first pair's runs.

    Returns:
        ``pair``, ``identical`` and, for each comparison that found a difference
        (``disk vs cache``, ``disk vs pair 1``, ``cache vs pair 1``): the first ``Divergence``
        in the logs (as a dict, or None) and the summary metrics that differ.
    """
    disk, cache = pair
    checks = [("disk vs cache", disk, cache, "disk", "cache")]
    if index > 1:
        checks += [
            (f"{name} vs pair 1", first[i], pair[i], f"pair 1 {name}", f"pair {index} {name}")
            for i, name in enumerate(("disk", "cache"))
        ]
    differences = []
    for label, a, b, name_a, name_b in checks:
        divergence = compare_records(a.records, b.records)
        metrics = metrics_differ(a.summary, b.summary)
        if divergence is not None or metrics:
            differences.append(_difference(label, divergence, metrics, name_a, name_b))
    return {
        "pair": index,
        "identical": not differences,
        "differences": differences,
        "metrics": disk.summary.get("metrics"),
        "final_loss": disk.summary.get("final_loss"),
        "wall_s": {"disk": disk.wall_s, "cache": cache.wall_s},
    }


@contextmanager
def hogs(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes that burn a CPU each until the block ends (or this process dies).

    Args:
        count: How many; 0 starts none.

    Yields:
        The processes.
    """
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            procs.append(subprocess.Popen([sys.executable, "-c", _HOG], stdin=subprocess.DEVNULL))
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _make_data(data: Path, args: argparse.Namespace) -> None:
    """The train and val receipts under ``data`` and their caches, made afresh."""
    from lmdb_cache import build_cache
    from tools.make_samples import generate

    shutil.rmtree(data, ignore_errors=True)
    for name, count, seed in (("train", args.train_count, 1), ("val", args.val_count, 2)):
        generate(data / name, count=count, seed=seed)
        result = build_cache(data / name, data / f"{name}.lmdb", max_side=MAX_SIDE, workers=1)
        if result.failures:
            raise SystemExit(f"build-cache failed on {data / name}: {result.failures}")


def _data_overrides(data: Path, args: argparse.Namespace) -> list[str]:
    sets = (("train_dataset", "train"), ("val_dataset", "val"), ("test_dataset", "val"))
    out = [
        f"datasets.{split}.{key}={data / name}{suffix}"
        for split, name in sets
        for key, suffix in (("image_path", ""), ("annotation_path", ".json"))
    ]
    return out + [f"dataloader.batch_size={args.batch_size}"]


def _cache(data: Path) -> list[str]:
    return [
        f"datasets.train_dataset.image_cache={data / 'train.lmdb'}",
        f"datasets.val_dataset.image_cache={data / 'val.lmdb'}",
    ]


def _train(out: Path, config: Path, epochs: int, overrides: list[str]) -> RunResult:
    """One ``ocr-train`` run in a fresh process, its output kept unless it fails."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [console_script("ocr-train"), "--config", str(config), "--output", str(out), "--quiet"]
    cmd += ["--epochs", str(epochs), *overrides]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-15:])
        raise RunFailed(f"ocr-train into {out} exited with {proc.returncode}:\n{tail}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return RunResult(out, read_log(out / "log.jsonl"), summary, wall)


def _difference(
    label: str,
    divergence: Divergence | None,
    metrics: dict[str, Any],
    name_a: str,
    name_b: str,
) -> dict[str, Any]:
    lines = divergence.describe(name_a, name_b) if divergence is not None else []
    lines += [
        f"summary metric {k}: {a!r} ({name_a}) vs {b!r} ({name_b})" for k, (a, b) in metrics.items()
    ]
    return {
        "between": label,
        "divergence": divergence.to_dict() if divergence is not None else None,
        "metrics": {k: list(v) for k, v in metrics.items()},
        "lines": lines,
    }


def _result_lines(result: dict[str, Any], pairs: int) -> list[str]:
    head = f"pair {result['pair']}/{pairs}:"
    wall = result["wall_s"]
    took = f"{wall['disk']:.1f} s + {wall['cache']:.1f} s"
    if result["identical"]:
        runs = "disk = cache" if result["pair"] == 1 else "disk = cache = pair 1"
        return [f"{head} identical ({runs}; final loss {result['final_loss']!r}; {took})"]
    lines = [f"{head} DIFFERENT ({took})"]
    for difference in result["differences"]:
        lines.append(f"  {difference['between']}:")
        lines += [f"    {line}" for line in difference["lines"]]
    return lines


def _print_environment(first: tuple[RunResult, RunResult] | None) -> None:
    from ocr.runinfo import environment_line, run_environment

    env = first[0].summary.get("environment") if first is not None else None
    if env is not None:
        print(f"environment (pair 1, disk): {environment_line(env)}")
    else:
        print(
            "environment: the runs' summary.json record none; this process (not the runs): "
            f"{environment_line(run_environment())}"
        )


def _write_json(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    first: tuple[RunResult, RunResult] | None,
    steps: bool,
) -> None:
    from ocr.runinfo import run_environment

    doc = {
        "pairs": len(results),
        "identical": sum(r["identical"] for r in results),
        "hog": args.hog,
        "config": _shown(args.config.resolve()),
        "overrides": list(args.overrides),
        "sizes": {
            "train": args.train_count,
            "val": args.val_count,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
        },
        "step_records": steps,
        "environment": first[0].summary.get("environment") if first is not None else None,
        "this_process": run_environment(),
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Make SIGTERM end the check like Ctrl-C does, so the hogs are stopped either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _at_least(low: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


if __name__ == "__main__":
    raise SystemExit(main())
