"""``readers``: open_cache loops and DataLoaders check snapshots while the store is updated.

The scenario runs in this process; each reader runs in a child process (role ``_readers``).
"""

from __future__ import annotations

import json
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

from lmdb_cache import open_cache
from lmdb_cache.images import scan_images

from .common import (
    Ctx,
    Outcome,
    Proc,
    console_cmd,
    quiet_dataloader,
    replace_file,
    role_cmd,
    run_cmd,
    short,
    start_cmd,
)


def _probe(reader: Any, table: dict[str, dict[str, int]], keysets: dict[str, set]) -> dict:
    """Check one fresh snapshot (what consistent means: see tools/stress_cache.py)."""
    out: dict[str, Any] = dict(snapshots=1, complete=0, mixed_incomplete=0, errors=[])
    try:
        reader.refresh()
        m, keys, bad = reader.manifest, reader.keys(), []
        if not len(reader) == len(keys) == m["images"]:
            bad.append(f"len {len(reader)}, {len(keys)} keys, manifest images {m['images']}")
        versions, total = set(), 0
        for key in keys:
            image = reader[key].image
            total += image.nbytes
            version = table.get(key, {}).get(str(zlib.crc32(image.data)))
            versions.add(version)
            if version is None:
                bad.append(f"{key}: pixels of no known version")
        if total != m["total_bytes"]:
            bad.append(f"pixel bytes {total} != manifest total_bytes {m['total_bytes']}")
        if m["complete"]:
            out["complete"] = 1
            only = next(iter(versions)) if len(versions) == 1 else None
            if only is None or set(keys) != keysets[str(only)]:
                bad.append(f"complete, but versions {sorted(map(str, versions))} or keys differ")
        else:
            out["mixed_incomplete"] = int(len(versions) > 1)
        out["inconsistent"] = ["; ".join(bad)] if bad else []
    except Exception as e:  # every failed read counts, whatever its type
        out["errors"] = [f"{type(e).__name__}: {e}"]
    return out


def _merge(total: dict[str, Any], part: dict[str, Any]) -> None:
    for k, v in part.items():
        if isinstance(v, list):  # counted, and the first five kept
            total[k + "_count"] = total.get(k + "_count", 0) + len(v)
            total[k] = (total.get(k, []) + v)[:5]
        elif isinstance(v, int):
            total[k] = total.get(k, 0) + v


class _ProbeSet:
    """A map-style dataset whose every item is one snapshot check, made in a worker."""

    def __init__(self, reader: Any, table: dict, keysets: dict, n: int) -> None:
        self.reader, self.table, self.keysets, self.n = reader, table, keysets, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return _probe(self.reader, self.table, self.keysets)


