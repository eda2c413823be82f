"""tools/bench_memory.py and tools/bench_past_ram.py's read variants, on small stores."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np

from lmdb_cache import CacheWriter
from tools.bench_memory import main
from tools.bench_past_ram import VARIANTS, _epochs


def test_memory_bench_reports_an_epoch_and_access_of_each_tree(tmp_path):
    out = tmp_path / "mem.json"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["--store", str(tmp_path / "m.lmdb"), "--records", "600", "--workers", "1",
                     "--access", "--reads", "50", "--rounds", "1", "--json", str(out)])  # fmt: skip
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["build"]["records"] == 600 and doc["build"]["peak_bytes"] > 0
    (epoch,) = doc["epoch"].values()
    assert epoch["images"] == 600 and len(epoch["workers"]) == 1
    assert epoch["workers"][0]["peak"]["uss"] >= epoch["workers"][0]["first"]["uss"] > 0
    ((row,),) = doc["access"].values()
    assert row["position_us"] > 0 and row["key_us"] > 0


def test_each_past_ram_variant_reads_every_record(tmp_path):
    rng = np.random.default_rng(0)
    with CacheWriter(tmp_path / "s.lmdb") as writer:
        for i in range(40):
            writer.add(f"t/{i:03d}.png", image=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for variant in VARIANTS:
        (row,) = _epochs(tmp_path / "s.lmdb", 1, 0, variant)
        assert (row["variant"], row["epoch"]) == (variant, 1)
        assert row["images_per_s"] > 0 and row["resident_fraction"] > 0
