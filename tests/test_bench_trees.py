"""tools/bench_trees.py: two checkouts side by side, each measurement in a fresh process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.bench_trees import main
from tools.make_samples import generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_one_pair_of_this_tree_against_itself_reports_every_measure(tmp_path, capsys):
    generate(tmp_path / "img", count=3, seed=4, scale=0.3)
    out = tmp_path / "trees.json"
    argv = [str(ROOT), str(ROOT), "--images", str(tmp_path / "img"), "--pairs", "1"]
    argv += ["--annotations", str(tmp_path / "img.json")]
    assert main([*argv, "--passes", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"build", "read-raw", "read-zstd", "loader"}
    for measures in results.values():
        for figures in measures.values():
            assert figures["old"]["median"] > 0 and figures["new"]["median"] > 0
    assert set(results["read-raw"]) == {"first pass us", "owned read us", "view us", "read_into us"}
    assert set(results["loader"]) == {"val epoch s", "read ms", "transform ms"}
    assert "read-zstd: view us" in capsys.readouterr().out


def test_a_folder_that_is_not_a_checkout_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), str(ROOT)])
    assert exit_info.value.code == 2