def _variant(orig: Path, level: int, dest: Path) -> None:
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(orig) as im:
        page = ImageOps.exif_transpose(im).convert("RGB")
    ImageDraw.Draw(page).rectangle([0, 0, page.width // 3, page.height // 6], fill=(level,) * 3)
    dest.parent.mkdir(parents=True, exist_ok=True)
    page.save(dest, format="JPEG", quality=90)


def scenario_readers(ctx: Ctx) -> Outcome:
    modes = ("plain", "fork", "spawn", "forkserver")
    res = Outcome("readers", len(modes))
    files = sorted(ctx.originals, key=lambda p: p.stat().st_size)[:16]
    side = max(64, ctx.args.max_side // 2)
    table: dict[str, dict[str, int]] = {}  # key -> CRC-32 -> version
    keysets: dict[str, list[str]] = {}
    for v, level in enumerate((30, 130, 230)):
        vdir = ctx.work / "versions" / str(v)
        for f in files:
            _variant(f, level, vdir / f.name)
        if v == 1:  # the key set changes too
            _variant(files[0], level, vdir / "extra.jpg")
        for key, (_, _, crc) in ctx.expected(vdir, side).items():
            table.setdefault(key, {})[str(crc)] = v
        keysets[str(v)] = scan_images(vdir)
    src, store, refs = ctx.work / "readers-src", ctx.work / "readers.lmdb", ctx.work / "refs.json"

    def install(v: int) -> None:
        for key in table:
            new = ctx.work / "versions" / str(v % 3) / key
            if new.exists():
                replace_file(src / key, new.read_bytes())
            else:
                (src / key).unlink(missing_ok=True)

    install(0)
    first = run_cmd(console_cmd("build-cache", src, "-o", store, "--max-side", side, "-q"))
    refs.write_text(json.dumps({"table": table, "keysets": keysets}))
    cmds = [role_cmd("_readers", mode, store, refs, ctx.args.reader_seconds) for mode in modes]
    procs = [start_cmd(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    updates, failed = 0, []
    while any(p.poll() is None for p in procs):
        updates += 1
        install(updates)  # half through the API (a commit every 4 images), some rebuilds
        how = ["--rebuild"] if updates % 6 == 0 else []
        up = run_cmd(
            role_cmd("_build", src, store, "--commit-images", 4)
            if updates % 2
            else console_cmd("build-cache", src, "-o", store, "-q", *how)
        )
        if up.rc != 0:
            failed.append(f"update {updates}: exit {up.rc}: {short(up.said())}")
    fields = ("snapshots", "complete", "mixed_incomplete", "errors_count", "inconsistent_count")
    table_rows = []
    for mode, proc in zip(modes, procs, strict=True):
        out, err = proc.communicate()
        run = Proc([], proc.returncode, out, err)
        doc = run.doc() or {}
        snaps, complete, mixed, errors, bad = (doc.get(k, 0) for k in fields)
        table_rows.append([mode, snaps, complete, mixed, errors, bad])
        line = (
            f"{mode}: {snaps} snapshots ({complete} complete, {mixed} mixed while incomplete,"
            f" {doc.get('epochs', 0)} epochs), {errors} read errors {doc.get('errors', [])[:1]}"
            f", {bad} inconsistent {doc.get('inconsistent', [])[:1]}"
        )
        crash = run.crash() or (None if doc else f"exit {proc.returncode}, no result")
        res.count(crash, snaps > 0 and not errors and not bad, line, **{**doc, "mode": mode})
    res.tables["readers during updates"] = [
        ["reader", "snapshots", "complete", "mixed (incomplete)", "read errors", "inconsistent"],
        *table_rows,
    ]
    res.need(
        f"the store was updated {updates} times while they read, each exit 0 "
        f"({len(failed)} failed)",
        first.rc == 0 and updates >= 2 and not failed,
    )
    res.need(
        f"0 read errors and 0 inconsistent snapshots in every reader ({res.ok}/{res.trials} clean)",
        res.ok == res.trials,
    )
    res.notes += failed[:5]
    return res


def role_readers(argv: list[str]) -> int:
    """``_readers MODE STORE REFS SECONDS``: snapshot checks for SECONDS; prints the counts."""
    mode, store, seconds = argv[0], argv[1], float(argv[3])
    refs = json.loads(Path(argv[2]).read_text())
    table, keysets = refs["table"], {v: set(k) for v, k in refs["keysets"].items()}
    reader = open_cache(store, verify=True, snapshot_seconds=None)  # one snapshot per probe
    total: dict[str, Any] = {"mode": mode, "epochs": 0}
    deadline = time.monotonic() + seconds
    # At least one probe or epoch whatever the deadline: on a loaded machine starting the
    # workers alone can take longer than a short window.
    if mode == "plain":
        while total.get("snapshots", 0) == 0 or time.monotonic() < deadline:
            _merge(total, _probe(reader, table, keysets))
    else:
        loader = quiet_dataloader()(
            _ProbeSet(reader, table, keysets, 8),
            batch_size=None,
            num_workers=2,
            multiprocessing_context=mode,
        )
        while total["epochs"] == 0 or time.monotonic() < deadline:
            try:
                for item in loader:
                    _merge(total, item)
            except Exception as e:  # a worker that died or raised: a read error
                _merge(total, {"errors": [f"{type(e).__name__}: {e}"]})
            total["epochs"] += 1
    print(json.dumps(total))
    return 0
