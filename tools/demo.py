"""The main job, end to end on generated receipts: disk vs cache, side by side.

    python tools/demo.py                 # a few minutes on 2 CPU cores
    python tools/demo.py --epochs 8      # quicker, lower H-mean
    python tools/demo.py --data /tmp/demo2 --runs /tmp/demo2/runs   # beside a running demo

Steps, each a real command run in a fresh process (printed as it runs):

1. ``tools/make_samples.py`` writes a train and a val set of synthetic receipts;
2. ``build-cache`` decodes each set once into ``<set>.lmdb`` (capped at the config's max_side);
3. ``ocr-train --config configs/demo.yaml`` trains a small DBNet reading images from disk,
   then again with the config pointed at the caches (the same seed, so the same model);
4. ``ocr-eval`` scores the cache run's checkpoint reading from disk, a RAM preload and the
   cache;

then prints wall time, data-wait share and H-mean for the disk and cache runs. It exits 1
when the two runs end with different metrics or log different records; it then prints the
first record of their ``log.jsonl`` that differs, whether the runs were fed different data or
only computed differently, and their environments (threads, library versions, CPU).

One demo at a time per folder: the demo holds a lock in its data folder (``data/demo``) and
in its run folder (``runs/demo``), so a second demo in the same checkout stops at once (exit
2) instead of deleting the first one's images and runs under it; give it ``--data`` and
``--runs`` folders of its own to run both.
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
if str(ROOT) not in sys.path:  # run as a script: only tools/ is on the path
    sys.path.insert(0, str(ROOT))

from tools.folder_lock import FolderBusyError, hold_folders  # noqa: E402
from tools.runlog import Divergence, LogError, first_divergence, step_log_overrides  # noqa: E402

CONFIG = "configs/demo.yaml"
# The folders configs/demo.yaml reads and writes; --data and --runs name others.
DATA = Path("data/demo")
RUNS = Path("runs/demo")


def console_script(name: str) -> str:
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


def _arg(path: Path) -> str:
    """``path`` as a command argument: relative to the checkout (where the commands run) when
    inside it, so the printed commands stay short."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _train(name: str, out: Path, epochs: int, overrides: list[str]) -> dict[str, Any]:
    cmd = [console_script("ocr-train"), "--config", CONFIG, "--output", _arg(out / name), "--quiet"]
    cmd += ["--epochs", str(epochs), *overrides]
    started = time.time()
    wall, _ = _run(cmd)
    summary = json.loads((out / name / "summary.json").read_text())
    summary.update(wall_s=wall, started=started, ended=time.time())
    return summary


def _eval(checkpoint: Path, overrides: list[str]) -> dict[str, Any]:
    cmd = [
        console_script("ocr-eval"),
        "-k",
        _arg(checkpoint),
        "--config",
        CONFIG,
        "--json",
        *overrides,
    ]
    started = time.time()
    wall, stdout = _run(cmd, capture=True)
    result = json.loads(stdout)
    result.update(wall_s=wall, started=started, ended=time.time())
    return result


def _cache_overrides(data: Path) -> list[str]:
    return [
        f"datasets.train_dataset.image_cache={_arg(data / 'train.lmdb')}",
        f"datasets.val_dataset.image_cache={_arg(data / 'val.lmdb')}",
    ]


def _data_overrides(data: Path) -> list[str]:
    """Point the config's datasets at ``data`` (none needed for the config's own folder)."""
    if data == ROOT / DATA:
        return []
    sets = (("train_dataset", "train"), ("val_dataset", "val"), ("test_dataset", "val"))
    return [
        f"datasets.{split}.{key}={_arg(data / name)}{suffix}"
        for split, name in sets
        for key, suffix in (("image_path", ""), ("annotation_path", ".json"))
    ]


def _folder(given: Path | None, default: Path) -> Path:
    """A folder option: relative to the working directory when given, else the default in
    the checkout."""
    return ROOT / default if given is None else given.resolve()


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
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"folder for the generated receipts and their caches ({DATA} in the checkout); "
        "its train/, val/, *.json and *.lmdb are replaced",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=None,
        help=f"folder for the two runs, disk/ and cache/ ({RUNS} in the checkout); "
        "those two are replaced",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the runs' summaries and evaluations here (with each run's start and "
        "end time, for tools/gpu_check.sh)",
    )
    args = parser.parse_args(argv)
    args.data, args.runs = _folder(args.data, DATA), _folder(args.runs, RUNS)
    try:
        with hold_folders(args.data, args.runs):
            return _demo(args)
    except FolderBusyError as e:
        print(
            f"error: another demo is running in this checkout ({e.holder}) with {e.folder}; "
            "wait for it or pass --runs/--data to use other folders",
            file=sys.stderr,
        )
        return 2


