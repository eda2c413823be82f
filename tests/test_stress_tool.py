"""tools/stress_cache.py and its byte map, tools/stress/regions.py."""

from __future__ import annotations

import json
import random

import lmdb
import pytest

from lmdb_cache import build_cache
from tools.make_samples import generate
from tools.stress.regions import METADATA, PIXELS, REGIONS, map_regions
from tools.stress_cache import main

DATABASES = (b"manifest", b"meta", b"pixels", b"failures")


@pytest.fixture(scope="module")
def updated_store(tmp_path_factory):
    """A store built, then updated (so LMDB has free pages), with one failed source."""
    root = tmp_path_factory.mktemp("regions")
    src = root / "src"
    generate(src, count=5, seed=1, scale=0.4)
    (src / "broken.jpg").write_bytes(b"not an image\n" * 40)
    store = root / "store.lmdb"
    build_cache(src, store, workers=1, max_side=120)
    (src / "receipt_0000.jpg").write_bytes((src / "receipt_0001.jpg").read_bytes())
    build_cache(src, store, workers=1)
    return store


def _values_by_lmdb(store) -> dict[tuple[str, bytes], bytes]:
    env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=8)
    try:
        with env.begin() as txn:
            return {
                (name.decode(), bytes(k)): bytes(v)
                for name in DATABASES
                for k, v in txn.cursor(db=env.open_db(name, txn=txn, create=False))
            }
    finally:
        env.close()


def test_value_spans_hold_exactly_the_values_lmdb_returns(updated_store):
    data = (updated_store / "data.mdb").read_bytes()
    regions = map_regions(updated_store)
    found = {}
    for span in regions.spans:
        if span.region in (PIXELS, METADATA):
            name, key = span.what.split(" ", 1)
            found[name, key.removesuffix(" value")] = data[span.start : span.end]
    expected = {
        (name, repr(k.decode())): v for (name, k), v in _values_by_lmdb(updated_store).items()
    }
    assert found == expected


def test_spans_cover_the_file_once_in_order(updated_store):
    regions = map_regions(updated_store)
    ends = [0] + [s.end for s in regions.spans[:-1]]
    assert [s.start for s in regions.spans] == ends
    assert regions.spans[-1].end == regions.size == (updated_store / "data.mdb").stat().st_size


def test_every_region_is_present_and_sampled_from_itself(updated_store):
    regions = map_regions(updated_store)
    rng = random.Random(0)
    drawn = {r: {regions.at(regions.sample(rng, r)).region for _ in range(50)} for r in REGIONS}
    assert drawn == {r: {r} for r in REGIONS}


@pytest.mark.slow
def test_quick_run_meets_every_criterion(tmp_path):
    out = tmp_path / "report.json"
    code = main(["all", "--quick", "--work", str(tmp_path / "work"), "--json", str(out)])
    report = json.loads(out.read_text())
    failed = [
        f"{name}: {text}"
        for name, scenario in report["scenarios"].items()
        for text, passed in scenario["criteria"]
        if not passed
    ]
    assert code == 0, "\n".join(failed)
    assert sorted(report["scenarios"]) == sorted(
        [
            "kills",
            "readers",
            "flips",
            "truncate",
            "crafted",
            "nodes",
            "forged",
            "concurrent",
            "epochs",
        ]
    )
