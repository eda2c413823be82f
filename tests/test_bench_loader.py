"""tools/bench_loader.py runs each variant in a fresh process and reports every stage."""

from __future__ import annotations

import json

import pytest

from tools.bench_loader import main
from tools.make_samples import generate


@pytest.mark.parametrize("split", ["train", "val"])
def test_stage_table_and_ratios_for_both_pipelines(tmp_path, split, capsys):
    ann = generate(tmp_path / "img", count=4, seed=5)
    out = tmp_path / "bench.json"
    argv = [str(tmp_path / "img"), str(ann), "--split", split, "--sources", "cache"]
    argv += ["--workers", "1", "--batch-size", "2", "--size", "128", "--json", str(out)]
    argv += ["--scratch", str(tmp_path)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert [(r["source"], r["pipeline"]) for r in doc["rows"]] == [
        ("cache", "reference"),
        ("cache", "new"),
    ]
    for row in doc["rows"]:
        stages = row["stages_ms"]
        assert set(stages) == {"read", "transform", "targets", "other", "total", "ipc"}
        assert stages["read"] > 0 and stages["transform"] > 0 and stages["ipc"] > 0
        assert (stages["targets"] > 0) == (split == "train")
        assert row["images"] == 4
    assert "cache_sample_reference_over_new" in doc["ratios"]
    assert ("targets_reference_over_new" in doc["ratios"]) == (split == "train")
    assert "| cache | new |" in capsys.readouterr().out


def test_missing_inputs_are_a_usage_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(tmp_path / "nope.json")]) == 2
    assert "need an image folder" in capsys.readouterr().err