def _demo(args: argparse.Namespace) -> int:
    """The demo's steps, with its folders held; returns the exit status."""
    build_s = _make_data(args)
    disk, cache, evals = _train_and_evaluate(args)
    _report(disk, cache, evals, build_s, args)
    divergence = _divergence(args.runs)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "train": {"disk": disk, "cache": cache},
            "eval": evals,
            "build_cache_s": build_s,
            "divergence": divergence.to_dict() if divergence is not None else None,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    problems = []
    if disk["metrics"] != cache["metrics"]:
        problems.append("the disk and cache runs ended with different metrics")
    elif divergence is not None:
        problems.append("the disk and cache runs logged different records")
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
    if divergence is not None or disk["metrics"] != cache["metrics"]:
        for line in _explain(divergence, disk, cache):
            print(line, file=sys.stderr)
    return 1 if problems else 0


def _make_data(args: argparse.Namespace) -> float:
    """Generate the train and val receipts and build their caches; returns build-cache's
    seconds."""
    data = args.data
    for name, count, seed in (("train", args.train_count, 1), ("val", args.val_count, 2)):
        shutil.rmtree(data / name, ignore_errors=True)
        shutil.rmtree(data / f"{name}.lmdb", ignore_errors=True)
        sizes = ["--count", str(count), "--seed", str(seed)]
        _run([sys.executable, "tools/make_samples.py", _arg(data / name), *sizes])
    build_s = 0.0
    for name in ("train", "val"):
        elapsed, _ = _run(
            [
                console_script("build-cache"),
                _arg(data / name),
                "--max-side",
                str(args.max_side),
                "--quiet",
            ]
        )
        build_s += elapsed
    return build_s


def _train_and_evaluate(
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
    """Train from disk and from the cache, then evaluate the cache run's checkpoint from
    disk, preload and cache; returns the two summaries and the evaluations."""
    data, runs = args.data, args.runs
    for name in ("disk", "cache"):
        shutil.rmtree(runs / name, ignore_errors=True)
    max_side = [f"datasets.{s}.max_side={args.max_side}" for s in ("train_dataset", "val_dataset")]
    # Step records (once ocr-train knows trainer.log_every_steps) show where runs part.
    common = max_side + _data_overrides(data) + step_log_overrides(ROOT / CONFIG)
    disk = _train("disk", runs, args.epochs, common)
    cache = _train("cache", runs, args.epochs, common + _cache_overrides(data))

    checkpoint = runs / "cache" / "last.pt"
    val = [f"datasets.val_dataset.max_side={args.max_side}", *_data_overrides(data)]
    evals = {
        "disk": _eval(checkpoint, val),
        "preload": _eval(checkpoint, [*val, "datasets.val_dataset.preload_images=true"]),
        "cache": _eval(checkpoint, [*val, _cache_overrides(data)[1]]),
    }
    return disk, cache, evals


def _divergence(runs: Path) -> Divergence | None:
    """Where the two runs' logs first differ (None when they agree)."""
    try:
        return first_divergence(runs / "disk" / "log.jsonl", runs / "cache" / "log.jsonl")
    except LogError as e:
        print(f"warning: cannot compare the runs' logs: {e}", file=sys.stderr)
        return None


def _explain(
    divergence: Divergence | None, disk: dict[str, Any], cache: dict[str, Any]
) -> list[str]:
    """Where the disk and cache runs parted, why, and the environments they ran in."""
    if divergence is None:
        lines = ["the runs' log.jsonl agree; only the final metrics differ"]
    else:
        lines = divergence.describe("disk", "cache")
    return lines + _environment_lines(disk.get("environment"), cache.get("environment"))


def _environment_lines(disk: Any, cache: Any) -> list[str]:
    """The runs' environments (their summary.json's ``environment``), one line each."""
    from ocr.runinfo import environment_line, run_environment

    if disk is None and cache is None:
        return [
            "the runs' summary.json record no environment; this process (not the runs, whose "
            f"trainer.threads may differ): {environment_line(run_environment())}"
        ]
    if disk == cache:
        return [f"environment of both runs: {environment_line(disk)}"]
    return [
        f"environment of the {name} run: "
        + (environment_line(env) if env is not None else "not recorded")
        for name, env in (("disk", disk), ("cache", cache))
    ]


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
        f"\nocr-eval of {_arg(args.runs / 'cache' / 'last.pt')} on the {args.val_count} val images "
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
