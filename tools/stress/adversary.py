"""``nodes`` and ``forged``: the adversary's last holes, each case made the way it was found.

* ``nodes``: every byte of the header of the first node of every leaf page (``lo``/``hi``:
  the value's size, ``flags``, ``ksize``), XORed with 0x01 and with 0xFF, in the ``pixels``
  database of a raw and of a zstd store; and the size bytes (``lo``/``hi``) of the ``meta``
  database's first nodes. Each flipped store is read whole in a fresh process (every record
  as an owned copy and as a view, each checked against its CRC-32) and given to
  ``validate-cache``. A read must raise a ``CacheError`` or give pixels that match their
  checksum; no signal, no traceback, no hang anywhere.
* ``forged``: records whose sealed metadata the store's settings could not have produced
  (sides of 2^18, with and without a raw size that agrees; a 98 KB zstd frame declaring
  65536 x 16384 pixels; swapped sides; ``scale_x=1e-300``; a size that is not the cap's
  rounding) and a manifest whose pixel ceiling is past the format's. ``validate-cache``,
  a reader and ``lmdb-cache copy`` each run in a fresh process under ``_peak``, which
  records the process's peak resident memory: each must refuse the store with exit 1 and a
  message naming it, below 1 GiB.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .common import Ctx, Outcome, Proc, console_cmd, role_cmd, run_cmd, short
from .regions import STRUCTURE, map_regions

FIELDS = {0: "lo", 1: "lo", 2: "hi", 3: "hi", 4: "flags", 5: "flags", 6: "ksize", 7: "ksize"}
PEAK_LIMIT = 1 << 30


def _first_nodes(store: Path, db: str) -> list[int]:
    """File offsets of the first node (pointer index 0) of each leaf page of database ``db``."""
    regions = map_regions(store)
    pages = {
        span.start // regions.psize
        for span in regions.spans
        if span.region == STRUCTURE
        and span.what.startswith(f"{db} '")
        and span.what.endswith("node header+key")
    }
    offsets = []
    with open(store / "data.mdb", "rb") as f:
        for page in sorted(pages):
            f.seek(page * regions.psize + 16)  # after the page header: the pointer array
            offsets.append(page * regions.psize + struct.unpack("<H", f.read(2))[0])
    return offsets


def _zstd_store(ctx: Ctx) -> Path:
    store = ctx.work / "base-zstd.lmdb"
    if not store.exists():
        p = run_cmd(
            console_cmd(
                "build-cache",
                ctx.work / "base-src",
                "-o",
                store,
                "--max-side",
                ctx.args.max_side,
                "--codec",
                "zstd",
                "-q",
            )
        )
        if p.rc not in (0, 1) or not store.exists():  # 1: broken.jpg failed, as it should
            raise RuntimeError(f"cannot build the zstd store: {short(p.said(), 300)}")
    return store


def _flip(base: Path, store: Path, offset: int, mask: int) -> None:
    store.mkdir(parents=True)
    shutil.copyfile(base / "data.mdb", store / "data.mdb")
    with open(store / "data.mdb", "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def scenario_nodes(ctx: Ctx) -> Outcome:
    stores = {"raw": ctx.base_store(), "zstd": _zstd_store(ctx)}
    cases: list[tuple[str, str, Path, int, int, int]] = []  # codec, db, base, offset, byte, mask
    for codec, base in stores.items():
        for offset in _first_nodes(base, "pixels"):
            cases += [(codec, "pixels", base, offset, b, m) for b in range(8) for m in (1, 255)]
        for offset in _first_nodes(base, "meta"):
            cases += [(codec, "meta", base, offset, b, 255) for b in range(4)]
    res = Outcome("nodes", len(cases))

    def one(i: int) -> tuple[Proc, Proc]:
        codec, db, base, offset, byte, mask = cases[i]
        store = ctx.work / "nodes" / f"case{i:04d}"
        _flip(base, store, offset + byte, mask)
        try:
            return run_cmd(role_cmd("_nodes", store), 120), run_cmd(
                console_cmd("validate-cache", store, "--json"), 300
            )
        finally:
            shutil.rmtree(store)

    table: dict[tuple[str, str, str], Counter[str]] = {}
    with ThreadPoolExecutor(ctx.args.jobs) as ex:
        for (codec, db, _, offset, byte, mask), (read, check) in zip(
            cases, ex.map(one, range(len(cases))), strict=True
        ):
            crash = read.crash() or check.crash()
            doc = read.doc() if not crash else None
            if not crash and (read.rc != 0 or not isinstance(doc, dict)):
                crash = f"reader exit {read.rc}, no JSON"
            if not crash and (check.rc not in (0, 1) or check.doc() is None):
                crash = f"validate-cache exit {check.rc}, no JSON"
            outcomes = Counter(o for found in (doc or {}).values() for o in found)
            good = not crash and outcomes["BAD"] == 0
            field = f"{FIELDS[byte]} (byte {byte})"
            table.setdefault((codec, db, field), Counter()).update(outcomes)
            brief = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            res.count(
                crash,
                good,
                f"{codec} {db} offset {offset} byte {byte} ^{mask:#04x}: "
                f"{brief}; validate {check.rc}",
                codec=codec,
                db=db,
                offset=offset,
                byte=byte,
                mask=mask,
                reads=dict(outcomes),
                validate=check.rc,
            )
    names = sorted({o for c in table.values() for o in c})
    res.tables["reads per field (owned copy and view of every record)"] = [
        ["codec / database / field", *names],
        *[[f"{c} / {d} / {f}", *[n[o] for o in names]] for (c, d, f), n in sorted(table.items())],
    ]
    res.need(f"no signal, no traceback, no hang ({res.crashes} of {res.trials})", res.crashes == 0)
    res.need(
        f"every read a CacheError or pixels matching their checksum ({res.ok}/{res.trials} flips)",
        res.ok == res.trials,
    )
    return res


# --- forged ----------------------------------------------------------------------------------


def bomb_frame(nbytes: int) -> bytes:
    """A valid zstd frame of ``nbytes`` zeros from hand-made RLE blocks (4 bytes a 128 KiB)."""
    out = bytearray(struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", nbytes))
    left = nbytes
    while left:
        size = min(128 << 10, left)
        left -= size
        out += (int(left == 0) | 1 << 1 | size << 3).to_bytes(3, "little") + b"\x00"
    return bytes(out)


def _forger(base: Path, key: bytes, change: Any) -> Any:
    """A maker: copy ``base`` and put what ``change(meta, manifest)`` returns, a list of
    ``(database, value)``: a map is sealed under the record's key (the manifest's under its
    own), bytes go in as they are."""

    def make(store: Path) -> None:
        import lmdb

        from lmdb_cache.format.schema import MANIFEST_KEY, seal, unseal

        store.mkdir(parents=True)
        shutil.copyfile(base / "data.mdb", store / "data.mdb")
        env = lmdb.open(
            str(store), max_dbs=8, map_size=2 * (base / "data.mdb").stat().st_size + (64 << 20)
        )
        try:
            with env.begin(write=True) as txn:
                dbs = {n: env.open_db(n, txn=txn) for n in (b"manifest", b"meta", b"pixels")}
                meta = unseal(txn.get(key, db=dbs[b"meta"]), key)
                manifest = unseal(txn.get(MANIFEST_KEY, db=dbs[b"manifest"]), MANIFEST_KEY)
                for db, value in change(meta, manifest):
                    k = MANIFEST_KEY if db == b"manifest" else key
                    txn.put(k, value if isinstance(value, bytes) else seal(value, k), db=dbs[db])
        finally:
            env.close()

    return make


def _forged_cases(ctx: Ctx) -> list[tuple[str, Any]]:
    raw, zstd, key = ctx.base_store(), _zstd_store(ctx), ctx.base_key.encode()
    side = 1 << 18

    def meta(**fields: Any) -> Any:
        return lambda m, _: [(b"meta", {**m, **fields})]

    def consistent(width: int, height: int) -> dict:
        return dict(
            width=width,
            height=height,
            raw_width=width,
            raw_height=height,
            orientation=1,
            nbytes=3 * width * height,
            scale=1.0,
            scale_x=1.0,
            scale_y=1.0,
        )

    def bomb(m: dict, _: dict) -> list:
        frame = bomb_frame(65536 * 16384 * 3)
        fields = dict(
            codec="zstd", level=5, stored_nbytes=len(frame), stored_checksum=zlib.crc32(frame)
        )
        return [(b"pixels", frame), (b"meta", {**m, **consistent(65536, 16384), **fields})]

    def ceiling(_: dict, man: dict) -> list:
        return [(b"manifest", {**man, "settings": {**man["settings"], "max_pixels": 1 << 40}})]

    def swapped(m: dict, _: dict) -> list:
        return [(b"meta", {**m, "width": m["height"], "height": m["width"]})]

    def short_row(m: dict, _: dict) -> list:
        height = m["height"] - 1
        return [(b"meta", {**m, "height": height, "nbytes": 3 * m["width"] * height})]

    return [
        (
            "zstd: sides 2^18 under a correct seal",
            _forger(zstd, key, meta(width=side, height=side, nbytes=3 * side * side)),
        ),
        (
            "zstd: sides 2^18, raw size and scales agreeing",
            _forger(zstd, key, meta(**consistent(side, side))),
        ),
        ("zstd: 98 KB frame declaring 65536x16384 (bomb)", _forger(zstd, key, bomb)),
        ("raw: width and height swapped", _forger(raw, key, swapped)),
        ("raw: scale_x=1e-300", _forger(raw, key, meta(scale_x=1e-300))),
        ("raw: one row short of the cap's rounding", _forger(raw, key, short_row)),
        ("raw: manifest ceiling 2^40 pixels", _forger(raw, key, ceiling)),
    ]


def scenario_forged(ctx: Ctx) -> Outcome:
    cases = _forged_cases(ctx)
    tools = ["validate-cache", "open_cache+read", "lmdb-cache copy"]
    res = Outcome("forged", len(cases) * len(tools))

    def commands(store: Path) -> list[list[str]]:
        return [
            console_cmd("validate-cache", store, "--json"),
            role_cmd("_read", store, ctx.base_key),
            console_cmd("lmdb-cache", "copy", store, store.with_name(store.name + "-copy")),
        ]

    def one(i: int) -> list[tuple[Proc, int]]:
        store = ctx.work / "forged" / f"case{i:02d}"
        cases[i][1](store)
        try:
            return [_run_peak(ctx, cmd) for cmd in commands(store)]
        finally:
            shutil.rmtree(store)
            shutil.rmtree(store.with_name(store.name + "-copy"), ignore_errors=True)

    with ThreadPoolExecutor(ctx.args.jobs) as ex:
        results = list(ex.map(one, range(len(cases))))
    rows = []
    for i, ((name, _), runs) in enumerate(zip(cases, results, strict=True)):
        store = str(ctx.work / "forged" / f"case{i:02d}")
        cells = []
        for tool, (p, peak) in zip(tools, runs, strict=True):
            crash = p.crash()
            clear = p.rc == 1 and store in p.said()
            good = not crash and clear and peak < PEAK_LIMIT
            said = short(p.said().replace(store, "STORE").removeprefix("Error: "), 90)
            cells.append(f"{p.rc} {peak / 2**20:.0f} MiB")
            res.count(
                crash,
                good,
                f"{name} / {tool}: exit {p.rc}, peak {peak >> 20} MiB: {said}",
                case=name,
                tool=tool,
                rc=p.rc,
                peak_bytes=peak,
                said=p.said()[:2000],
            )
        rows.append([name, *cells])
    res.tables["exit status and peak memory of each command"] = [["case", *tools], *rows]
    res.need(
        f"each command refuses each forged store: exit 1, a message naming it, peak memory "
        f"under 1 GiB ({res.ok}/{res.trials})",
        res.ok == res.trials,
    )
    res.need(f"no traceback, no signal, no hang ({res.crashes})", res.crashes == 0)
    return res


def _run_peak(ctx: Ctx, cmd: list[str]) -> tuple[Proc, int]:
    """``cmd`` under the ``_peak`` role: its outcome and its peak resident memory in bytes."""
    p = run_cmd(role_cmd("_peak", *cmd), 600)
    out, _, tail = p.out.rpartition("\n_peak ")
    try:
        peak = int(tail.strip())
    except ValueError:
        return p, 0
    return Proc(cmd, p.rc, out + ("\n" if out else ""), p.err, p.seconds), peak


def role_peak(argv: list[str]) -> int:
    """``_peak CMD...``: run CMD, pass its output and exit status on, and end stdout with
    ``_peak BYTES``, CMD's peak resident memory."""
    import resource

    done = subprocess.run(argv, capture_output=True, text=True, errors="replace")
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    sys.stdout.write(f"\n_peak {peak}\n")
    return done.returncode


def role_nodes(argv: list[str]) -> int:
    """``_nodes STORE``: {key: [outcome of the owned read, outcome of the view]}, each "ok",
    "BAD" (pixels that do not match their checksum) or the CacheError's class name."""
    from lmdb_cache import CacheError, open_cache

    out: dict[str, list[str]] = {}
    try:
        reader = open_cache(argv[0])
        keys = reader.keys()
    except CacheError as e:
        print(json.dumps({"(keys)": [type(e).__name__]}))
        return 0
    for key in keys:
        for read in (reader.__getitem__, reader.view):
            try:
                record = read(key)
            except CacheError as e:
                out.setdefault(key, []).append(type(e).__name__)
                continue
            good = zlib.crc32(record.image.tobytes()) == record.meta["checksum"]
            out.setdefault(key, []).append("ok" if good else "BAD")
    print(json.dumps(out))
    return 0
