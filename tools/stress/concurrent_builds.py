"""``concurrent``: two build-cache on one output started together."""

from __future__ import annotations

import subprocess

from .common import Ctx, Outcome, Proc, console_cmd, run_cmd, short, start_cmd


def scenario_concurrent(ctx: Ctx) -> Outcome:
    res = Outcome("concurrent", ctx.args.concurrent)
    src = ctx.copy_sources("concurrent-src")
    a, b = ctx.args.max_side, max(32, ctx.args.max_side * 3 // 4)
    variants = {
        "fresh": (["--max-side", a], ["--max-side", b]),
        "both --rebuild": (["--rebuild", "--max-side", a], ["--rebuild", "--max-side", b]),
        "update vs --rebuild": ([], ["--rebuild", "--max-side", b]),
    }
    for i in range(ctx.args.concurrent):
        name = list(variants)[i % len(variants)]
        store = ctx.work / f"concurrent{i}.lmdb"
        if name != "fresh":
            run_cmd(console_cmd("build-cache", src, "-o", store, "--max-side", a, "-q"))
        errs = [ctx.work / f"concurrent{i}-{j}.stderr" for j in (0, 1)]
        procs = []
        for j in (0, 1):
            with open(errs[j], "wb") as err:
                cmd = console_cmd("build-cache", src, "-o", store, "-q", *variants[name][j])
                procs.append(start_cmd(cmd, stdout=subprocess.DEVNULL, stderr=err))
        rcs = [p.wait(900) for p in procs]
        said = [e.read_text(errors="replace").strip() for e in errs]
        crash = Proc([], rcs[0], "", said[0]).crash() or Proc([], rcs[1], "", said[1]).crash()
        how, good = "serialized", rcs == [0, 0]
        if sorted(rcs) == [0, 2]:
            loser = rcs.index(2)
            named = f"process {procs[1 - loser].pid}" in said[loser]
            good = named or "was built with" in said[loser]
            how = f"excluded: exit 2, {short(said[loser].replace(str(store), 'STORE'), 110)}"
        elif not good:
            how = f"exits {rcs}: {short(' | '.join(said))}"
        info = run_cmd(console_cmd("cache-info", store, "--json")).doc() or {}
        side = info.get("settings", {}).get("max_side")
        c, problem = ctx.check_store(store, src, side)
        line = f"{name}: {how}; store max_side {side}: {problem or 'valid, complete, never mixed'}"
        res.count(
            crash or c,
            good and problem is None,
            line,
            variant=name,
            exits=rcs,
            how=how,
            max_side=side,
            problem=problem,
        )
    res.need(
        f"one build exits 2 naming the other's pid (or they serialize) and the store is never"
        f" mixed ({res.ok}/{res.trials})",
        res.ok == res.trials > 0,
    )
    res.need(f"no traceback, no signal, no hang ({res.crashes})", res.crashes == 0)
    return res
