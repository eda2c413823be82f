"""What every scenario shares: child processes, their outcome, the scenario context.

A scenario starts real processes (the venv's console scripts, or ``tools/stress_cache.py``
itself with a role such as ``_pixels``), judges each run through ``Proc`` and tallies its trials
in an ``Outcome``; ``Ctx`` holds the options, the scratch folder, the seeded randomness and the
reference decodes every check compares against.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmdb_cache.images import scan_images

ROOT = Path(__file__).resolve().parents[2]
SELF = str(ROOT / "tools" / "stress_cache.py")  # the entry point the child roles run through
BIN = Path(sys.executable).parent


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def console_cmd(name: str, *args: Any) -> list[str]:
    return [str(BIN / name), *map(str, args)]


def role_cmd(role: str, *args: Any) -> list[str]:
    return [sys.executable, SELF, role, *map(str, args)]


def short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def replace_file(path: Path, data: bytes) -> None:
    """Replace a file in one step, as an editor or a sync tool would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class Proc:
    """A finished process: exit status (None: killed at its timeout), output and wall time."""

    cmd: list[str]
    rc: int | None
    out: str
    err: str
    seconds: float = 0.0

    def crash(self) -> str | None:
        """Why the run counts as a crash (a hang, a signal, a traceback), or None."""
        if self.rc is None:
            return "hung: killed at its timeout"
        if self.rc < 0:
            return f"killed by signal {-self.rc} ({signal.Signals(-self.rc).name})"
        if "Traceback (most recent call last)" in self.err:
            return "traceback: " + short(self.err.strip().splitlines()[-1], 300)
        return None

    def doc(self) -> Any:
        """The single JSON document on stdout, or None."""
        try:
            return json.loads(self.out)
        except ValueError:
            return None

    def said(self) -> str:
        """What the run told its user: a JSON report's problem messages, else stderr."""
        doc = self.doc()
        if isinstance(doc, dict) and doc.get("problems"):
            return " | ".join(p["message"] for p in doc["problems"])
        if isinstance(doc, dict) and doc.get("error"):
            return f"{doc['error']}: {doc['message']}"
        return self.err.strip()


def start_cmd(cmd: list[str], **streams: Any) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **streams)


def run_cmd(cmd: list[str], timeout: float = 300) -> Proc:
    start = time.monotonic()
    try:
        p = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Proc(cmd, p.returncode, p.stdout, p.stderr, time.monotonic() - start)
    except subprocess.TimeoutExpired as e:
        out, err = (
            x.decode(errors="replace") if isinstance(x, bytes) else x or ""
            for x in (e.stdout, e.stderr)
        )
        return Proc(cmd, None, out, err, time.monotonic() - start)


@dataclass
class Outcome:
    """One scenario's counts, acceptance criteria, tables, notes and per-trial rows."""

    name: str
    planned: int = 0
    trials: int = 0
    ok: int = 0
    errors: int = 0
    crashes: int = 0
    seconds: float = 0.0
    criteria: list[list[Any]] = field(default_factory=list)  # [text, passed]
    tables: dict[str, list[list[Any]]] = field(default_factory=dict)  # title -> header, rows
    notes: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def count(self, crash: str | None, good: bool, line: str, **row: Any) -> None:
        """Tally one trial (a crash, as expected, or an error) and print its progress line."""
        verdict = "crashes" if crash else "ok" if good else "errors"
        setattr(self, verdict, getattr(self, verdict) + 1)
        self.trials += 1
        self.rows.append({**row, "verdict": verdict, "crash": crash})
        tag = {"ok": "ok", "errors": "ERROR", "crashes": "CRASH"}[verdict]
        crashed = f" ({crash})" if crash else ""
        log(f"[{self.name} {self.trials}/{self.planned}] {tag} {line}{crashed}")

    def need(self, text: str, passed: bool) -> None:
        self.criteria.append([text, bool(passed)])

    @property
    def passed(self) -> bool:
        return bool(self.criteria) and all(p for _, p in self.criteria)


