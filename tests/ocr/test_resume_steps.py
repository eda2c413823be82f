"""Step records, exact mid-epoch resume and sample sets that do not depend on the ranks.

Every run here is a fresh process (``ocr-train``, or ``torchrun`` with two gloo ranks), one
torch thread each, on 17 generated receipts: with a global batch of 8 (1 rank x 8, 2 ranks
x 4) an epoch has 3 steps, the last one holding a single sample, which one rank of two takes
while the other runs a filler share (``ocr.sampling``); two epochs make 6 global steps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmdb_cache import build_cache
from ocr.checkpoint import load_checkpoint
from tools.make_samples import generate

from .runs import MAX_SIDE, tiny_config

pytestmark = pytest.mark.slow

ENV = dict(os.environ, OMP_NUM_THREADS="1")
TRAIN = [sys.executable, "-m", "ocr.cli", "train"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


@pytest.fixture(scope="module")
def receipts17(tmp_path_factory):
    """17 receipts (folder, annotation file) and their cache."""
    root = tmp_path_factory.mktemp("receipts17")
    ann = generate(root / "img", count=17, seed=5)
    build_cache(root / "img", root / "img.lmdb", max_side=MAX_SIDE, workers=1)
    return root, ann


def _config(data, out: Path, ranks: int = 1, batch: int = 8, workers: int = 0) -> Path:
    cfg = tiny_config(
        data, out, epochs=2, log_every_steps=1, checkpoint_every_steps=2, threads=1, seed=3
    )
    cfg["dataloader"].update(batch_size=batch // ranks, num_workers=workers)
    cfg["datasets"]["train_dataset"]["image_cache"] = str(data[0] / "img.lmdb")
    # Validation on the first 4 receipts only: it is not what these tests look at.
    annotations = json.loads(Path(data[1]).read_text())
    names = sorted(annotations["images"])[:4]
    annotations["images"] = {n: annotations["images"][n] for n in names}
    val = out.parent / "val4.json"
    val.write_text(json.dumps(annotations))
    cfg["datasets"]["val_dataset"]["annotation_path"] = str(val)
    path = out.with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _command(ranks: int, args: list[str]) -> list[str]:
    if ranks == 1:
        return [*TRAIN, *args]
    return [*TORCHRUN, str(ranks), "-m", "ocr.cli", "train", *args]


def _run(ranks: int, args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _command(ranks, [*args, "--quiet"]), capture_output=True, text=True, env=ENV, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _steps(out: Path) -> list[dict]:
    return [r for r in _records(out) if "step" in r]


def _descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _kill_after(ranks: int, args: list[str], out: Path, records: int) -> None:
    """Start a run, SIGKILL it (every process of it) once log.jsonl has ``records`` step
    records, and check that no process of it is left."""
    proc = subprocess.Popen(
        _command(ranks, [*args, "--quiet"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            log = out / "log.jsonl"
            if log.exists() and log.read_text().count('"step"') >= records:
                break
            time.sleep(0.002)
        assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr}"
    finally:
        # torchrun starts each rank in a session of its own: kill the whole tree, ranks first.
        tree = _descendants(proc.pid)
        for pid in [*tree, proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    time.sleep(0.2)
    assert not [pid for pid in tree if _alive(pid)], "a process of the run survived"


def _equal_epochs(a: list[dict], b: list[dict]) -> None:
    """The epoch records agree on everything but the time and throughput of the pass."""
    keys = ("epoch", "samples", "data", "metrics")
    for x, y in zip(a, b, strict=True):
        assert {k: x.get(k) for k in keys} == {k: y.get(k) for k in keys}
        assert x["train"]["loss"] == y["train"]["loss"]
        assert x["train"]["loss_parts"] == y["train"]["loss_parts"]


@pytest.fixture(scope="module")
def uninterrupted(receipts17, tmp_path_factory):
    """The step and epoch records of whole runs, by (ranks, workers)."""
    runs = {}
    for ranks, workers in ((1, 0), (2, 0)):
        out = tmp_path_factory.mktemp("whole") / f"r{ranks}w{workers}"
        _run(ranks, ["-c", str(_config(receipts17, out, ranks, workers=workers))])
        runs[ranks, workers] = _records(out)
    return runs


@pytest.fixture(scope="module")
def killed(receipts17, tmp_path_factory):
    """``killed(ranks, workers)``: the ``last.pt`` of a run SIGKILLed after its 5th step
    record (one run per layout, kept for the module's tests; each resumes a copy)."""
    done: dict[tuple[int, int], Path] = {}

    def get(ranks: int, workers: int) -> Path:
        if (ranks, workers) not in done:
            out = tmp_path_factory.mktemp("killed") / "run"
            config = _config(receipts17, out, ranks, workers=workers)
            _kill_after(ranks, ["-c", str(config)], out, 5)
            done[ranks, workers] = out / "last.pt"
        return done[ranks, workers]

    return get


def _resumable(checkpoint: Path, tmp_path: Path) -> list[str]:
    """``--resume`` of a copy of ``checkpoint``, writing into a folder of this test."""
    copy = tmp_path / "last.pt"
    shutil.copyfile(checkpoint, copy)
    return ["--resume", str(copy), "-o", str(tmp_path / "run")]


@pytest.mark.parametrize(("ranks", "workers"), [(1, 0), (1, 2), (2, 0)])
def test_run_killed_mid_epoch_resumes_with_the_step_records_of_an_uninterrupted_run(
    killed, uninterrupted, tmp_path, ranks, workers
):
    checkpoint = killed(ranks, workers)
    saved = load_checkpoint(checkpoint)
    assert (saved["epoch"], saved["step"]) == (1, 1), "last.pt holds global step 4"
    _run(ranks, _resumable(checkpoint, tmp_path))
    whole = uninterrupted[ranks, 0]  # the workers change nothing
    records = _records(tmp_path / "run")
    steps = [r for r in records if "step" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert steps == [r for r in whole if "step" in r]  # loss to the bit, digests
    _equal_epochs([r for r in records if "train" in r], [r for r in whole if "train" in r])


def test_one_rank_and_two_ranks_see_the_same_sample_sets_at_every_step(uninterrupted):
    one = [r for r in uninterrupted[1, 0] if "step" in r]
    two = [r for r in uninterrupted[2, 0] if "step" in r]
    assert len(one) == len(two) == 6
    for a, b in zip(one, two, strict=True):
        assert (a["step"], a["samples"], a["data"], a["images"]) == (
            b["step"],
            b["samples"],
            b["data"],
            b["images"],
        )
    assert [r["images"] for r in one[:3]] == [8, 8, 1]  # the last step's filler is not counted
    epochs = [
        [r for r in run if "train" in r] for run in (uninterrupted[1, 0], uninterrupted[2, 0])
    ]
    assert [r["samples"] for r in epochs[0]] == [r["samples"] for r in epochs[1]]


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 1)])
def test_mid_epoch_checkpoint_resumes_on_another_number_of_ranks_with_the_same_samples(
    killed, uninterrupted, tmp_path, before, after
):
    checkpoint = killed(before, 0)
    assert load_checkpoint(checkpoint)["step"] > 0, "a mid-epoch checkpoint"
    _run(after, [*_resumable(checkpoint, tmp_path), f"dataloader.batch_size={8 // after}"])
    steps = _steps(tmp_path / "run")
    whole = [r for r in uninterrupted[after, 0] if "step" in r]
    assert [(r["step"], r["samples"], r["data"]) for r in steps] == [
        (r["step"], r["samples"], r["data"]) for r in whole
    ]


def test_mid_epoch_resume_with_another_global_batch_is_refused(killed, tmp_path):
    proc = subprocess.run(
        [*TRAIN, *_resumable(killed(1, 0), tmp_path), "dataloader.batch_size=4", "--quiet"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "global batch of 8" in proc.stderr and "this run's is 4" in proc.stderr
    assert not (tmp_path / "run" / "log.jsonl").exists()
