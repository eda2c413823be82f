"""Fixtures shared by the ocr tests."""

from __future__ import annotations

import pytest
import torch

from lmdb_cache import build_cache
from ocr.pipeline import train
from tools.make_samples import generate

from .runs import MAX_SIDE, tiny_config


@pytest.fixture
def one_thread():
    """Run tiny models on one thread: intra-op threads gain nothing at this size, and when
    other processes share the cores they can slow a step down a hundredfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="package")
def receipts(tmp_path_factory):
    """Six generated receipts (folder, annotation file) and their cache ``img.lmdb``."""
    root = tmp_path_factory.mktemp("receipts")
    ann = generate(root / "img", count=6, seed=11)
    build_cache(root / "img", root / "img.lmdb", max_side=MAX_SIDE, workers=1)
    return root, ann


@pytest.fixture(scope="package")
def trained(receipts, tmp_path_factory):
    """A 2-epoch run: its config, summary and folder (one run for every module that reads it;
    tests must not write into its folder)."""
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(receipts, out)
    summary = train(cfg, progress=False, echo=lambda _: None)
    return cfg, summary, out
