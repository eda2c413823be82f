"""tools/demo.py: one demo per folder, and a failure that says where the runs parted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ocr.config import load_config
from tools import demo
from tools.folder_lock import LOCK_NAME, FolderBusyError, hold_folder

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"precision": 0.9, "recall": 0.8, "hmean": 0.8470588235294118}
ENV = {
    "torch_threads": 2,
    "thread_variables": {"OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None},
    "torch": "2.13.0+cpu",
    "numpy": "2.4.6",
    "opencv": "5.1.0",
    "pillow": "13.0.0",
    "lmdb_image_cache": "0.1.0",
    "python": "3.11.7",
    "cpu": "AMD EPYC",
    "cpus": 2,
}
_HOLDER = """
import sys
from pathlib import Path
from tools.folder_lock import hold_folder
with hold_folder(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder():
    """Start a process that holds a folder's lock until the test ends; returns its Popen."""
    procs = []

    def start(folder: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(folder)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout.readline() == "held\n"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_second_demo_on_held_data_exits_at_once_naming_the_holder(tmp_path, holder, capsys):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "receipt_0000.png").write_bytes(b"the first demo's image")
    proc = holder(data)
    assert demo.main(["--data", str(data), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"another demo is running in this checkout (pid {proc.pid} since " in err
    assert "wait for it or pass --runs/--data to use other folders" in err
    assert (data / "train" / "receipt_0000.png").read_bytes() == b"the first demo's image"


def test_second_demo_on_held_runs_exits_at_once(tmp_path, holder, capsys):
    runs = tmp_path / "runs"
    (runs / "disk").mkdir(parents=True)
    holder(runs)
    assert demo.main(["--data", str(tmp_path / "data"), "--runs", str(runs)]) == 2
    assert str(runs) in capsys.readouterr().err
    assert (runs / "disk").is_dir() and not (tmp_path / "data" / "train").exists()


def test_lock_of_a_killed_holder_is_free(tmp_path, holder):
    proc = holder(tmp_path)
    with pytest.raises(FolderBusyError):
        with hold_folder(tmp_path):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # the file stays; the kernel dropped the lock
    with hold_folder(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} since ")


def test_data_option_points_every_dataset_at_the_folder(tmp_path):
    config = load_config(ROOT / demo.CONFIG, demo._data_overrides(tmp_path / "d"))
    paths = {
        split: (
            config["datasets"][split]["image_path"],
            config["datasets"][split]["annotation_path"],
        )
        for split in ("train_dataset", "val_dataset", "test_dataset")
    }
    d = tmp_path / "d"
    assert paths == {
        "train_dataset": (str(d / "train"), str(d / "train.json")),
        "val_dataset": (str(d / "val"), str(d / "val.json")),
        "test_dataset": (str(d / "val"), str(d / "val.json")),
    }


def test_default_data_folder_needs_no_override():
    assert demo._data_overrides(ROOT / demo.DATA) == []


def _step(n, loss, data):
    return {"epoch": 1, "step": n, "loss": loss, "samples": f"s{n}", "data": data}


def _epoch(loss, metrics):
    return {"epoch": 1, "train": {"loss": loss, "wall_s": 1.0}, "metrics": metrics}


@pytest.fixture
def fake_runs(monkeypatch, tmp_path):
    """Replace the demo's data, training and table by hand-written runs; returns a setter
    taking each run's log records and summary."""
    runs: dict[str, tuple[list, dict]] = {}

    def train_and_evaluate(args):
        for name, (records, _) in runs.items():
            (args.runs / name).mkdir(parents=True, exist_ok=True)
            text = "".join(json.dumps(r) + "\n" for r in records)
            (args.runs / name / "log.jsonl").write_text(text)
        evals = {source: dict(METRICS) for source in ("disk", "preload", "cache")}
        return runs["disk"][1], runs["cache"][1], evals

    monkeypatch.setattr(demo, "_make_data", lambda args: 0.0)
    monkeypatch.setattr(demo, "_train_and_evaluate", train_and_evaluate)
    monkeypatch.setattr(demo, "_report", lambda *args: None)

    def set_runs(disk, cache):
        runs.update(disk=disk, cache=cache)
        return ["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs")]

    return set_runs


def test_different_metrics_print_the_first_difference_and_the_environments(fake_runs, capsys):
    other = {**METRICS, "hmean": 0.8}
    argv = fake_runs(
        disk=(
            [_step(1, 3.5, "d1"), _step(2, 3.25, "d2"), _epoch(3.375, METRICS)],
            {"metrics": METRICS, "environment": ENV},
        ),
        cache=(
            [_step(1, 3.5, "d1"), _step(2, 3.0, "d2"), _epoch(3.25, other)],
            {"metrics": other, "environment": {**ENV, "torch_threads": 4}},
        ),
    )
    assert demo.main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert "FAILED: the disk and cache runs ended with different metrics" in err
    i = err.index("first difference at line 2 (epoch 1, step 2) of log.jsonl:")
    assert err[i + 1] == "  loss: 3.25 (disk) vs 3.0 (cache)"
    assert "same inputs, different results: the compute differed" in err[i + 2]
    assert err[i + 3].startswith("environment of the disk run: torch 2.13.0+cpu (2 threads,")
    assert err[i + 4].startswith("environment of the cache run: torch 2.13.0+cpu (4 threads,")


def test_different_data_is_named_as_the_cause(fake_runs, capsys):
    other = {**METRICS, "hmean": 0.8}
    argv = fake_runs(
        disk=([_step(1, 3.5, "d1"), _epoch(3.5, METRICS)], {"metrics": METRICS}),
        cache=([_step(1, 3.75, "e1"), _epoch(3.75, other)], {"metrics": other}),
    )
    assert demo.main(argv) == 1
    err = capsys.readouterr().err
    assert "  data: d1 (disk) vs e1 (cache)" in err
    assert "the runs were fed different data" in err
    assert "the runs' summary.json record no environment; this process" in err


def test_same_metrics_but_different_losses_fail(fake_runs, capsys):
    argv = fake_runs(
        disk=([_step(1, 3.5, "d1"), _epoch(3.5, METRICS)], {"metrics": METRICS}),
        cache=([_step(1, 3.5000000000000004, "d1"), _epoch(3.5, METRICS)], {"metrics": METRICS}),
    )
    assert demo.main(argv) == 1
    err = capsys.readouterr().err
    assert "FAILED: the disk and cache runs logged different records" in err
    assert "  loss: 3.5 (disk) vs 3.5000000000000004 (cache)" in err


def test_identical_runs_pass(fake_runs, capsys):
    records = [_step(1, 3.5, "d1"), _epoch(3.5, METRICS)]
    argv = fake_runs(disk=(records, {"metrics": METRICS}), cache=(records, {"metrics": METRICS}))
    assert demo.main(argv) == 0
    assert capsys.readouterr().err == ""
