"""``lmdb_cache.torch.CacheDataset`` and ``collate`` in real DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmdb_cache import CacheWriter, MissingImageError
from lmdb_cache.torch import CacheDataset, collate


def to_chw_float(image: torch.Tensor) -> torch.Tensor:
    return image.permute(2, 0, 1).float() / 255


@pytest.fixture()
def labelled(tmp_path):
    rng = np.random.default_rng(0)
    images = {f"img_{i:02d}": rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for i in range(10)}
    with CacheWriter(tmp_path / "labelled.lmdb") as writer:
        for i, (key, image) in enumerate(images.items()):
            writer.add(key, image=image, extra={"label": i % 3})
    return tmp_path / "labelled.lmdb", images


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_workers_of_every_start_method_read_the_images_and_labels(labelled, method):
    path, images = labelled
    dataset = CacheDataset(path, transform=to_chw_float)
    loader = DataLoader(
        dataset, batch_size=4, num_workers=2, collate_fn=collate, multiprocessing_context=method
    )
    seen = []
    for batch_images, metas, extras in loader:
        assert batch_images.shape[1:] == (3, 12, 16) and batch_images.dtype == torch.float32
        assert isinstance(extras["label"], torch.Tensor)
        for image, meta, label in zip(batch_images, metas, extras["label"].tolist(), strict=True):
            key = f"img_{len(seen):02d}"
            expected = torch.from_numpy(images[key]).permute(2, 0, 1).float() / 255
            assert torch.equal(image, expected) and label == len(seen) % 3
            assert meta["width"] == 16
            seen.append(key)
    assert seen == sorted(images)


def test_keys_choose_and_order_the_samples(labelled):
    path, images = labelled
    dataset = CacheDataset(path, keys=["img_03", "img_01"])
    image, meta, extra = dataset[0]
    assert len(dataset) == 2 and extra == {"label": 0}
    assert torch.equal(image, torch.from_numpy(images["img_03"])) and image.dtype == torch.uint8
    assert dataset[1][2] == {"label": 1}


def test_a_missing_key_is_named(labelled):
    path, _ = labelled
    with pytest.raises(MissingImageError, match="nope"):
        CacheDataset(path, keys=["img_00", "nope"])


def test_collate_keeps_lists_when_shapes_or_extras_differ():
    a = (torch.zeros(2, 3, 3, dtype=torch.uint8), {"w": 3}, {"label": 1})
    b = (torch.zeros(4, 3, 3, dtype=torch.uint8), {"w": 3}, {"name": "x"})
    images, metas, extras = collate([a, b])
    assert isinstance(images, list) and len(images) == 2
    assert metas == [{"w": 3}, {"w": 3}] and extras == [{"label": 1}, {"name": "x"}]
