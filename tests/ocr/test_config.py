"""Config files: _base_ merging and overrides on the merged result."""

from __future__ import annotations

import pytest

from ocr.config import ConfigError, load_config, merge


def _write(path, text):
    path.write_text(text)
    return path


def test_merge_replaces_leaves_and_keeps_siblings():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    assert merge(base, {"a": {"y": [3]}, "c": 4}) == {"a": {"x": 1, "y": [3]}, "b": 2, "c": 4}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 2}  # the base is not modified


def test_base_is_read_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "base.yaml", "model: {width: 64, k: 50}\ntrainer: {epochs: 10}\n")
    child = _write(tmp_path / "child.yaml", "_base_: sub/base.yaml\nmodel: {width: 16}\n")
    assert load_config(child) == {"model": {"width": 16, "k": 50}, "trainer": {"epochs": 10}}


def test_overrides_apply_to_keys_from_the_base(tmp_path):
    _write(tmp_path / "base.yaml", "trainer: {epochs: 10}\n")
    child = _write(tmp_path / "child.yaml", "_base_: base.yaml\nmodel: {width: 16}\n")
    assert load_config(child, ["trainer.epochs=3"])["trainer"]["epochs"] == 3


def test_base_chain_that_loops_is_refused(tmp_path):
    _write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "a.yaml")


def test_missing_base_names_the_file(tmp_path):
    child = _write(tmp_path / "child.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(child)


def test_shipped_dbnet_config_includes_the_data_config():
    cfg = load_config("configs/dbnet.yaml")
    data = load_config("configs/data/base.yaml")
    assert cfg["datasets"] == data["datasets"]
    assert cfg["model"]["k"] == 50 and cfg["postprocess"]["unclip_ratio"] == 1.5


def test_demo_config_changes_only_what_it_names():
    demo = load_config("configs/demo.yaml")
    full = load_config("configs/dbnet.yaml")
    assert demo["model"]["width"] == 16
    assert demo["model"]["k"] == full["model"]["k"]
    assert demo["loss"] == full["loss"]
