"""tools/repro_check.py: K disk/cache training pairs, each compared within and with pair 1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tools import repro_check
from tools.repro_check import RunResult, hogs, judge

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"precision": 0.5, "recall": 0.25, "hmean": 0.3333333333333333}


def _run(losses, data="d", metrics=METRICS) -> RunResult:
    records = [
        {"epoch": 1, "step": n, "loss": loss, "samples": f"s{n}", "data": f"{data}{n}"}
        for n, loss in enumerate(losses, 1)
    ]
    records.append({"epoch": 1, "train": {"loss": sum(losses) / len(losses)}, "metrics": metrics})
    return RunResult(Path("run"), records, {"metrics": metrics}, 1.0)


@pytest.mark.slow
def test_two_pairs_of_tiny_runs_are_identical(tmp_path, capsys):
    # The demo's config, shrunk to seconds a run: a narrow DBNet on small crops.
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"_base_: {ROOT / 'configs' / 'demo.yaml'}\n"
        "datasets:\n"
        "  train_dataset:\n"
        "    transform: {name: train, size: 128, scale_range: [0.8, 1.2], flip_prob: 0.5}\n"
        "  val_dataset:\n"
        "    transform: {name: val, size: 256}\n"
        "model: {width: 8, inner_channels: 32}\n"
    )
    out = tmp_path / "repro.json"
    argv = ["--pairs", "2", "--train-count", "4", "--val-count", "2", "--epochs", "1"]
    argv += ["--batch-size", "2", "--config", str(config), "--work", str(tmp_path / "work")]
    assert repro_check.main([*argv, "--json", str(out)]) == 0
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[0].startswith("pair 1/2: identical (disk = cache; final loss ")
    assert stdout[1].startswith("pair 2/2: identical (disk = cache = pair 1; final loss ")
    assert stdout[2] == "2/2 identical"
    doc = json.loads(out.read_text())
    assert (doc["pairs"], doc["identical"]) == (2, 2)
    assert [r["identical"] for r in doc["results"]] == [True, True]
    assert doc["results"][0]["metrics"] == doc["results"][1]["metrics"] is not None
    runs = tmp_path / "work" / "runs"
    for pair in ("pair_01", "pair_02"):
        sources = [
            json.loads((runs / pair / name / "summary.json").read_text())["train_source"]
            for name in ("disk", "cache")
        ]
        assert sources == ["disk", "cache"]


def test_judge_finds_nothing_in_equal_runs():
    run = _run([3.5, 3.25])
    assert judge(2, (run, _run([3.5, 3.25])), (run, run))["identical"] is True


def test_judge_reports_a_compute_divergence_within_a_pair():
    disk, cache = _run([3.5, 3.25, 3.0]), _run([3.5, 3.25, 3.0000000000000004])
    result = judge(1, (disk, cache), (disk, cache))
    assert result["identical"] is False
    [difference] = result["differences"]
    assert difference["between"] == "disk vs cache"
    assert difference["divergence"]["where"] == "line 3 (epoch 1, step 3)"
    assert difference["divergence"]["fields"] == {"loss": [3.0, 3.0000000000000004]}
    assert "the compute differed" in difference["divergence"]["cause"]


def test_judge_reports_a_pair_that_does_not_repeat_pair_1():
    first = (_run([3.5, 3.25]), _run([3.5, 3.25]))
    other = _run([3.5, 3.25], data="x")  # same losses, other inputs: both runs of pair 3
    result = judge(3, (other, other), first)
    assert [d["between"] for d in result["differences"]] == ["disk vs pair 1", "cache vs pair 1"]
    assert result["differences"][0]["lines"][0] == (
        "first difference at line 1 (epoch 1, step 1) of log.jsonl:"
    )
    assert "  data: d1 (pair 1 disk) vs x1 (pair 3 disk)" in result["differences"][0]["lines"]


def test_judge_reports_summary_metrics_that_differ():
    disk = _run([3.5])
    cache = _run([3.5])
    cache.summary = {"metrics": {**METRICS, "hmean": 0.3}}
    [difference] = judge(1, (disk, cache), (disk, cache))["differences"]
    assert difference["divergence"] is None
    assert difference["metrics"] == {"hmean": [0.3333333333333333, 0.3]}


def test_main_prints_the_divergence_and_exits_1(monkeypatch, tmp_path, capsys):
    runs = iter([_run([3.5, 3.25]), _run([3.5, 3.0])])
    monkeypatch.setattr(repro_check, "_make_data", lambda data, args: None)
    monkeypatch.setattr(repro_check, "_train", lambda *args: next(runs))
    assert repro_check.main(["--pairs", "1", "--work", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "pair 1/1: DIFFERENT (1.0 s + 1.0 s)"
    assert out[1:4] == [
        "  disk vs cache:",
        "    first difference at line 2 (epoch 1, step 2) of log.jsonl:",
        "      loss: 3.25 (disk) vs 3.0 (cache)",
    ]
    assert "0/1 identical" in out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_hogs_burn_until_the_block_ends():
    with hogs(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.returncode is not None and not _alive(p.pid) for p in procs)


def test_hogs_are_stopped_when_the_block_raises():
    with pytest.raises(KeyboardInterrupt), hogs(1) as procs:
        raise KeyboardInterrupt
    assert procs[0].returncode is not None


@pytest.mark.parametrize("option", ["--pairs", "--epochs"], ids=["pairs", "epochs"])
def test_zero_is_a_usage_error(option, capsys):
    with pytest.raises(SystemExit) as exit_:
        repro_check.main([option, "0"])
    assert exit_.value.code == 2
    assert "must be at least 1, got 0" in capsys.readouterr().err