class Ctx:
    """What the scenarios share: options, scratch folder, randomness, reference decodes."""

    def __init__(self, args: argparse.Namespace, work: Path, images: Path) -> None:
        self.args, self.work, self.images = args, work, images
        self.rng = random.Random(args.seed)
        self.originals = [images / k for k in scan_images(images)]
        self.refs: dict[tuple[str, int | None], list[int] | None] = {}
        self._base: Path | None = None
        self.base_key = ""

    def copy_sources(self, name: str, files: list[Path] | None = None) -> Path:
        dest = self.work / name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for path in files or self.originals:
            (dest / path.relative_to(self.images)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / path.relative_to(self.images))
        return dest

    def expected(self, src: Path, side: int | None) -> dict[str, list[int]]:
        """key -> [height, width, CRC-32] of a fresh decode of every image below ``src``
        (decoded once per content and side, in ``--jobs`` child processes)."""
        files = {key: src / key for key in scan_images(src)}
        shas = {key: hashlib.sha256(p.read_bytes()).hexdigest() for key, p in files.items()}
        todo = sorted({(shas[k], str(files[k])) for k in files if (shas[k], side) not in self.refs})
        chunks = [todo[i :: self.args.jobs] for i in range(self.args.jobs) if todo[i:]]
        with ThreadPoolExecutor(self.args.jobs) as ex:
            runs = ex.map(
                lambda c: run_cmd(role_cmd("_refs", side, *[f for _, f in c]), 900), chunks
            )
            for chunk, p in zip(chunks, runs, strict=True):
                if p.rc != 0 or p.doc() is None:
                    raise RuntimeError(f"reference decode failed: {short(p.err, 500)}")
                for (sha, _), ref in zip(chunk, p.doc(), strict=True):
                    self.refs[sha, side] = ref
        return {k: ref for k in files if (ref := self.refs[shas[k], side]) is not None}

    def check_store(self, store: Path, src: Path, side: int | None) -> tuple[str | None, Any]:
        """(crash, problem), both None when the store validates, is complete, has exactly
        the source's keys, every record equals a fresh decode at ``side``, and no rebuild
        folder was left beside it."""
        v = run_cmd(console_cmd("validate-cache", store, "--json"))
        doc = v.doc()
        if v.crash() or not isinstance(doc, dict):
            return v.crash() or f"validate-cache printed no JSON (exit {v.rc})", None
        if v.rc != 0 or not doc["ok"]:
            return None, "validate-cache: " + short(v.said(), 300)
        manifest = doc["manifest"]
        if not manifest["complete"] or manifest["settings"]["max_side"] != side:
            return None, f"manifest: complete {manifest['complete']}, {manifest['settings']}"
        left = sorted(p.name for p in store.parent.glob(f".{store.name}.*"))
        if left:
            return None, f"left beside the store: {left}"
        px = run_cmd(role_cmd("_pixels", store))
        if px.crash() or px.rc != 0:
            return px.crash(), f"reading every record failed: {short(px.said())}"
        got, want = px.doc(), self.expected(src, side)
        if got != want:
            differ = sorted(k for k in got.keys() & want.keys() if got[k] != want[k])
            return None, (
                f"{len(differ)} record(s) differ from a fresh decode {differ[:3]}, "
                f"missing {sorted(want.keys() - got.keys())[:3]}, "
                f"extra {sorted(got.keys() - want.keys())[:3]}"
            )
        return None, None

    def base_store(self) -> Path:
        """A store built, then updated (so LMDB has free pages), holding one failed source."""
        if self._base is None:
            src = self.copy_sources("base-src")
            (src / "broken.jpg").write_bytes(b"this is not a JPEG\n" * 64)
            store, side = self.work / "base.lmdb", self.args.max_side
            runs = [run_cmd(console_cmd("build-cache", src, "-o", store, "--max-side", side, "-q"))]
            replace_file(
                src / self.originals[0].relative_to(self.images), self.originals[1].read_bytes()
            )
            runs.append(run_cmd(console_cmd("build-cache", src, "-o", store, "-q")))
            runs.append(run_cmd(console_cmd("validate-cache", store, "--json")))
            if [p.rc for p in runs] != [1, 1, 0]:  # 1: broken.jpg failed, as it should
                raise RuntimeError(f"cannot make the base store: {[p.said() for p in runs]}")
            self._base = store
            self.base_key = self.originals[0].relative_to(self.images).as_posix()
        return self._base


def quiet_dataloader() -> Any:
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    return torch.utils.data.DataLoader
