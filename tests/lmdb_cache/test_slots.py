"""Reader slots and snapshots under long runs: worker processes release their LMDB reader slot
when they exit, slots of killed processes are cleared, and a long-lived reader renews its
snapshot so it does not pin old pages while the store is updated."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from torch.utils.data import DataLoader, Dataset

from lmdb_cache import build_cache, open_cache

from .conftest import noisy_image, save_image

BIN = Path(sys.executable).parent
ROOT = str(Path(__file__).resolve().parents[2])


class Pixels(Dataset):
    """One pixel of each image, read through a reader the workers inherit or unpickle."""

    def __init__(self, path: Path) -> None:
        self.reader = open_cache(path)
        self.keys = self.reader.keys()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> int:
        return int(self.reader[self.keys[index]].image[0, 0, 0])


def _env(reader):
    """The reader's LMDB environment in this process (to look at LMDB's reader table)."""
    return reader.raw.environment()


def _slots_used(reader) -> int:
    """LMDB's high-water mark of reader slots: it only grows when no free slot is left."""
    return _env(reader).info()["num_readers"]


@pytest.mark.parametrize(
    ("method", "epochs", "workers"),
    [
        ("fork", 12, 4),
        pytest.param("spawn", 3, 2, marks=pytest.mark.slow),
        pytest.param("forkserver", 3, 2, marks=pytest.mark.slow),
    ],
    ids=["fork", "spawn", "forkserver"],
)
def test_dataloader_workers_release_their_reader_slots(many_cache, method, epochs, workers):
    dataset = Pixels(many_cache)
    for _ in range(epochs):
        loader = DataLoader(dataset, batch_size=8, num_workers=workers,
                            multiprocessing_context=method)  # fmt: skip
        assert len(list(loader)) == 6
    # Leaked slots would add `workers` per epoch; freed ones are reused.
    assert _slots_used(dataset.reader) <= workers + 2
    # And no slot of the last epoch's workers is left behind (nothing has cleared them since).
    assert _rows_of_dead_processes(_env(dataset.reader)) == []


def _rows_of_dead_processes(env) -> list[str]:
    rows = [line.split() for line in env.readers().splitlines()[1:]]
    return [row[0] for row in rows if row and not os.path.exists(f"/proc/{row[0]}")]


KILLED_READER = textwrap.dedent(
    """
    import os, signal, sys
    from lmdb_cache import open_cache
    reader = open_cache(sys.argv[1])
    reader[reader.keys()[0]]
    print(os.getpid(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)

OPENER = "import sys; from lmdb_cache import open_cache; open_cache(sys.argv[1]).keys()"


def test_slot_of_a_killed_reader_is_cleared_when_a_process_opens_the_store(many_cache):
    with open_cache(many_cache) as holder:  # keeps the lock file in use, as a training run does
        env = _env(holder)
        killed = subprocess.run(
            [sys.executable, "-c", KILLED_READER, many_cache],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": ROOT},
        )
        pid = killed.stdout.strip()
        assert pid and any(line.split()[:1] == [pid] for line in env.readers().splitlines())
        subprocess.run([sys.executable, "-c", OPENER, many_cache], check=True,
                       env={"PYTHONPATH": ROOT})  # fmt: skip
        assert not any(line.split()[:1] == [pid] for line in env.readers().splitlines())


def _rewrite_sources(root: Path, version: int) -> None:
    for i in range(48):
        save_image(root / f"img_{i:02d}.png", noisy_image(40, 30, seed=1000 * version + i))


def _update(source: Path, store: Path) -> None:
    subprocess.run([BIN / "build-cache", source, "-o", store, "-q", "-j", "1"], check=True)


def _size_after_updates(source: Path, store: Path, snapshot_seconds: float | None) -> int:
    """data.mdb's size after 6 full updates while a reader in this process keeps reading."""
    with open_cache(store, snapshot_seconds=snapshot_seconds) as reader:
        for version in range(1, 7):
            reader["img_00.png"]
            _rewrite_sources(source, version)
            _update(source, store)
        return (store / "data.mdb").stat().st_size


def test_long_lived_reader_does_not_pin_pages_while_the_store_is_updated(many_images, tmp_path):
    build_cache(many_images, tmp_path / "alone.lmdb", workers=1)
    build_cache(many_images, tmp_path / "read.lmdb", workers=1)
    for version in range(1, 7):  # the same updates with no reader: the size to expect
        _rewrite_sources(many_images, version)
        _update(many_images, tmp_path / "alone.lmdb")
    alone = (tmp_path / "alone.lmdb" / "data.mdb").stat().st_size
    _rewrite_sources(many_images, 0)
    renewing = _size_after_updates(many_images, tmp_path / "read.lmdb", snapshot_seconds=0)
    assert renewing <= alone * 1.5


def test_reader_that_keeps_its_snapshot_pins_pages(many_images, tmp_path):
    """The contrast to the test above: what snapshot_seconds=None costs, as documented."""
    build_cache(many_images, tmp_path / "alone.lmdb", workers=1)
    build_cache(many_images, tmp_path / "read.lmdb", workers=1)
    for version in range(1, 7):
        _rewrite_sources(many_images, version)
        _update(many_images, tmp_path / "alone.lmdb")
    alone = (tmp_path / "alone.lmdb" / "data.mdb").stat().st_size
    _rewrite_sources(many_images, 0)
    pinning = _size_after_updates(many_images, tmp_path / "read.lmdb", snapshot_seconds=None)
    assert pinning > alone * 2


def test_live_view_holds_the_snapshot_and_its_release_lets_it_renew(many_images, many_cache):
    with open_cache(many_cache, snapshot_seconds=0) as reader:
        view = reader.view("img_00.png").image
        before = view.copy()
        save_image(many_images / "img_00.png", noisy_image(40, 30, seed=4242))
        _update(many_images, many_cache)
        assert reader.meta("img_00.png")["source_size"] == reader.view("img_00.png").meta[
            "source_size"]  # fmt: skip
        assert (view == before).all()  # the snapshot it shows is still the old one
        old_size = reader.meta("img_00.png")["source_size"]
        del view
        assert reader.meta("img_00.png")["source_size"] != old_size


def test_snapshot_seconds_must_not_be_negative(many_cache):
    with pytest.raises(ValueError, match="snapshot_seconds"):
        open_cache(many_cache, snapshot_seconds=-1)


def _read_and_exit(reader) -> None:
    reader["img_00.png"]  # the reader never closes: the process just ends, as workers do


def test_forked_process_that_ends_without_closing_releases_its_slot(many_cache):
    with open_cache(many_cache) as reader:
        env = _env(reader)
        for _ in range(5):
            child = multiprocessing.get_context("fork").Process(target=_read_and_exit,
                                                                args=(reader,))  # fmt: skip
            child.start()
            child.join()
            assert child.exitcode == 0
        assert env.info()["num_readers"] <= 2


def test_start_up_check_of_every_record_keeps_no_metadata(many_images, many_cache):
    """changed_sources reads every record's metadata once; holding them all would cost about a
    kilobyte per key in the main process of a training run."""
    import tracemalloc

    from lmdb_cache import changed_sources

    keys = sorted(p.name for p in many_images.iterdir())
    with open_cache(many_cache) as reader:
        expected = {k: dict(reader.meta(k)) for k in keys[:3]}
        reader.refresh()
        tracemalloc.start()
        try:
            assert changed_sources(reader, many_images, keys) == []
            kept = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert kept < 16 * 1024  # 48 metadata maps would be ~40 KB
        assert {k: reader.meta_uncached(k) for k in keys[:3]} == expected
