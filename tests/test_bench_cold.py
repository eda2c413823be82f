"""tools/bench_cold.py: a cold and a warm epoch per variant from an emptied page cache, the
derived device times, and the eviction and residency helpers it stands on."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tools.bench_cold import evict, find_block_device, main, resident_fraction
from tools.make_samples import generate

# The device classes as the task states them, written out again: the test must not take the
# figures from the code it checks.
CLASSES = {
    "local NVMe": (3e9, 500e3),
    "cloud block SSD": (250e6, 3e3),
    "network filesystem": (100e6, 1e3),
}


def _own_read_bytes() -> int | None:
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    return int(
        next(line for line in text.splitlines() if line.startswith("read_bytes:")).split()[1]
    )


def _written_and_read(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes, synced (so its pages are clean) and read once."""
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
    path.read_bytes()
    return path


@pytest.fixture
def evictable(tmp_path: Path) -> Path:
    """``tmp_path``, once a probe shows its file system drops pages on POSIX_FADV_DONTNEED."""
    if _own_read_bytes() is None:
        pytest.skip("/proc/self/io is not readable: cannot tell whether pages leave the cache")
    probe = _written_and_read(tmp_path / "probe.bin", 1 << 20)
    fd = os.open(probe, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    before = _own_read_bytes()
    probe.read_bytes()
    fetched = (_own_read_bytes() or 0) - (before or 0)
    if fetched < (1 << 19):
        pytest.skip(
            f"the file system at {tmp_path} ignores POSIX_FADV_DONTNEED (tmpfs keeps files in "
            f"memory): a re-read after the advice fetched {fetched} bytes of 1 MiB"
        )
    return tmp_path


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run on 3 of 4 generated receipts, every variant: its exit code, JSON and table."""
    root = tmp_path_factory.mktemp("cold")
    generate(root / "img", count=4, seed=3, scale=0.3)
    out = root / "cold.json"
    argv = ["--images", str(root / "img"), "--limit", "3", "--workers", "1"]
    argv += ["--max-side", "128", "--scratch", str(root / "s"), "--json", str(out)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    doc = json.loads(out.read_text())
    return {"code": code, "doc": doc, "table": stdout.getvalue(), "scratch": root / "s"}


def _epochs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [epoch for result in doc["runs"][0] for epoch in result["epochs"].values()]


def test_every_variant_reads_the_limited_images_cold_then_warm(smoke):
    assert smoke["code"] == 0
    doc = smoke["doc"]
    assert doc["images"] == 3 and len(doc["runs"]) == 1
    results = {r["variant"]: r for r in doc["runs"][0]}
    assert list(results) == ["raw", "zstd", "jpeg"]
    for result in results.values():
        assert list(result["epochs"]) == ["cold", "warm"]
        for epoch in result["epochs"].values():
            assert epoch["images"] == 3
            assert epoch["seconds"] > 0 and 0 < epoch["median_ms"] <= epoch["p90_ms"]


def test_read_counts_are_ints_or_none(smoke):
    for epoch in _epochs(smoke["doc"]):
        for field in ("device_read_bytes", "device_read_requests", "process_read_bytes"):
            value = epoch[field]
            assert value is None or (isinstance(value, int) and not isinstance(value, bool))


def test_derived_times_follow_the_printed_formula(smoke):
    assert "t = max(bytes / bandwidth, requests / IOPS)" in smoke["table"]
    for epoch in _epochs(smoke["doc"]):
        nbytes, requests = epoch["device_read_bytes"], epoch["device_read_requests"]
        assert set(epoch["derived_seconds"]) == set(CLASSES)
        for name, (bandwidth, iops) in CLASSES.items():
            if nbytes is None or requests is None:
                assert epoch["derived_seconds"][name] is None
            else:
                expected = max(nbytes / bandwidth, requests / iops)
                assert epoch["derived_seconds"][name] == pytest.approx(expected)


def test_the_table_has_a_row_per_variant_and_epoch(smoke):
    for variant in ("raw", "zstd", "jpeg"):
        for epoch in ("cold", "warm"):
            assert f"| 1 | {variant} | {epoch} |" in smoke["table"]


def test_the_json_names_the_machine_command_and_date(smoke):
    doc = smoke["doc"]
    assert {"cpu", "cores", "kernel", "devices"} <= set(doc["machine"])
    assert "--limit 3" in doc["command"] and doc["date"]


def test_the_scratch_stores_are_removed_without_keep(smoke):
    assert smoke["scratch"].is_dir() and not (smoke["scratch"] / "bench_cold").exists()


def test_the_cold_epoch_reads_from_storage_and_the_warm_one_does_not(smoke, evictable):
    raw = smoke["doc"]["runs"][0][0]
    assert raw["resident_after_eviction"] < 0.01
    assert raw["epochs"]["cold"]["process_read_bytes"] > 0
    assert raw["epochs"]["warm"]["process_read_bytes"] == 0


def test_a_missing_image_folder_is_a_usage_error(tmp_path, capsys):
    assert main(["--images", str(tmp_path / "nope")]) == 2
    assert "is not a folder of images" in capsys.readouterr().err


def test_a_file_just_read_is_fully_resident(tmp_path):
    path = _written_and_read(tmp_path / "data.bin", 1 << 20)
    assert resident_fraction([path]) == pytest.approx(1.0, abs=0.01)


def test_residency_counts_pages_after_half_a_file_is_dropped(evictable):
    path = _written_and_read(evictable / "data.bin", 8 << 20)
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 4 << 20, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    assert resident_fraction([path]) == pytest.approx(0.5, abs=0.02)


def test_evict_drops_a_file_from_the_page_cache(evictable):
    path = _written_and_read(evictable / "data.bin", 4 << 20)
    evict(path)
    assert resident_fraction([path]) == pytest.approx(0.0, abs=0.01)


def test_after_evict_a_read_goes_to_storage(evictable):
    path = _written_and_read(evictable / "data.bin", 4 << 20)
    evict(path)
    before = _own_read_bytes() or 0
    path.read_bytes()
    assert (_own_read_bytes() or 0) - before >= 4 << 20


def test_the_block_device_has_a_stat_file_or_a_reason(tmp_path):
    name, stat_file, note = find_block_device(tmp_path)
    if stat_file is None:
        assert note
    else:
        assert name and len(stat_file.read_text().split()) >= 11
