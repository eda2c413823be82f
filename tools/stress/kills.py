"""``kills``: build-cache killed with SIGKILL at a random moment, then run again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from lmdb_cache.images import scan_images

from .common import Ctx, Outcome, console_cmd, replace_file, role_cmd, run_cmd, short, start_cmd


def _mutate(ctx: Ctx, src: Path, state: dict[str, Any]) -> None:
    """Change a fifth of the sources, add and remove a few (contents: originals' bytes)."""
    rng, keys = ctx.rng, scan_images(src)
    for key in rng.sample(keys, max(1, len(keys) // 5)):
        replace_file(src / key, rng.choice(ctx.originals).read_bytes())
    for _ in range(rng.randint(1, 3)):
        state["added"] += 1
        key = f"added/{state['added']:04d}.jpg"
        replace_file(src / key, rng.choice(ctx.originals).read_bytes())
        keys.append(key)
    for _ in range(rng.randint(1, 3)):
        (src / keys.pop(rng.randrange(len(keys)))).unlink()


def _prepare_kill(ctx: Ctx, kind: str, src: Path, store: Path, state: dict[str, Any]) -> list:
    """Set the stage for one run of ``kind``; returns its build-cache options."""
    if kind == "update":
        _mutate(ctx, src, state)
        return []
    state["side"] = ctx.rng.choice(state["sides"])
    if kind == "build":
        shutil.rmtree(store, ignore_errors=True)
        return ["--max-side", state["side"]]
    return ["--rebuild", "--max-side", state["side"]]


def _group_alive(pgid: int) -> int:
    """Processes of a process group that are still running (zombies do not count)."""
    alive = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        alive += fields[2] == str(pgid) and fields[0] not in "ZX"
    return alive


def _kill_after(cmd: list[str], delay: float, err_file: Path) -> tuple[bool, int, int]:
    """Start ``cmd`` and SIGKILL its main process after ``delay`` s. Returns (killed, its
    processes still running 0.3 s later, tracebacks on its stderr); the leftovers are then
    killed too, so that trials do not pile up."""
    with open(err_file, "wb") as err:
        p = start_cmd(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            p.wait(timeout=delay)
            killed = False
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            killed = True
    time.sleep(0.3)
    alive = _group_alive(p.pid)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return killed, alive, err_file.read_text(errors="replace").count("Traceback")


def _killed_state(store: Path) -> tuple[str | None, list[str], str]:
    """(crash, problem kinds, message) of validate-cache on what a killed build left."""
    if not (store / "data.mdb").exists():
        return None, ["no store yet"], ""
    p = run_cmd(console_cmd("validate-cache", store, "--json"))
    doc = p.doc()
    crash = p.crash() or (None if isinstance(doc, dict) else "validate-cache printed no JSON")
    return crash, sorted({f["kind"] for f in (doc or {}).get("problems", [])}), p.said()


def scenario_kills(ctx: Ctx) -> Outcome:
    res = Outcome("kills", ctx.args.kills)
    src, store = ctx.copy_sources("kills-src"), ctx.work / "kills.lmdb"
    sides = [ctx.args.max_side, max(32, ctx.args.max_side * 3 // 4)]
    state: dict[str, Any] = {"sides": sides, "side": sides[0], "added": 0}
    for side in sides:
        ctx.expected(src, side)  # every original at both sides: the mutations reuse their bytes
    took = {}
    for kind in ("build", "update", "rebuild"):
        extra = _prepare_kill(ctx, kind, src, store, state)
        p = run_cmd(console_cmd("build-cache", src, "-o", store, "-q", *extra))
        took[kind] = p.seconds
        if p.rc != 0:
            res.need(f"an unkilled {kind} succeeds ({short(p.said())})", False)
            return res
    res.tables["unkilled run (s)"] = [list(took), [round(s, 2) for s in took.values()]]
    after_kill: dict[str, int] = {}
    alive = tracebacks = finished = 0
    for _ in range(ctx.args.kills):
        kind = ctx.rng.choices(("build", "update", "rebuild"), (1, 2, 1))[0]
        extra = _prepare_kill(ctx, kind, src, store, state)
        via = "api" if ctx.rng.random() < 2 / 3 else "console"
        killed_cmd = (
            role_cmd("_build", src, store, "--commit-images", 8, *extra)
            if via == "api"
            else console_cmd("build-cache", src, "-o", store, "-q", *extra)
        )
        delay = ctx.rng.uniform(0, took[kind])
        killed, left, tb = _kill_after(killed_cmd, delay, ctx.work / "killed.stderr")
        alive, tracebacks, finished = (
            alive + (left > 0),
            tracebacks + (tb > 0),
            finished + 1 - killed,
        )
        crash, kinds, said = _killed_state(store)
        for k in kinds or ["healthy"]:
            after_kill[k] = after_kill.get(k, 0) + 1
        problem = None
        if set(kinds) - {"incomplete", "format", "no store yet"}:
            problem = f"the killed build left {kinds}: {short(said, 300)}"
        rerun = run_cmd(console_cmd("build-cache", src, "-o", store, "-q", *extra), 900)
        if rerun.rc != 0:
            problem = problem or f"re-run exit {rerun.rc}: {short(rerun.said(), 300)}"
            crash = crash or rerun.crash()
        else:
            c, p = ctx.check_store(store, src, state["side"])
            crash, problem = crash or c, problem or p
        line = (
            f"{kind} via {via} killed at {delay:.2f} of {took[kind]:.1f} s"
            f"{'' if killed else ' (had finished)'}, then {kinds or 'healthy'}; re-run exit "
            f"{rerun.rc}: " + (problem or "valid, complete, pixels = fresh decode")
        )
        res.count(
            crash,
            problem is None,
            line,
            kind=kind,
            via=via,
            delay=round(delay, 3),
            unkilled=round(took[kind], 2),
            killed=killed,
            after_kill=kinds,
            rerun_s=round(rerun.seconds, 2),
            problem=problem,
        )
        if problem or crash:  # start the next trial from a sound store
            again = ["--rebuild", "--max-side", state["side"]]
            run_cmd(console_cmd("build-cache", src, "-o", store, "-q", *again), 900)
    res.tables["validate-cache right after the kill"] = [["state", "trials"]]
    res.tables["validate-cache right after the kill"] += sorted(map(list, after_kill.items()))
    res.need(
        f"every killed build re-runs to a valid, complete store equal to a fresh decode "
        f"({res.ok}/{res.trials})",
        res.ok == res.trials > 0,
    )
    res.need(f"no crash in the re-runs and checks ({res.crashes})", res.crashes == 0)
    if finished:
        res.notes.append(f"{finished} run(s) had finished before their kill time")
    if alive or tracebacks:
        res.notes.append(
            f"after kill -9 of build-cache's main process, its decoding workers still "
            f"ran 0.3 s later in {alive} trial(s) and printed a traceback "
            f"(BrokenPipeError) in {tracebacks}"
        )
    return res
