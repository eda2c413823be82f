"""Ranks that read different data all stop, with one message naming ranks, hosts and
identities; a rank that cannot start takes its peers down instead of leaving them waiting.

The two ranks are plain ``ocr-train`` processes given the variables ``torchrun`` sets, so
each one's exit status is seen directly; rank 1 reads its own copy of the images and cache,
as a second node would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from lmdb_cache import CacheReader, build_cache
from lmdb_cache.cli import cli as lmdb_cache_main

from .runs import MAX_SIDE, tiny_config

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_ranks(
    config: Path, overrides: list[list[str]], command: tuple[str, ...] = ("train", "--quiet")
) -> list[subprocess.CompletedProcess]:
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            WORLD_SIZE="2",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
        )
        cmd = [sys.executable, "-m", "ocr.cli", *command, "-c", str(config)]
        procs.append(
            subprocess.Popen(
                cmd + overrides[rank],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            proc.kill()
    return done


@pytest.fixture
def node_copy(receipts, tmp_path):
    """A second node's copy of the images with one image changed, and its cache."""
    root, _ = receipts
    copy = tmp_path / "node1" / "img"
    shutil.copytree(root / "img", copy)
    key = sorted(p.name for p in copy.glob("*.jpg"))[2]
    with Image.open(copy / key) as image:
        pixels = np.array(image)
    pixels[:40, :40] = 255 - pixels[:40, :40]
    Image.fromarray(pixels).save(copy / key, quality=95)
    build_cache(copy, copy.parent / "img.lmdb", max_side=MAX_SIDE, workers=1)
    return copy, copy.parent / "img.lmdb", key


def _config(receipts, tmp_path: Path) -> Path:
    cfg = tiny_config(receipts, tmp_path / "run", epochs=1, threads=1)
    cfg["dataloader"]["batch_size"] = 1
    cfg["datasets"]["train_dataset"]["image_cache"] = str(receipts[0] / "img.lmdb")
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ranks_reading_different_stores_both_exit_2_naming_both_identities(
    receipts, node_copy, tmp_path
):
    copy, store, key = node_copy
    rank1 = [
        f"datasets.train_dataset.image_path={copy}",
        f"datasets.train_dataset.image_cache={store}",
    ]
    ranks = _two_ranks(_config(receipts, tmp_path), [[], rank1])
    ours, theirs = CacheReader(receipts[0] / "img.lmdb").identity, CacheReader(store).identity
    assert ours != theirs
    for proc in ranks:
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "the ranks of this run read different data" in proc.stderr
        assert ours in proc.stderr and theirs in proc.stderr
        assert f"rank 0 ({socket.gethostname()})" in proc.stderr
        assert "rank 1 (" in proc.stderr and "Traceback" not in proc.stderr
        assert "datasets.train_dataset images" in proc.stderr
        assert "datasets.val_dataset" not in proc.stderr  # both read the same val set
    assert not (tmp_path / "run" / "last.pt").exists()
    result = CliRunner().invoke(
        lmdb_cache_main, ["diff", str(receipts[0] / "img.lmdb"), str(store), "--json"]
    )
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output)
    assert [c["key"] for c in doc["changed"]] == [key]
    assert not doc["only_a"] and not doc["only_b"]


def test_ranks_reading_the_same_data_from_their_own_copies_train(receipts, tmp_path):
    root, _ = receipts
    copy = tmp_path / "node1" / "img"
    shutil.copytree(root / "img", copy)
    build_cache(copy, copy.parent / "img.lmdb", max_side=MAX_SIDE, workers=1)
    rank1 = [
        f"datasets.train_dataset.image_path={copy}",
        f"datasets.train_dataset.image_cache={copy.parent / 'img.lmdb'}",
    ]
    ranks = _two_ranks(_config(receipts, tmp_path), [[], rank1])
    for proc in ranks:
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "last.pt").exists()


def test_a_rank_that_cannot_open_its_data_stops_its_peer_too(receipts, tmp_path):
    missing = tmp_path / "nowhere.lmdb"
    ranks = _two_ranks(
        _config(receipts, tmp_path), [[], [f"datasets.train_dataset.image_cache={missing}"]]
    )
    assert ranks[1].returncode in (1, 2) and str(missing) in ranks[1].stderr
    assert ranks[0].returncode == 1, ranks[0].stderr[-3000:]
    assert "another rank could not start the run" in ranks[0].stderr
    assert "rank 1 (" in ranks[0].stderr and str(missing) in ranks[0].stderr


def test_ocr_eval_ranks_reading_different_stores_both_exit_2(
    receipts, trained, node_copy, tmp_path
):
    cfg, _, out = trained
    cfg = json.loads(json.dumps(cfg))
    cfg["datasets"]["val_dataset"]["image_cache"] = str(receipts[0] / "img.lmdb")
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump(cfg))
    copy, store, _ = node_copy
    rank1 = [f"datasets.val_dataset.image_path={copy}", f"datasets.val_dataset.image_cache={store}"]
    ranks = _two_ranks(config, [[], rank1], ("eval", "-k", str(out / "last.pt"), "--json"))
    theirs = CacheReader(store).identity
    for proc in ranks:
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "datasets.val_dataset images" in proc.stderr and theirs in proc.stderr
        assert not proc.stdout  # no metrics printed
