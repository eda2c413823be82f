"""The machine description and the summary tables printed at the end of a run."""

from __future__ import annotations

import os
import platform
from typing import Any

from .common import Outcome, short


def describe_machine(argv: list[str]) -> dict[str, Any]:
    from importlib.metadata import version

    import lmdb
    import PIL

    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "lmdb": ".".join(map(str, lmdb.version())),
        "py-lmdb": lmdb.__version__,
        "pillow": PIL.__version__,
        "torch": version("torch"),
        "command": " ".join(["python", "tools/stress_cache.py", *argv]),
    }


def _table(rows: list[list[Any]], indent: str) -> list[str]:
    cells = [[short(str(c), 70) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return [
        indent
        + "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in cells
    ]


def summary(outcomes: list[Outcome], report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"stress_cache on {report['images']} ({report['image_count']} images), max side "
        f"{report['max_side']}, seed {report['seed']}",
        f"machine: {m['cpu']}, {m['cores']} "
        f"cores, Python {m['python']}, LMDB {m['lmdb']} (py-lmdb {m['py-lmdb']}), Pillow "
        f"{m['pillow']}, torch {m['torch']}",
        "",
    ]
    lines += _table(
        [
            ["scenario", "trials", "ok", "errors", "crashes", "time", "result"],
            *[
                [
                    o.name,
                    o.trials,
                    o.ok,
                    o.errors,
                    o.crashes,
                    f"{o.seconds:.0f} s",
                    "PASS" if o.passed else "FAIL",
                ]
                for o in outcomes
            ],
        ],
        "  ",
    )
    for o in outcomes:
        lines += ["", f"{o.name}:", *(f"  {'PASS' if p else 'FAIL'}  {t}" for t, p in o.criteria)]
        for title, rows in o.tables.items():
            lines += [f"  {title}:", *_table(rows, "    ")] if len(rows) > 1 else []
        lines += [f"  note: {n}" for n in o.notes[:15]]
        lines += [f"  ({len(o.notes) - 15} more notes in the JSON)"] if len(o.notes) > 15 else []
    sizes = ", ".join(
        f"{k} {v['asked']} ({'>=' if v['met'] else '<'} {v['release']})"
        for k, v in report["release_sizes"].items()
    )
    verdict = "every acceptance criterion met" if report["ok"] else "FAILED"
    return "\n".join([*lines, "", f"release sizes: {sizes}", f"verdict: {verdict}"])
