"""The main job, end to end on generated receipts: disk vs cache, side by side.

    python tools/demo.py                 # a few minutes on 2 CPU cores
    python tools/demo.py --epochs 8      # quicker, lower H-mean

Steps, each a real command run in a fresh process (printed as it runs):

1. ``tools/make_samples.py`` writes a train and a val set of synthetic receipts;
2. ``build-cache`` decodes each set once into ``<set>.lmdb`` (capped at the config's max_side);
3. ``ocr-train --config configs/demo.yaml`` trains a small DBNet reading images from disk,
   then again with the config pointed at the caches (the same seed, so the same model);
4. ``ocr-eval`` scores the cache run's checkpoint reading from disk, a RAM preload and the
   cache;

then prints wall time, data-wait share and H-mean for the disk and cache runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/demo.yaml"


def _script(name: str) -> str:
    """A console script of this project, next to the running interpreter when possible."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"'{name}' is not installed; run: pip install -e . (see the README)")
    return found


def _run(cmd: list[str], capture: bool = False) -> tuple[float, str]:
    shown = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))
    print(f"$ {shown}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=ROOT, stdout=subprocess.PIPE if capture else None, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"'{shown}' failed with exit status {proc.returncode}")
    return elapsed, proc.stdout or ""


def _train(name: str, out: Path, epochs: int, overrides: list[str]) -> dict[str, Any]:
    cmd = [_script("ocr-train"), "--config", CONFIG, "--output", str(out / name), "--quiet"]
    cmd += ["--epochs", str(epochs), *overrides]
    started = time.time()
    wall, _ = _run(cmd)
    summary = json.loads((out / name / "summary.json").read_text())
    summary.update(wall_s=wall, started=started, ended=time.time())
    return summary


def _eval(checkpoint: Path, overrides: list[str]) -> dict[str, Any]:
    cmd = [_script("ocr-eval"), "-k", str(checkpoint), "--config", CONFIG, "--json", *overrides]
    started = time.time()
    wall, stdout = _run(cmd, capture=True)
    result = json.loads(stdout)
    result.update(wall_s=wall, started=started, ended=time.time())
    return result


def _cache_overrides(data: Path) -> list[str]:
    return [
        f"datasets.train_dataset.image_cache={data / 'train.lmdb'}",
        f"datasets.val_dataset.image_cache={data / 'val.lmdb'}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-count", type=int, default=48, help="train receipts (48)")
    parser.add_argument("--val-count", type=int, default=16, help="val receipts (16)")
    parser.add_argument("--epochs", type=int, default=24, help="training epochs (24)")
    parser.add_argument(
        "--scale", type=float, default=2.0, help="page size of the receipts (2: 720-1800 px wide)"
    )
    parser.add_argument("--max-side", type=int, default=640, help="cache cap (640, the config's)")
    parser.add_argument(
        "--min-hmean",
        type=float,
        default=0.5,
        help="exit 1 when the val H-mean ends below this (0.5): the model did not learn",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"), help="run folders")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the runs' summaries and evaluations here (with each run's start and "
        "end time, for tools/gpu_check.sh)",
    )
    args = parser.parse_args(argv)
    data = Path("data/demo")
    python = sys.executable

    for name, count, seed in (("train", args.train_count, 1), ("val", args.val_count, 2)):
        shutil.rmtree(ROOT / data / name, ignore_errors=True)
        shutil.rmtree(ROOT / data / f"{name}.lmdb", ignore_errors=True)
        _run(
            [
                python,
                "tools/make_samples.py",
                str(data / name),
                "--count",
                str(count),
                "--seed",
                str(seed),
            ]
        )
    build_s = 0.0
    for name in ("train", "val"):
        elapsed, _ = _run(
            [_script("build-cache"), str(data / name), "--max-side", str(args.max_side), "--quiet"]
        )
        build_s += elapsed
    shutil.rmtree(ROOT / args.runs, ignore_errors=True)
    max_side = [f"datasets.{s}.max_side={args.max_side}" for s in ("train_dataset", "val_dataset")]
    disk = _train("disk", args.runs, args.epochs, max_side)
    cache = _train("cache", args.runs, args.epochs, max_side + _cache_overrides(data))

    checkpoint = args.runs / "cache" / "last.pt"
    val_max = f"datasets.val_dataset.max_side={args.max_side}"
    evals = {
        "disk": _eval(checkpoint, [val_max]),
        "preload": _eval(checkpoint, [val_max, "datasets.val_dataset.preload_images=true"]),
        "cache": _eval(checkpoint, [val_max, _cache_overrides(data)[1]]),
    }
    _report(disk, cache, evals, build_s, args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"train": {"disk": disk, "cache": cache}, "eval": evals, "build_cache_s": build_s}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    problems = []
    if disk["metrics"] != cache["metrics"]:
        problems.append("the disk and cache runs ended with different metrics")
    if (
        len({json.dumps([e[k] for k in ("precision", "recall", "hmean")]) for e in evals.values()})
        != 1
    ):
        problems.append("ocr-eval gave different metrics for disk, preload and cache")
    if cache["metrics"]["hmean"] < args.min_hmean:
        problems.append(
            f"val H-mean {cache['metrics']['hmean']:.4f} is below --min-hmean {args.min_hmean}"
        )
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _speedup(disk_s: float, cache_s: float) -> str:
    """ "1.14x faster", or "1.05x slower" when the cache run took longer."""
    if cache_s <= disk_s:
        return f"{disk_s / cache_s:.2f}x faster"
    return f"{cache_s / disk_s:.2f}x slower"


def _report(
    disk: dict[str, Any],
    cache: dict[str, Any],
    evals: dict[str, dict[str, Any]],
    build_s: float,
    args: argparse.Namespace,
) -> None:
    def row(label: str, a: str, b: str, note: str = "") -> str:
        return f"  {label:<26}{a:>14}{b:>14}  {note}"

    print()
    print(
        f"DBNet on {args.train_count} + {args.val_count} synthetic receipts, "
        f"{args.epochs} epochs, {disk['device']}"
    )
    print(row("", "disk", "cache (.lmdb)"))
    print(
        row(
            "ocr-train wall time",
            f"{disk['wall_s']:.1f} s",
            f"{cache['wall_s']:.1f} s",
            _speedup(disk["wall_s"], cache["wall_s"]),
        )
    )
    print(
        row("  of which data wait", f"{disk['data_wait_s']:.1f} s", f"{cache['data_wait_s']:.1f} s")
    )
    print(
        row(
            "data-wait share of loop",
            f"{100 * disk['data_wait_share']:.0f}%",
            f"{100 * cache['data_wait_share']:.0f}%",
        )
    )
    print(
        row(
            "train images/s",
            f"{disk['train_images_per_s']:.1f}",
            f"{cache['train_images_per_s']:.1f}",
        )
    )
    print(
        row(
            "val H-mean",
            f"{disk['metrics']['hmean']:.4f}",
            f"{cache['metrics']['hmean']:.4f}",
            "same seed, same model" if disk["metrics"] == cache["metrics"] else "DIFFERENT",
        )
    )
    print(f"  build-cache (once, both sets): {build_s:.1f} s")
    same = (
        len({json.dumps([e[k] for k in ("precision", "recall", "hmean")]) for e in evals.values()})
        == 1
    )
    print(
        f"\nocr-eval of {args.runs / 'cache' / 'last.pt'} on the {args.val_count} val images "
        "(a fresh process each):"
    )
    print(f"  {'source':<10}{'H-mean':>10}{'process':>10}{'loop':>9}{'data wait':>11}")
    for name, e in evals.items():
        t = e["timing"]
        print(
            f"  {name:<10}{e['hmean']:>10.4f}{e['wall_s']:>9.1f}s{t['wall_s']:>8.2f}s"
            f"{100 * t['data_wait_share']:>10.0f}%"
        )
    print("  precision, recall and H-mean identical across sources: " + ("yes" if same else "NO"))


if __name__ == "__main__":
    raise SystemExit(main())
