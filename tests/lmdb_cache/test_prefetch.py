"""Reading a store past the page cache: ``readahead=False`` (no read-around on faults) and
``prefetch`` (each batch named to the kernel first), and ``CacheDataset`` doing both; fork
workers start with the inherited objects frozen for their garbage collector."""

from __future__ import annotations

import gc
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmdb_cache import CacheWriter, open_cache
from lmdb_cache.torch import CacheDataset, collate

SHAPE = (64, 80, 3)  # 15,360 bytes: a value on overflow pages


@pytest.fixture()
def store(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    images = {f"r{i:02d}.png": rng.integers(0, 256, SHAPE, dtype=np.uint8) for i in range(12)}
    with CacheWriter(tmp_path / "s.lmdb") as writer:
        for key, image in images.items():
            writer.add(key, image=image)
    return tmp_path / "s.lmdb", images


def mapping_flags(data: Path) -> list[str]:
    """The VmFlags of this process's mappings of ``data`` (``/proc/self/smaps``)."""
    flags, current = [], None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isdigit() or line[:1] in "abcdef" and "-" in line.split()[0]:
            current = line.split(maxsplit=5)[5] if len(line.split()) >= 6 else ""
        elif line.startswith("VmFlags:") and current == os.path.realpath(data):
            flags.append(line)
    return flags


def test_reader_without_readahead_marks_its_mapping_random(store):
    path, _ = store
    with open_cache(path, readahead=False) as reader:
        reader.key_at(0)
        (flags,) = mapping_flags(path / "data.mdb")
    assert " rr" in flags


def test_reader_by_default_leaves_read_around_on(store):
    path, _ = store
    with open_cache(path) as reader:
        reader.key_at(0)
        (flags,) = mapping_flags(path / "data.mdb")
    assert " rr" not in flags


def test_prefetch_names_each_record_by_its_bytes_in_the_file(store, monkeypatch):
    path, images = store
    content = (path / "data.mdb").read_bytes()
    expected = {
        (content.find(images[k].tobytes()), images[k].nbytes) for k in ("r03.png", "r07.png")
    }
    assert all(offset > 0 for offset, _ in expected)  # each value found once in the file
    named = []
    monkeypatch.setattr(
        os,
        "posix_fadvise",
        lambda fd, offset, length, advice: named.append((offset, length, advice)),
    )
    with open_cache(path, readahead=False) as reader:
        reader.prefetch(["r03.png", "r07.png"])
    assert {(o, n) for o, n, _ in named} == expected
    assert {a for _, _, a in named} == {os.POSIX_FADV_WILLNEED}


def test_prefetch_leaves_absent_keys_to_their_reads(store):
    path, images = store
    with open_cache(path, readahead=False) as reader:
        reader.prefetch(["nope.png", "r01.png", ""])
        assert np.array_equal(reader["r01.png"].image, images["r01.png"])


def test_reader_without_readahead_pickles_with_it(store):
    path, _ = store
    with open_cache(path, readahead=False) as reader:
        again = pickle.loads(pickle.dumps(reader))
    with again:
        assert again.readahead is False


def test_dataset_without_readahead_names_each_batch(store, monkeypatch):
    path, images = store
    dataset = CacheDataset(path, readahead=False)
    asked = []
    prefetch = type(dataset.reader).prefetch
    monkeypatch.setattr(
        type(dataset.reader),
        "prefetch",
        lambda self, keys: (asked.append(list(keys)), prefetch(self, keys)),
    )
    samples = dataset.__getitems__([5, 0, 9])
    assert asked == [["r05.png", "r00.png", "r09.png"]]
    assert all(
        np.array_equal(s[0].numpy(), images[f"r{i:02d}.png"])
        for s, i in zip(samples, (5, 0, 9), strict=True)
    )


def test_dataset_without_readahead_gives_the_same_batches_in_fork_workers(store):
    path, images = store
    loader = DataLoader(
        CacheDataset(path, readahead=False),
        batch_size=5,
        num_workers=2,
        collate_fn=collate,
        multiprocessing_context="fork",
    )
    batches = torch.cat([batch for batch, _, _ in loader])
    assert torch.equal(batches, torch.from_numpy(np.stack(list(images.values()))))


class _FreezeCounts(torch.utils.data.Dataset):
    """Each item: how many objects the worker's garbage collector leaves alone."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return gc.get_freeze_count()


def _counts_loader() -> DataLoader:
    return DataLoader(_FreezeCounts(), batch_size=1, num_workers=1, multiprocessing_context="fork")


def test_fork_workers_start_with_the_inherited_objects_frozen():
    assert min(int(batch) for batch in _counts_loader()) > 1000  # torch alone makes far more
    assert gc.get_freeze_count() == 0  # the parent's are collected as before


def test_objects_frozen_before_the_fork_stay_frozen_in_the_parent():
    gc.freeze()
    try:
        list(_counts_loader())
        assert gc.get_freeze_count() > 0  # not unfrozen by the fork's hook
    finally:
        gc.unfreeze()
