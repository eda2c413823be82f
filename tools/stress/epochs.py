"""``epochs``: thousands of DataLoader epochs with fork workers while the store is updated.

The scenario runs in this process; the epochs run in a child process (role ``_epochs``).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from lmdb_cache import open_cache

from .common import (
    Ctx,
    Outcome,
    Proc,
    console_cmd,
    log,
    quiet_dataloader,
    replace_file,
    role_cmd,
    run_cmd,
    short,
    start_cmd,
)


class _Items:
    """Every record of a store: item i is (key, CRC-32 of its pixels), read in a worker."""

    def __init__(self, reader: Any, keys: list[str]) -> None:
        self.reader, self.keys = reader, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.keys[i], zlib.crc32(self.reader[self.keys[i]].image.data)


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def scenario_epochs(ctx: Ctx) -> Outcome:
    res = Outcome("epochs", ctx.args.epochs)
    src, store = ctx.copy_sources("epochs-src"), ctx.work / "epochs.lmdb"
    build = run_cmd(
        console_cmd("build-cache", src, "-o", store, "--max-side", ctx.args.max_side, "-q")
    )
    allowed = ctx.work / "epochs-allowed.json"  # the updates only move originals around
    crcs = sorted({ref[2] for ref in ctx.expected(ctx.images, ctx.args.max_side).values()})
    allowed.write_text(json.dumps(crcs))
    cmd = role_cmd("_epochs", store, allowed, ctx.args.epochs, ctx.args.workers)
    child = start_cmd(cmd, stdout=subprocess.PIPE, text=True)
    stop, updates, failed = threading.Event(), [0], []

    def updater() -> None:
        while not stop.wait(0.5 if ctx.args.quick else 3.0):
            replace_file(
                src / ctx.rng.choice(ctx.originals).name, ctx.rng.choice(ctx.originals).read_bytes()
            )
            p = run_cmd(console_cmd("build-cache", src, "-o", store, "-q"))
            updates[0] += 1
            failed.extend([short(p.said())] if p.rc != 0 else [])

    thread = threading.Thread(target=updater, daemon=True)
    thread.start()
    out, _ = child.communicate()
    stop.set()
    thread.join()
    doc = Proc([], child.returncode, out, "").doc() or {}
    samples = doc.get("samples", [])
    res.trials = doc.get("epochs", 0)
    res.errors = doc.get("error_epochs", 0)
    res.ok, res.crashes = res.trials - res.errors, int(child.returncode != 0)
    res.notes += doc.get("errors", []) + failed[:5]
    limit = 2 * ctx.args.workers + 4
    first = max((s[3] for s in samples[: max(1, len(samples) // 10)]), default=0)
    size_limit = int(first * 1.25) + (8 << 20)
    readers, rows, size = (max((s[i] for s in samples), default=0) for i in (1, 2, 3))
    res.tables["reader table and file size after each epoch (sampled)"] = [
        ["epoch", "num_readers", "reader rows", "data.mdb bytes"],
        *samples[:: max(1, len(samples) // 10)],
        *samples[-1:],
    ]
    res.need(
        f"{res.trials} epochs of {ctx.args.workers} fork workers, persistent_workers=False, "
        f"without error ({res.errors} failed, {doc.get('bad_items', '?')} items of unknown "
        f"pixels)",
        build.rc == 0
        and res.trials == ctx.args.epochs
        and not res.errors
        and not res.crashes
        and doc.get("bad_items") == 0,
    )
    res.need(
        f"reader table bounded: num_readers <= {limit} (max {readers}), rows of "
        f"env.readers() <= {limit} (max {rows})",
        0 < readers <= limit and rows <= limit,
    )
    res.need(
        f"data.mdb bounded: <= {size_limit} bytes (first {first}, max {size})",
        0 < size <= size_limit,
    )
    res.need(
        f"the store was updated {updates[0]} times meanwhile, each exit 0",
        updates[0] > 0 and not failed,
    )
    return res


def role_epochs(argv: list[str]) -> int:
    """``_epochs STORE ALLOWED EPOCHS WORKERS``: DataLoader epochs over every record."""
    store, epochs, workers = argv[0], int(argv[2]), int(argv[3])
    allowed = set(json.loads(Path(argv[1]).read_text()))
    reader = open_cache(store, verify=True)
    loader = quiet_dataloader()(
        _Items(reader, reader.keys()),
        batch_size=8,
        num_workers=workers,
        multiprocessing_context="fork",
        persistent_workers=False,
        collate_fn=_as_list,
    )
    env = reader.raw.environment()  # the reader's own environment
    doc: dict[str, Any] = {
        "epochs": 0,
        "error_epochs": 0,
        "bad_items": 0,
        "errors": [],
        "samples": [],
    }
    started = time.monotonic()
    for epoch in range(epochs):
        try:
            for batch in loader:
                doc["bad_items"] += sum(crc not in allowed for _, crc in batch)
        except Exception as e:  # counted and shown; the next epoch goes on
            doc["error_epochs"] += 1
            doc["errors"] = doc["errors"][:4] + [f"epoch {epoch}: {type(e).__name__}: {e}"]
        rows = [r for r in env.readers().splitlines()[1:] if r.strip()]
        size = os.path.getsize(os.path.join(store, "data.mdb"))
        doc["samples"].append([epoch, env.info()["num_readers"], len(rows), size])
        doc["epochs"] += 1
        if epoch % 100 == 0 or epoch == epochs - 1:
            log(
                f"[epochs {epoch + 1}/{epochs}] {time.monotonic() - started:.0f} s, num_readers "
                f"{doc['samples'][-1][1]}, reader rows {len(rows)}, data.mdb {size} bytes, "
                f"{doc['error_epochs']} failed epochs, {doc['bad_items']} bad items"
            )
    print(json.dumps(doc))
    return 0
