"""``flips``: one XORed byte in a copy of a store, aimed by region, then validate-cache."""

from __future__ import annotations

import os
import queue
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import Ctx, Outcome, Proc, console_cmd, run_cmd, short
from .regions import FREE, METADATA, PIXELS, REGIONS, STRUCTURE, map_regions

SHARES = {METADATA: 0.25, STRUCTURE: 0.25, FREE: 0.20}  # of the flips; pixels get the rest


def scenario_flips(ctx: Ctx) -> Outcome:
    res = Outcome("flips", ctx.args.flips)
    base = ctx.base_store()
    regions = map_regions(base)
    quota = {r: max(1, round(ctx.args.flips * s)) for r, s in SHARES.items()}
    quota[PIXELS] = max(1, ctx.args.flips - sum(quota.values()))
    plan = [
        (r, regions.sample(ctx.rng, r), ctx.rng.randrange(1, 256))
        for r in REGIONS
        for _ in range(quota[r])
    ]
    ctx.rng.shuffle(plan)
    res.planned = len(plan)
    slots: queue.Queue[Path] = queue.Queue()
    for k in range(ctx.args.jobs):
        slots.put(ctx.work / "flips" / f"slot{k}")

    def flip(item: tuple[str, int, int]) -> Proc:
        slot = slots.get()
        try:
            slot.mkdir(parents=True, exist_ok=True)
            (slot / "lock.mdb").unlink(missing_ok=True)
            shutil.copyfile(base / "data.mdb", slot / "data.mdb")
            fd = os.open(slot / "data.mdb", os.O_RDWR)
            try:
                os.pwrite(fd, bytes([os.pread(fd, 1, item[1])[0] ^ item[2]]), item[1])
            finally:
                os.close(fd)
            return run_cmd(console_cmd("validate-cache", slot, "--json"))
        finally:
            slots.put(slot)

    table = {r: [0, 0, 0, 0] for r in REGIONS}  # flips, reported, not reported, crashes
    kinds: dict[str, dict[str, int]] = {r: {} for r in REGIONS}
    with ThreadPoolExecutor(ctx.args.jobs) as ex:
        for (region, offset, mask), p in zip(plan, ex.map(flip, plan), strict=True):
            doc, what = p.doc(), regions.at(offset).what
            crash = p.crash() or (
                None
                if p.rc in (0, 1) and isinstance(doc, dict)
                else f"exit {p.rc} and not one JSON document on stdout"
            )
            reported = bool(not crash and p.rc == 1 and doc["ok"] is False)
            table[region][0] += 1
            table[region][3 if crash else 1 if reported else 2] += 1
            for k in {f["kind"] for f in doc["problems"]} if not crash else ():
                kinds[region][k] = kinds[region].get(k, 0) + 1
            agrees = bool(crash) or (p.rc == 0) == doc["ok"]
            good = agrees and (reported or region in (STRUCTURE, FREE))
            line = f"{region} byte {offset} ^{mask:#04x} ({short(what, 60)}): exit {p.rc}, " + (
                "reported" if reported else "not reported"
            )
            res.count(
                crash,
                good,
                line,
                region=region,
                offset=offset,
                xor=mask,
                what=what,
                rc=p.rc,
                reported=reported,
            )
            if not crash and not reported and region != FREE:
                res.notes.append(
                    f"not reported: {region}: {what} (offset {offset}, xor {mask:#04x})"
                )
    res.tables["flips by region"] = [
        ["region", "flips", "reported", "not reported", "crashes"],
        *[[r, *v] for r, v in table.items()],
    ]
    res.tables["problem kinds reported"] = [
        ["region hit", "kinds"],
        *[
            [r, ", ".join(f"{k} {n}" for k, n in sorted(v.items())) or "-"]
            for r, v in kinds.items()
        ],
    ]
    for region in (PIXELS, METADATA):
        n, hits = table[region][:2]
        res.need(f"every flip in {region} reported by validate-cache ({hits}/{n})", 0 < n == hits)
    res.need(
        f"no crash: every run exits 0 or 1 with one JSON document ({res.crashes} crashes)",
        res.crashes == 0,
    )
    return res
