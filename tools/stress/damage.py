"""``truncate`` and ``crafted``: cut and hand-made stores given to every command."""

from __future__ import annotations

import random
import shutil
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .common import Ctx, Outcome, Proc, console_cmd, role_cmd, run_cmd, short
from .regions import map_regions

Maker = Callable[[Path], None]  # makes a crafted or truncated store at the path


def _judge(p: Proc, store: Path, expect: str) -> tuple[str | None, bool, str]:
    """(crash, as expected, in short what it said) for a command run on a bad store.

    ``expect``: "error" (exit 1 or 2 and a message naming the store), "healthy" (exit 0) or
    "any" (either, but an error must name the store).
    """
    doc, crash = p.doc(), p.crash()
    if not crash and p.rc in (0, 1) and p.cmd[0].endswith("validate-cache") and doc is None:
        crash = "stdout is not one JSON document"
    if not crash and p.rc not in (0, 1, 2):
        crash = f"exit {p.rc}"
    said = p.said()
    clear = p.rc in (1, 2) and str(store) in said
    good = clear if expect == "error" else p.rc == 0 if expect == "healthy" else p.rc == 0 or clear
    if isinstance(doc, dict) and "problems" in doc:
        brief = ",".join(sorted({f["kind"] for f in doc["problems"]})) or "healthy"
    elif isinstance(doc, dict) and "error" in doc:
        brief = doc["error"] or "read every record"
    else:
        brief = said.replace(str(store), "STORE").removeprefix("Error: ") or (
            "ok" if p.rc == 0 else ""
        )
    return crash, good, f"{p.rc} {short(brief, 44)}"


def _commands(ctx: Ctx, store: Path, key: str | None, build: bool) -> dict[str, list[str]]:
    cmds = {
        "validate-cache": console_cmd("validate-cache", store, "--json"),
        "cache-info": console_cmd("cache-info", store),
        "open_cache+read": role_cmd("_read", store, *([key] if key else [])),
    }
    if build:  # last: the only one that may write
        cmds["build-cache (update)"] = console_cmd("build-cache", ctx.images, "-o", store, "-q")
    return cmds


def _run_cases(
    ctx: Ctx,
    res: Outcome,
    cases: list[tuple[str, str, Maker]],
    key: str | None,
    build: bool = False,
) -> None:
    """Make each case's store and judge what each command says of it. A case's level:
    "error" (every command must refuse it), "record" (validate-cache and reads must; cache-info
    shows the manifest only), "healthy" or "any"."""
    tools = list(_commands(ctx, Path("."), key, build))

    def one(i: int) -> list[Proc]:
        store = ctx.work / res.name / f"case{i:02d}"
        cases[i][2](store)
        try:
            return [run_cmd(cmd) for cmd in _commands(ctx, store, key, build).values()]
        finally:
            shutil.rmtree(store) if store.is_dir() else store.unlink()

    with ThreadPoolExecutor(ctx.args.jobs) as ex:
        results = list(ex.map(one, range(len(cases))))
    said: dict[str, list[str]] = {}
    for i, ((name, level, _), procs) in enumerate(zip(cases, results, strict=True)):
        for tool, p in zip(tools, procs, strict=True):
            expect = ("any" if tool == "cache-info" else "error") if level == "record" else level
            crash, good, text = _judge(p, ctx.work / res.name / f"case{i:02d}", expect)
            said.setdefault(name, []).append(f"CRASH {crash}" if crash else text)
            res.count(
                crash,
                good,
                f"{name} / {tool}: {text}",
                case=name,
                tool=tool,
                expect=expect,
                rc=p.rc,
                said=p.said()[:2000],
            )
    res.tables["what each command said (exit status, problem kinds or message)"] = [
        ["case", *tools],
        *[[n, *t] for n, t in said.items()],
    ]


