"""A dataset refuses a cache whose source images changed after build-cache (cache_stale)."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from lmdb_cache import build_cache
from lmdb_cache.cli import build_command
from lmdb_cache.errors import StaleCacheError
from ocr.cli import train_command
from ocr.config import load_config
from ocr.data.dataset import OCRDataset
from ocr.data.loader import build_dataset, build_transform
from tools.make_samples import generate

# receipt_0001.jpg has no EXIF rotation (tools.make_samples), so a crop keeps its frame.
EDITED = "receipt_0001.jpg"
INDEX = 1


@pytest.fixture
def sources(tmp_path):
    """Three generated receipts, their annotations and a full-size cache of them."""
    ann = generate(tmp_path / "img", count=3, seed=5)
    build_cache(tmp_path / "img", tmp_path / "img.lmdb", workers=1)
    return tmp_path / "img", ann, tmp_path / "img.lmdb"


def _cfg(sources, **overrides) -> dict:
    img, ann, cache = sources
    split = load_config("configs/data/base.yaml")["datasets"]["val_dataset"]
    split.update(image_path=str(img), annotation_path=str(ann), image_cache=str(cache))
    return dict(split, **overrides)


def _crop(path) -> None:
    """Edit a source the way a user would: crop it and save it again (content and size change)."""
    size = path.stat().st_size
    with Image.open(path) as image:
        image.load()
    w, h = image.size
    image.crop((0, 0, w * 9 // 10, h * 9 // 10)).save(path, quality=90)
    assert path.stat().st_size != size


def _touch(path) -> None:
    """Move the mtime one second on, leaving the bytes as they are."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _stale_error(cfg: dict) -> StaleCacheError:
    with pytest.raises(StaleCacheError) as info:
        build_dataset(cfg)
    return info.value


def test_edited_source_is_refused_naming_it_and_the_update_command(sources):
    img, _, cache = sources
    _crop(img / EDITED)
    command = f"build-cache {img} -o {cache}"
    with pytest.raises(
        StaleCacheError, match=rf"'{EDITED}'.*update it with '{re.escape(command)}'"
    ):
        build_dataset(_cfg(sources))


def test_the_named_command_updates_the_cache_and_the_dataset_serves_the_new_pixels(sources):
    img, _, _ = sources
    _crop(img / EDITED)
    argv = shlex.split(_stale_error(_cfg(sources)).command)
    assert argv[0] == "build-cache"
    result = CliRunner().invoke(build_command, argv[1:] + ["--quiet"])
    assert result.exit_code == 0, result.output
    cached = build_dataset(_cfg(sources))[INDEX].image
    assert np.array_equal(cached, build_dataset(_cfg(sources, image_cache=None))[INDEX].image)


def test_the_named_command_updates_a_capped_cache_keeping_its_cap(sources, tmp_path):
    img, _, _ = sources
    capped = tmp_path / "cap700.lmdb"
    build_cache(img, capped, max_side=700, workers=1)
    _crop(img / EDITED)
    cfg = _cfg(sources, image_cache=str(capped), max_side=700)
    command = _stale_error(cfg).command
    assert command == f"build-cache {img} -o {capped}"
    result = CliRunner().invoke(build_command, shlex.split(command)[1:] + ["--quiet"])
    assert result.exit_code == 0, result.output
    build_dataset(cfg)


def test_cache_stale_warn_logs_one_warning_and_serves_the_cached_pixels(sources, tmp_path, caplog):
    img, _, cache = sources
    before = tmp_path / "before"
    shutil.copytree(img, before)  # the pixels the cache holds, decoded from disk independently
    _crop(img / EDITED)
    with caplog.at_level(logging.WARNING, logger="ocr.data.dataset"):
        dataset = build_dataset(_cfg(sources, cache_stale="warn"))
    stale = [r for r in caplog.records if "changed since cache" in r.getMessage()]
    assert len(stale) == 1
    assert f"'{EDITED}'" in stale[0].getMessage()
    assert f"update it with 'build-cache {img} -o {cache}'" in stale[0].getMessage()
    old = build_dataset(_cfg(sources, image_path=str(before), image_cache=None))[INDEX].image
    new = build_dataset(_cfg(sources, image_cache=None))[INDEX].image
    # The edit shows, so the next line tells which one is served.
    assert not np.array_equal(old, new)
    assert np.array_equal(dataset[INDEX].image, old)


def test_touched_source_with_the_same_bytes_is_reported(sources):
    img, _, _ = sources
    _touch(img / EDITED)
    assert _stale_error(_cfg(sources)).keys == [EDITED]


def test_build_cache_clears_a_touched_source(sources):
    img, _, cache = sources
    _touch(img / EDITED)
    _stale_error(_cfg(sources))
    build_cache(img, cache, workers=1)
    build_dataset(_cfg(sources))


def test_deleted_source_is_skipped_and_a_changed_one_reported(sources):
    img, _, _ = sources
    (img / "receipt_0000.jpg").unlink()  # as on a node that holds only part of the sources
    _crop(img / EDITED)
    assert _stale_error(_cfg(sources)).keys == [EDITED]


def test_cache_only_machine_without_the_image_folder_starts(sources):
    img, ann, cache = sources
    shutil.rmtree(img)
    dataset = OCRDataset(
        img,
        ann,
        build_transform({"name": "val", "size": 640}),
        image_cache=cache,
        cache_stale="error",
    )
    assert dataset[INDEX].filename == EDITED


def test_untouched_sources_start_without_a_warning(sources, caplog):
    img, ann, cache = sources
    with caplog.at_level(logging.WARNING, logger="ocr.data.dataset"):
        OCRDataset(
            img,
            ann,
            build_transform({"name": "val", "size": 640}),
            image_cache=cache,
            cache_stale="warn",
        )
    assert caplog.records == []


def test_unknown_cache_stale_value_is_refused(sources):
    with pytest.raises(ValueError, match="cache_stale must be 'error' or 'warn', got 'ignore'"):
        build_dataset(_cfg(sources, cache_stale="ignore"))


def test_ocr_train_reports_a_stale_cache_in_one_message_and_exits_1(sources, tmp_path):
    img, _, cache = sources
    _crop(img / EDITED)
    cfg = load_config("configs/dbnet.yaml")
    cfg["datasets"]["train_dataset"].update(_cfg(sources))
    cfg["datasets"]["train_dataset"]["transform"] = {"name": "val", "size": 256}
    cfg["datasets"]["val_dataset"].update(_cfg(sources, image_cache=None))
    cfg["datasets"]["val_dataset"]["transform"] = {"name": "val", "size": 256}
    # Small enough that the old code, which trains instead, fails this test quickly.
    cfg["model"].update(width=8, inner_channels=32)
    cfg["dataloader"].update(batch_size=3, num_workers=0)
    cfg["trainer"].update(epochs=1, output_dir=str(tmp_path / "run"))
    config = tmp_path / "stale.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(train_command, ["-c", str(config), "--quiet"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: 1 source image(s) changed since cache")
    assert f"update it with 'build-cache {img} -o {cache}'" in result.output
