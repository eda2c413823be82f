"""Running under torchrun: rank sharding, the rank layout from the environment, and whole
evaluations and trainings on two gloo ranks that must equal one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmdb_cache import copy_cache
from ocr.distributed import DistInfo, ShardSampler, dist_info_from_env
from ocr.pipeline import evaluate_checkpoint

from .runs import tiny_config, with_source


@pytest.mark.parametrize(
    ("length", "world", "expected"),
    [(5, 2, [[0, 2, 4], [1, 3]]), (2, 3, [[0], [1], []]), (4, 1, [[0, 1, 2, 3]])],
    ids=["uneven", "more-ranks-than-samples", "one-rank"],
)
def test_shard_sampler_gives_each_sample_to_one_rank(length, world, expected):
    shards = [list(ShardSampler(length, rank, world)) for rank in range(world)]
    assert shards == expected
    assert [len(ShardSampler(length, r, world)) for r in range(world)] == [len(s) for s in expected]


def test_shard_sampler_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2 is not in a world of size 2"):
        ShardSampler(4, 2, 2)


def test_dist_info_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = dist_info_from_env()
    assert (info.rank, info.world_size, info.local_rank, info.is_main, info.enabled) == (
        3,
        4,
        1,
        False,
        True,
    )


def test_dist_info_without_torchrun_is_one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = dist_info_from_env()
    assert info == DistInfo(0, 1, 0) and info.is_main and not info.enabled


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        cmd + args, capture_output=True, text=True, env=env, cwd=Path.cwd(), timeout=300
    )


@pytest.mark.slow
def test_two_gloo_ranks_evaluate_to_the_single_process_metrics(receipts, trained, tmp_path):
    cfg, _, out = trained
    cfg = with_source(cfg, "cache", receipts)
    # Five images: the ranks get 3 and 2, so padding or a lost image would show.
    annotations = json.loads(Path(cfg["datasets"]["val_dataset"]["annotation_path"]).read_text())
    names = sorted(annotations["images"])[:5]
    annotations["images"] = {n: annotations["images"][n] for n in names}
    (tmp_path / "five.json").write_text(json.dumps(annotations))
    cfg["datasets"]["val_dataset"]["annotation_path"] = str(tmp_path / "five.json")
    config = tmp_path / "cache.yaml"
    config.write_text(yaml.safe_dump(cfg))
    script = ["-m", "ocr.cli", "eval", "-k", str(out / "last.pt"), "-c", str(config), "--json"]
    proc = _torchrun(script, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    single = evaluate_checkpoint(cfg, str(out / "last.pt"), progress=False)
    assert single.metrics["num_pred"] > 0
    assert {k: doc[k] for k in single.metrics} == single.metrics
    assert doc["timing"]["images"] == 5


@pytest.mark.slow
def test_two_gloo_ranks_train_with_ddp_and_gather_validation(receipts, tmp_path):
    cfg = tiny_config(receipts, tmp_path / "ddp", epochs=1)
    cfg["datasets"]["train_dataset"]["image_cache"] = str(receipts[0] / "img.lmdb")
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = _torchrun(["-m", "ocr.cli", "train", "-c", str(config), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2
    # Validation inside the DDP run (two shards, gathered) equals one process on its weights.
    single = evaluate_checkpoint(cfg, str(tmp_path / "ddp" / "last.pt"), progress=False)
    assert summary["metrics"] == single.metrics


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_each_reading_its_own_copy_evaluate_to_the_single_process_metrics(
    receipts, trained, tmp_path
):
    # Two "nodes" on this machine (two torchrun agents, c10d rendezvous on 127.0.0.1), one
    # rank each, each reading its own copy of the store, as on a cluster with local disks.
    cfg, _, out = trained
    cfg = with_source(cfg, "cache", receipts)
    shared = json.loads(json.dumps(cfg))  # the nodes' config names no reachable store
    shared["datasets"]["val_dataset"]["image_cache"] = str(tmp_path / "not-on-any-node.lmdb")
    config = tmp_path / "cache.yaml"
    config.write_text(yaml.safe_dump(shared))
    copies = [tmp_path / f"node{i}" / "img.lmdb" for i in range(2)]
    for copy in copies:
        copy.parent.mkdir()
        assert copy_cache(receipts[0] / "img.lmdb", copy).report.ok
    endpoint = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nodes = []
    for rank, copy in enumerate(copies):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
        cmd += ["--nproc-per-node", "1", "--node-rank", str(rank), "--rdzv-backend", "c10d"]
        cmd += ["--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes", "--local-addr", "127.0.0.1"]
        cmd += ["--rdzv-conf", f"is_host={int(rank == 0)}"]
        cmd += ["-m", "ocr.cli", "eval", "-k", str(out / "last.pt"), "-c", str(config), "--json"]
        cmd += [f"datasets.val_dataset.image_cache={copy}"]
        nodes.append(
            subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        )
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=300))
    finally:
        for node in nodes:
            node.kill()
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    doc = json.loads(outputs[0][0])  # rank 0 (node 0) prints the result
    single = evaluate_checkpoint(cfg, str(out / "last.pt"), progress=False)
    assert single.metrics["num_pred"] > 0
    assert {k: doc[k] for k in single.metrics} == single.metrics
    assert doc["timing"]["images"] == 6