def scenario_truncate(ctx: Ctx) -> Outcome:
    base = ctx.base_store()
    data = (base / "data.mdb").read_bytes()
    needed = map_regions(base).committed_bytes
    cuts = [("0 bytes", 0), ("4096 bytes", 4096)]
    cuts += [
        (f"{p}% ({len(data) * p // 100} B)", len(data) * p // 100) for p in (1, 10, 50, 90, 99)
    ]

    def cut(n: int) -> Maker:
        def make(store: Path) -> None:
            store.mkdir(parents=True)
            (store / "data.mdb").write_bytes(data[:n])

        return make

    res = Outcome("truncate", len(cuts) * 4)
    _run_cases(
        ctx,
        res,
        [(c, "error" if n < needed else "healthy", cut(n)) for c, n in cuts],
        ctx.base_key,
        build=True,
    )
    res.need(
        f"each command fails clearly on each cut: exit 1/2, a message naming the store "
        f"({res.ok}/{res.trials})",
        res.ok == res.trials,
    )
    res.need(f"no traceback, no signal, no hang ({res.crashes})", res.crashes == 0)
    named = sum("data.mdb" in r["said"] for r in res.rows)
    res.notes.append(f"{named} of {res.trials} messages name the file data.mdb itself")
    return res


def _edit(base: Path, fn: Callable[[Any, Any, dict], None]) -> Maker:
    """A maker that copies the base store and changes it in one LMDB write transaction."""

    def make(store: Path) -> None:
        import lmdb

        store.mkdir(parents=True)
        shutil.copyfile(base / "data.mdb", store / "data.mdb")
        size = 2 * (base / "data.mdb").stat().st_size + (64 << 20)
        env = lmdb.open(str(store), max_dbs=8, map_size=size)
        try:
            with env.begin(write=True) as txn:
                names = (b"manifest", b"meta", b"pixels", b"failures")
                fn(env, txn, {n: env.open_db(n, txn=txn) for n in names})
        finally:
            env.close()

    return make


def _crafted_cases(ctx: Ctx) -> list[tuple[str, str, Maker]]:
    import lmdb
    import msgpack

    from lmdb_cache.format.schema import MANIFEST_KEY, MAX_SIDE, seal, unseal

    base, key, junk = (
        ctx.base_store(),
        ctx.base_key.encode(),
        random.Random(ctx.args.seed).randbytes,
    )

    def meta(txn: Any, dbs: dict) -> dict:
        return unseal(txn.get(key, db=dbs[b"meta"]), key)

    def manifest(txn: Any, dbs: dict) -> dict:
        return unseal(txn.get(MANIFEST_KEY, db=dbs[b"manifest"]), MANIFEST_KEY)

    def put(db: bytes, k: bytes, value: Callable[[Any, dict], bytes | None]) -> Maker:
        def fn(env: Any, txn: Any, dbs: dict) -> None:
            v = value(txn, dbs)
            txn.put(k, v, db=dbs[db]) if v is not None else txn.delete(k, db=dbs[db])

        return _edit(base, fn)

    def set_meta(**fields: Any) -> Maker:
        return put(b"meta", key, lambda txn, dbs: seal({**meta(txn, dbs), **fields}, key))

    def sealed_raw(payload: bytes) -> Maker:  # sealed as schema.seal does, from raw msgpack
        crc = struct.pack("<I", zlib.crc32(payload, zlib.crc32(key)))
        return put(b"meta", key, lambda txn, dbs: payload + crc)

    def manifest_as(version: int, sealed: bool) -> Maker:
        def value(txn: Any, dbs: dict) -> bytes:
            m = {**manifest(txn, dbs), "format_version": version}
            return seal(m, MANIFEST_KEY) if sealed else msgpack.packb(m)

        return put(b"manifest", MANIFEST_KEY, value)

    def dupsort(env: Any, txn: Any, dbs: dict) -> None:
        items = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=dbs[b"meta"])]
        txn.drop(dbs[b"meta"], delete=True)
        db = env.open_db(b"meta", txn=txn, dupsort=True)
        for k, v in items:
            txn.put(k, v, db=db)

    def non_utf8(env: Any, txn: Any, dbs: dict) -> None:  # a whole, well-sealed record
        bad, m, man = b"bad-\xff\xfe.jpg", meta(txn, dbs), manifest(txn, dbs)
        txn.put(bad, seal(m, bad), db=dbs[b"meta"])
        txn.put(bad, txn.get(key, db=dbs[b"pixels"]), db=dbs[b"pixels"])
        man.update(images=man["images"] + 1, total_bytes=man["total_bytes"] + m["nbytes"])
        txn.put(MANIFEST_KEY, seal(man, MANIFEST_KEY), db=dbs[b"manifest"])

    def plain_lmdb(store: Path) -> None:
        env = lmdb.open(str(store), map_size=1 << 20)
        with env.begin(write=True) as txn:
            txn.put(b"hello", b"world")
        env.close()

    def folder_with(name: str, content: bytes | None, copy: bool = False) -> Maker:
        def make(store: Path) -> None:
            _edit(base, lambda *a: None)(store) if copy else store.mkdir(parents=True)
            (store / name).mkdir() if content is None else (store / name).write_bytes(content)

        return make

    nested: Any = 0
    for _ in range(20):
        nested = [nested]
    side = MAX_SIDE
    return [
        ("meta database made with dupsort", "error", _edit(base, dupsort)),
        (
            "an extra named database",
            "any",
            _edit(
                base, lambda env, txn, dbs: txn.put(b"k", b"v", db=env.open_db(b"extra", txn=txn))
            ),
        ),
        ("plain LMDB env, no named databases", "error", plain_lmdb),
        (
            "failure entry: sealed msgpack list",
            "error",
            put(b"failures", b"x.jpg", lambda *a: seal([1], b"x.jpg")),
        ),
        (
            "failure entry: unsealed msgpack list",
            "error",
            put(b"failures", b"x.jpg", lambda *a: msgpack.packb([1])),
        ),
        (
            "metadata: msgpack Timestamp (sealed)",
            "record",
            set_meta(source_mtime_ns=msgpack.Timestamp(1, 0)),
        ),
        (
            "metadata: extension type 42 (sealed)",
            "record",
            set_meta(extra=msgpack.ExtType(42, b"x")),
        ),
        ("metadata nested 20 deep (sealed)", "record", set_meta(extra=nested)),
        ("metadata nested 100000 deep (sealed)", "record", sealed_raw(b"\x91" * 100000 + b"\xc0")),
        ("manifest of format version 1 (unsealed)", "error", manifest_as(1, sealed=False)),
        ("manifest of format version 99 (sealed)", "error", manifest_as(99, sealed=True)),
        ("no manifest", "error", put(b"manifest", MANIFEST_KEY, lambda *a: None)),
        (
            "metadata sizes disagree with the pixels",
            "record",
            set_meta(width=7, height=5, nbytes=105),
        ),
        (
            "metadata claims 2^18 x 2^18 pixels",
            "record",
            set_meta(width=side, height=side, nbytes=3 * side * side),
        ),
        ("a key that is not UTF-8 (sealed)", "record", _edit(base, non_utf8)),
        ("an empty folder", "error", lambda store: store.mkdir(parents=True)),
        ("a file in place of the folder", "error", lambda store: store.write_bytes(b"no cache\n")),
        ("data.mdb of random bytes", "error", folder_with("data.mdb", junk(65536))),
        ("data.mdb is a folder", "error", folder_with("data.mdb", None)),
        ("lock.mdb of random bytes", "any", folder_with("lock.mdb", junk(8192), copy=True)),
    ]


def scenario_crafted(ctx: Ctx) -> Outcome:
    cases = _crafted_cases(ctx)
    res = Outcome("crafted", len(cases) * 3)
    _run_cases(ctx, res, cases, None)
    res.need(
        f"each crafted store gives a clear error naming it, where it is damaged "
        f"({res.ok}/{res.trials})",
        res.ok == res.trials,
    )
    res.need(f"no traceback, no signal, no hang ({res.crashes})", res.crashes == 0)
    return res
