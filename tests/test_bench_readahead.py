"""tools/bench_readahead.py: every variant reads every record of a cold store once."""

from __future__ import annotations

import contextlib
import io
import json

from tools.bench_readahead import VARIANTS, main
from tools.make_samples import generate


def test_each_variant_reads_the_whole_store_once(tmp_path):
    generate(tmp_path / "img", count=4, seed=2)
    out = tmp_path / "ra.json"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main([str(tmp_path / "img"), "--repeat", "1", "--batch", "2",
                     "--scratch", str(tmp_path / "work"), "--json", str(out)])  # fmt: skip
    assert code == 0
    doc = json.loads(out.read_text())
    assert [row["variant"] for row in doc["rows"]] == list(VARIANTS)
    sizes = {row["pixel_bytes"] for row in doc["rows"]}
    assert len(sizes) == 1 and sizes.pop() > 0  # the same records, whatever the hints
    assert all(row["images"] == 4 and row["seconds"] > 0 for row in doc["rows"])
