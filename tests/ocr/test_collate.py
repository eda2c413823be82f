"""collate by declared field types, and batches written straight into their slots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ocr.data.collate as collate_module
from ocr.config import load_config
from ocr.data.collate import collate, empty_batch
from ocr.data.loader import build_dataset
from ocr.data.sample import DBNetMaps, PolygonSet, Sample
from tools.make_samples import generate

from .batches import assert_batches_equal


def _sample(i: int, with_maps: bool = True) -> Sample:
    maps = None
    if with_maps:
        maps = DBNetMaps(
            np.full((4, 5), i, np.uint8),
            np.ones((4, 5), np.uint8),
            np.full((4, 5), 0.5 + i, np.float32),
            np.zeros((4, 5), np.uint8),
        )
    return Sample(
        image=np.full((4, 5, 3), i, np.uint8),
        polygons=PolygonSet.from_list([[[0, 0], [1, 0], [1, 1]]] * (i + 1), dtype=np.float32),
        ignore=np.zeros(i + 1, bool),
        gt_polygons=PolygonSet.from_list([[[0, 0], [2, 0], [2, 2]]]),
        gt_ignore=np.zeros(1, bool),
        inverse_matrix=np.eye(3) * (i + 1),
        filename=f"img{i}.png",
        raw_size=(10, 8),
        orientation=1,
        upright_size=(10, 8),
        targets=maps,
    )


def test_stacked_fields_become_tensors_and_the_rest_lists():
    batch = collate([_sample(0), _sample(1)])
    assert batch.image.shape == (2, 4, 5, 3) and batch.image.dtype == torch.uint8
    assert batch.image[1].eq(1).all() and batch.image[0].eq(0).all()
    assert isinstance(batch.inverse_matrix, np.ndarray)  # small: travels in the pickle
    assert batch.inverse_matrix.dtype == np.float64
    assert batch.inverse_matrix[1, 0, 0] == 2
    assert batch.filename == ["img0.png", "img1.png"]
    assert [len(p) for p in batch.polygons] == [1, 2]  # ragged: a list, never padded
    assert batch.targets is not None
    assert batch.targets.prob_map.shape == (2, 4, 5)
    assert batch.targets.prob_map.dtype == torch.uint8
    assert batch.targets.thresh_map.dtype == torch.float32
    assert batch.targets.thresh_map[1, 0, 0] == 1.5


def test_samples_without_maps_give_a_batch_without_maps():
    assert collate([_sample(0, False), _sample(1, False)]).targets is None


def test_maps_in_some_samples_only_are_refused():
    with pytest.raises(ValueError, match="'targets' is set in some samples"):
        collate([_sample(0), _sample(1, False)])


def test_an_empty_list_is_refused():
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_a_batch_passes_through():
    batch = collate([_sample(0)])
    assert collate(batch) is batch


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("collate")
    ann = generate(root / "img", count=5, seed=11)
    config = load_config("configs/data/base.yaml")
    split = dict(config["datasets"]["val_dataset"], image_path=str(root / "img"))
    split["annotation_path"] = str(ann)
    return config, split


@pytest.mark.parametrize("transform", ["val", "train"])
def test_getitems_gives_the_batch_of_the_single_samples(config, transform):
    config, split = config
    cfg = dict(split, transform={"name": transform, "size": 640})
    dataset = build_dataset(cfg, config["targets"])
    indices = [3, 0, 4]
    batch = dataset.__getitems__(indices)
    assert_batches_equal([batch], [collate([dataset[i] for i in indices])])


def test_batches_made_in_a_worker_are_allocated_in_shared_memory(monkeypatch):
    # Sending a shared tensor to the main process moves a handle, not the pixels.
    monkeypatch.setattr(collate_module, "get_worker_info", lambda: object())
    assert empty_batch((2, 8, 8, 3), torch.uint8).is_shared()
    assert collate([_sample(0), _sample(1)]).image.is_shared()


def test_batches_made_in_the_main_process_are_not_shared():
    assert not empty_batch((2, 8, 8, 3), torch.uint8).is_shared()
