"""Disk, preload and cache sources give identical batches; so do 0, 2 and 4 workers."""

from __future__ import annotations

import shutil

import pytest
import torch

from lmdb_cache import CacheReader, MissingImageError, build_cache
from ocr.config import apply_overrides, load_config
from ocr.data.dataset import CacheSettingsError
from ocr.data.loader import build_dataset, build_loader
from tools.make_samples import generate

from .batches import assert_batches_equal


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    ann = generate(root / "img", count=6, seed=3)
    build_cache(root / "img", root / "full.lmdb", workers=1)
    build_cache(root / "img", root / "cap700.lmdb", max_side=700, workers=1)
    build_cache(root / "img", root / "zstd.lmdb", workers=1, codec="zstd")
    config = load_config("configs/data/base.yaml")
    split = config["datasets"]["val_dataset"]
    split.update(image_path=str(root / "img"), annotation_path=str(ann))
    return root, config


def _batches(config, split="val_dataset", workers=0, **overrides):
    cfg = dict(config["datasets"][split], **overrides)
    dataset = build_dataset(cfg, config["targets"])
    loader_cfg = dict(config["dataloader"], num_workers=workers, batch_size=2)
    return list(build_loader(dataset, loader_cfg))


def _assert_same(a, b):
    assert_batches_equal(a, b)
    assert all(batch.targets is not None for batch in a)


@pytest.mark.parametrize("source", ["preload", "cache", "cache-zstd"])
def test_source_gives_the_disk_batches(samples, source):
    root, config = samples
    disk = _batches(config)
    other = {
        "preload": {"preload_images": True},
        "cache": {"image_cache": str(root / "full.lmdb")},
        "cache-zstd": {"image_cache": str(root / "zstd.lmdb")},
    }
    _assert_same(disk, _batches(config, **other[source]))


def test_cache_without_readahead_gives_the_disk_batches_in_workers(samples):
    root, config = samples
    cached = _batches(config, workers=2, image_cache=str(root / "full.lmdb"), cache_readahead=False)
    _assert_same(_batches(config), cached)


def test_cache_without_readahead_names_each_batch_before_reading_it(samples, monkeypatch):
    root, config = samples
    asked: list[list[str]] = []
    monkeypatch.setattr(CacheReader, "prefetch", lambda self, keys: asked.append(list(keys)))
    batches = _batches(config, image_cache=str(root / "full.lmdb"), cache_readahead=False)
    assert asked == [list(batch.filename) for batch in batches]


def test_cache_with_readahead_names_nothing(samples, monkeypatch):
    root, config = samples
    asked: list[list[str]] = []
    monkeypatch.setattr(CacheReader, "prefetch", lambda self, keys: asked.append(list(keys)))
    _batches(config, image_cache=str(root / "full.lmdb"))
    assert asked == []


def test_capped_cache_gives_the_disk_batches_at_the_same_max_side(samples):
    root, config = samples
    disk = _batches(config, max_side=700)
    _assert_same(disk, _batches(config, max_side=700, image_cache=str(root / "cap700.lmdb")))


def test_batches_are_uint8(samples):
    _, config = samples
    assert _batches(config)[0].image.dtype == torch.uint8


@pytest.mark.parametrize("workers", [2, 4], ids=lambda w: f"workers{w}")
def test_workers_give_the_same_training_batches(samples, workers):
    root, config = samples
    config = apply_overrides(config, [])
    train = dict(config["datasets"]["val_dataset"], transform={"name": "train", "size": 640})
    config["datasets"]["train_dataset"] = train
    serial = _batches(config, "train_dataset", workers=0, image_cache=str(root / "full.lmdb"))
    parallel = _batches(
        config, "train_dataset", workers=workers, image_cache=str(root / "full.lmdb")
    )
    _assert_same(serial, parallel)


@pytest.mark.parametrize(
    "method",
    [
        "fork",
        pytest.param("spawn", marks=pytest.mark.slow),
        pytest.param("forkserver", marks=pytest.mark.slow),
    ],
    ids=str,
)
def test_cache_source_gives_the_disk_batches_in_workers_of_every_start_method(samples, method):
    # The dataset and its source are pickled into spawn and forkserver workers.
    root, config = samples
    loader = dict(config["dataloader"], multiprocessing_context=method)
    config = dict(config, dataloader=loader)
    cached = _batches(config, workers=2, image_cache=str(root / "full.lmdb"))
    _assert_same(_batches(config), cached)


def test_cache_cap_other_than_max_side_is_refused_at_start(samples):
    root, config = samples
    with pytest.raises(CacheSettingsError, match="capped at --max-side 700"):
        _batches(config, image_cache=str(root / "cap700.lmdb"))


def test_max_side_below_the_transform_size_is_refused(samples):
    _, config = samples
    with pytest.raises(ValueError, match="below the transform size"):
        _batches(config, max_side=320)


def test_image_missing_from_the_cache_is_an_error_naming_it(samples, tmp_path):
    root, config = samples
    partial = tmp_path / "img"
    partial.mkdir()
    shutil.copy2(root / "img" / "receipt_0000.jpg", partial)  # keeps the mtime: not stale
    build_cache(partial, tmp_path / "partial.lmdb", workers=1)
    with pytest.raises(MissingImageError, match="receipt_0001.jpg"):
        _batches(config, image_cache=str(tmp_path / "partial.lmdb"))


def test_cache_fallback_disk_reads_missing_images_from_disk(samples, tmp_path, caplog):
    root, config = samples
    partial = tmp_path / "img"
    partial.mkdir()
    shutil.copy2(root / "img" / "receipt_0000.jpg", partial)  # keeps the mtime: not stale
    build_cache(partial, tmp_path / "partial.lmdb", workers=1)
    fallback = _batches(config, image_cache=str(tmp_path / "partial.lmdb"), cache_fallback="disk")
    _assert_same(_batches(config), fallback)
    assert "not in cache" in caplog.text


def test_cache_built_from_another_folder_is_named_in_a_warning(samples, tmp_path, caplog):
    root, config = samples
    other = tmp_path / "elsewhere"
    shutil.copytree(root / "img", other)  # same images, another folder: a warning, not an error
    cfg = dict(config["datasets"]["val_dataset"], image_path=str(other))
    with caplog.at_level("WARNING", logger="ocr.data.dataset"):
        build_dataset(dict(cfg, image_cache=str(root / "full.lmdb")))
    assert f"was built from '{(root / 'img').resolve()}'" in caplog.text


def test_cache_of_the_image_folder_gives_no_warning(samples, caplog):
    root, config = samples
    cfg = dict(config["datasets"]["val_dataset"], image_cache=str(root / "full.lmdb"))
    with caplog.at_level("WARNING", logger="ocr.data.dataset"):
        build_dataset(cfg)
    assert "was built from" not in caplog.text
