"""The command line: options, the scenarios in order, the child roles, the report.

``tools/stress_cache.py`` hands its arguments to ``run``; the module docstring there says what
each scenario proves.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from lmdb_cache.images import scan_images

from .adversary import role_nodes, role_peak, scenario_forged, scenario_nodes
from .common import BIN, ROOT, Ctx, Outcome, log, short
from .concurrent_builds import scenario_concurrent
from .damage import scenario_crafted, scenario_truncate
from .epochs import role_epochs, scenario_epochs
from .flips import scenario_flips
from .kills import scenario_kills
from .readers import role_readers, scenario_readers
from .report import describe_machine, summary
from .roles import role_build, role_pixels, role_read, role_refs

SCENARIOS = (
    "kills",
    "readers",
    "flips",
    "truncate",
    "crafted",
    "nodes",
    "forged",
    "concurrent",
    "epochs",
)
FULL = dict(
    max_side=512, kills=60, flips=500, epochs=2000, workers=8, concurrent=6, reader_seconds=60.0
)
QUICK = dict(max_side=160, kills=4, flips=28, epochs=6, workers=2, concurrent=2, reader_seconds=4.0)
RELEASE = dict(kills=60, flips=500, epochs=2000, workers=8)

ROLES = {
    "_refs": role_refs,
    "_build": role_build,
    "_pixels": role_pixels,
    "_read": role_read,
    "_readers": role_readers,
    "_epochs": role_epochs,
    "_nodes": role_nodes,
    "_peak": role_peak,
}
RUNNERS = {
    "kills": scenario_kills,
    "readers": scenario_readers,
    "flips": scenario_flips,
    "truncate": scenario_truncate,
    "crafted": scenario_crafted,
    "nodes": scenario_nodes,
    "forged": scenario_forged,
    "concurrent": scenario_concurrent,
    "epochs": scenario_epochs,
}


def _parse(argv: list[str], description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tools/stress_cache.py",
        description=description,
        epilog="Scenarios and what they prove: see the module docstring.",
    )
    p.add_argument("scenario", choices=[*SCENARIOS, "all"])
    p.add_argument("--quick", action="store_true", help="8 generated images, tiny sizes (< 1 min)")
    p.add_argument(
        "--images", type=Path, help="source images (default ../shared/data/sroie-dev/img)"
    )
    p.add_argument("--max-side", type=int, help="build-cache --max-side (default 512, quick 160)")
    p.add_argument("--kills", type=int, help="kill -9 trials (default 60)")
    p.add_argument("--flips", type=int, help="single-byte flips (default 500)")
    p.add_argument("--epochs", type=int, help="DataLoader epochs (default 2000)")
    p.add_argument("--workers", type=int, help="DataLoader workers of the epochs (default 8)")
    p.add_argument("--concurrent", type=int, help="concurrent-build trials (default 6)")
    p.add_argument("--reader-seconds", type=float, help="reading during updates (default 60)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="checks side by side")
    p.add_argument("--work", type=Path, help="scratch folder, kept (default: a temporary one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the report there too")
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("max_side", "kills", "flips", "epochs", "workers", "concurrent", "jobs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def _images(args: argparse.Namespace, work: Path) -> Path:
    if args.images is not None or not args.quick:
        return args.images or ROOT.parent / "shared" / "data" / "sroie-dev" / "img"
    from tools.make_samples import generate

    images = work / "generated"
    if not images.is_dir():
        generate(images, count=8, seed=args.seed, scale=0.5)
        images.with_suffix(".json").unlink()
    return images


def run(argv: list[str], description: str) -> int:
    """Run a child role, or the scenarios ``argv`` asks for; returns the exit status.

    Args:
        argv: the command line after the program name.
        description: the first line of ``--help``.

    Returns:
        0 every acceptance criterion met, 1 one failed, 2 usage error.
    """
    if argv and argv[0] in ROLES:
        return ROLES[argv[0]](argv[1:])
    args = _parse(argv, description)
    missing = [n for n in ("build-cache", "validate-cache", "cache-info") if not (BIN / n).exists()]
    work = args.work or Path(tempfile.mkdtemp(prefix="stress-cache-"))
    work.mkdir(parents=True, exist_ok=True)
    images = _images(args, work)
    problem = (
        f"{', '.join(missing)} not found beside {sys.executable}; run with the venv's "
        "python, the project installed (pip install -e .)"
        if missing
        else None
        if images.is_dir() and len(scan_images(images)) >= 4
        else f"'{images}' is not a folder of at least 4 images; pass --images or --quick"
    )
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    ctx, outcomes = Ctx(args, work, images), []
    for name in SCENARIOS if args.scenario == "all" else [args.scenario]:
        started = time.monotonic()
        log(f"--- {name}")
        try:
            outcome = RUNNERS[name](ctx)
        except Exception as e:  # the tool itself failed: said in the report, the rest runs
            outcome = Outcome(name)
            outcome.need(
                f"the scenario ran to its end ({type(e).__name__}: {short(str(e), 300)})", False
            )
            outcome.notes.append(traceback.format_exc())
        outcome.seconds = time.monotonic() - started
        outcomes.append(outcome)
    report = {
        "machine": describe_machine(argv),
        "images": str(images),
        "image_count": len(ctx.originals),
        "max_side": args.max_side,
        "seed": args.seed,
        "quick": args.quick,
        "release_sizes": {
            k: {"asked": getattr(args, k), "release": v, "met": getattr(args, k) >= v}
            for k, v in RELEASE.items()
        },
        "ok": all(o.passed for o in outcomes),
        "scenarios": {o.name: asdict(o) for o in outcomes},
    }
    print(summary(outcomes, report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["ok"] else 1
