"""ocr-train / ocr-eval end to end on generated receipts: files, resume, source parity, DDP."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from lmdb_cache import build_cache, copy_cache
from ocr.checkpoint import load_checkpoint
from ocr.cli import eval_command, train_command
from ocr.config import load_config
from ocr.data.annotations import convert_icdar_folder
from ocr.pipeline import evaluate_checkpoint, train
from tools.make_samples import generate

SPLITS = ("train_dataset", "val_dataset", "test_dataset")
MAX_SIDE = 320


@pytest.fixture(scope="module")
def receipts(tmp_path_factory):
    root = tmp_path_factory.mktemp("receipts")
    ann = generate(root / "img", count=6, seed=11)
    build_cache(root / "img", root / "img.lmdb", max_side=MAX_SIDE, workers=1)
    return root, ann


def tiny_config(receipts, out: Path, **trainer) -> dict:
    """The shipped config, shrunk: a narrow DBNet on 256-pixel inputs, 6 receipts."""
    root, ann = receipts
    cfg = load_config("configs/dbnet.yaml")
    for split in SPLITS:
        cfg["datasets"][split].update(
            image_path=str(root / "img"), annotation_path=str(ann), max_side=MAX_SIDE
        )
        cfg["datasets"][split]["transform"] = {"name": "val", "size": 256}
    cfg["datasets"]["train_dataset"]["transform"] = {
        "name": "train",
        "size": 256,
        "scale_range": [0.8, 1.2],
        "flip_prob": 0.5,
    }
    cfg["model"].update(width=8, inner_channels=32)
    cfg["dataloader"].update(batch_size=2, num_workers=0)
    # Low thresholds so that a barely trained model still detects boxes to compare.
    cfg["postprocess"].update(thresh=0.2, box_thresh=0.2)
    cfg["trainer"].update({"epochs": 2, "output_dir": str(out), **trainer})
    return cfg


@pytest.fixture(scope="module")
def trained(receipts, tmp_path_factory):
    """A 2-epoch run: its config, summary and folder."""
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(receipts, out)
    summary = train(cfg, progress=False, echo=lambda _: None)
    return cfg, summary, out


def _with_source(cfg: dict, source: str, receipts) -> dict:
    cfg = json.loads(json.dumps(cfg))
    val = cfg["datasets"]["val_dataset"]
    if source == "preload":
        val["preload_images"] = True
    elif source == "cache":
        val["image_cache"] = str(receipts[0] / "img.lmdb")
    return cfg


def test_run_folder_holds_resolved_config_log_checkpoints_and_summary(trained):
    cfg, summary, out = trained
    assert yaml.safe_load((out / "config.yaml").read_text()) == cfg
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(r["train"]["images"] == 6 for r in log)
    assert json.loads((out / "summary.json").read_text()) == summary
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and state["config"] == cfg
    assert (out / "best.pt").is_file()


def test_epoch_time_splits_into_data_wait_and_compute(trained):
    _, _, out = trained
    record = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    train_stats = record["train"]
    assert 0 < train_stats["data_wait_s"] < train_stats["wall_s"]
    assert train_stats["compute_s"] == pytest.approx(
        train_stats["wall_s"] - train_stats["data_wait_s"]
    )
    assert set(record["metrics"]) >= {"precision", "recall", "hmean"}


class _Interrupt(Exception):
    pass


def _stop_after_first_epoch(line: str) -> None:
    if line.startswith("epoch 1/"):
        raise _Interrupt


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(receipts, trained, tmp_path):
    _, _, full_out = trained
    with pytest.raises(_Interrupt):  # killed after epoch 1 of 2, its checkpoint written
        train(tiny_config(receipts, tmp_path), progress=False, echo=_stop_after_first_epoch)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    resumed = tiny_config(receipts, tmp_path, resume=str(tmp_path / "last.pt"))
    train(resumed, progress=False, echo=lambda _: None)
    a = load_checkpoint(full_out / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "last.pt")["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def disk_eval(trained):
    cfg, _, out = trained
    return evaluate_checkpoint(cfg, str(out / "last.pt"), progress=False, keep_predictions=True)


def test_disk_evaluation_detects_boxes_to_compare(disk_eval):
    # Without detections the parity tests below would compare zeros with zeros.
    assert disk_eval.metrics["num_pred"] > 0
    assert disk_eval.metrics["num_gt"] > 0


@pytest.mark.parametrize("source", ["preload", "cache"])
def test_evaluation_is_identical_from_every_image_source(receipts, trained, disk_eval, source):
    cfg, _, out = trained
    other = evaluate_checkpoint(
        _with_source(cfg, source, receipts),
        str(out / "last.pt"),
        progress=False,
        keep_predictions=True,
    )
    assert other.metrics == disk_eval.metrics
    assert other.predictions.keys() == disk_eval.predictions.keys()
    for name, dets in disk_eval.predictions.items():
        assert [(d.polygon.tolist(), d.score) for d in other.predictions[name]] == [
            (d.polygon.tolist(), d.score) for d in dets
        ], name


def test_validation_during_training_equals_ocr_eval_of_the_checkpoint(trained, disk_eval):
    _, summary, _ = trained
    assert summary["metrics"] == disk_eval.metrics


def test_ocr_eval_cli_prints_json_metrics(trained, disk_eval):
    _, _, out = trained
    result = CliRunner().invoke(eval_command, ["-k", str(out / "last.pt"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {k: doc[k] for k in disk_eval.metrics} == disk_eval.metrics
    assert doc["timing"]["images"] == 6


def test_ocr_eval_cli_writes_predictions_in_the_canonical_frame(trained, tmp_path):
    _, _, out = trained
    path = tmp_path / "pred.json"
    result = CliRunner().invoke(
        eval_command, ["-k", str(out / "last.pt"), "--quiet", "--predictions", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert "H-mean" in result.output
    preds = json.loads(path.read_text())
    assert len(preds) == 6
    assert all(set(d) == {"points", "score"} for dets in preds.values() for d in dets)


def test_ocr_eval_cli_missing_checkpoint_exits_1_naming_it(tmp_path):
    result = CliRunner().invoke(eval_command, ["-k", str(tmp_path / "none.pt")])
    assert result.exit_code == 1
    assert "none.pt' does not exist" in result.output


def test_ocr_train_cli_unknown_override_is_a_usage_error():
    result = CliRunner().invoke(train_command, ["trainer.epochz=3"])
    assert result.exit_code == 2
    assert "'trainer.epochz' is not in configs/dbnet.yaml" in result.output


def test_ocr_eval_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    cfg, _, out = trained
    wider = json.loads(json.dumps(cfg))
    wider["model"]["width"] = 16
    config = tmp_path / "wider.yaml"
    config.write_text(yaml.safe_dump(wider))
    result = CliRunner().invoke(eval_command, ["-k", str(out / "last.pt"), "-c", str(config)])
    assert result.exit_code == 1
    assert "does not fit the configured model" in result.output


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        cmd + args, capture_output=True, text=True, env=env, cwd=Path.cwd(), timeout=300
    )


@pytest.mark.slow
def test_two_gloo_ranks_evaluate_to_the_single_process_metrics(receipts, trained, tmp_path):
    cfg, _, out = trained
    cfg = _with_source(cfg, "cache", receipts)
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
    cfg = _with_source(cfg, "cache", receipts)
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


def test_ocr_train_cli_prints_one_line_per_epoch_with_the_time_split(receipts, tmp_path):
    cfg = tiny_config(receipts, tmp_path / "run", epochs=2, val_every=2)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(train_command, ["-c", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    epochs = [line for line in result.output.splitlines() if line.startswith("epoch ")]
    assert [line.split(" |")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all("img/s" in line and "data wait" in line and "compute" in line for line in epochs)
    assert "H-mean" not in epochs[0] and "H-mean" in epochs[1]  # val_every=2


def test_bf16_autocast_trains_and_evaluates(receipts, tmp_path):
    cfg = tiny_config(receipts, tmp_path, epochs=1, amp=True)
    summary = train(cfg, progress=False, echo=lambda _: None)
    assert math.isfinite(summary["final_loss"])
    assert set(summary["metrics"]) >= {"precision", "recall", "hmean"}


def test_real_receipts_evaluate_identically_from_disk_and_cache(trained, sroie_img_dir, tmp_path):
    # Four SROIE scans (full-size JPEGs, real EXIF and colour handling) through the whole chain.
    cfg, _, out = trained
    names = sorted(p.name for p in sroie_img_dir.glob("*.jpg"))[:4]
    (tmp_path / "img").mkdir()
    for name in names:
        (tmp_path / "img" / name).symlink_to(sroie_img_dir / name)
    boxes = convert_icdar_folder(sroie_img_dir.parent / "box", sroie_img_dir)
    boxes["images"] = {n: boxes["images"][n] for n in names}
    (tmp_path / "ann.json").write_text(json.dumps(boxes))
    build_cache(tmp_path / "img", tmp_path / "img.lmdb", max_side=MAX_SIDE, workers=1)
    cfg = json.loads(json.dumps(cfg))
    cfg["datasets"]["val_dataset"].update(
        image_path=str(tmp_path / "img"), annotation_path=str(tmp_path / "ann.json")
    )
    disk = evaluate_checkpoint(cfg, str(out / "last.pt"), progress=False, keep_predictions=True)
    cfg["datasets"]["val_dataset"]["image_cache"] = str(tmp_path / "img.lmdb")
    cache = evaluate_checkpoint(cfg, str(out / "last.pt"), progress=False, keep_predictions=True)
    assert disk.metrics["num_gt"] > 0 and disk.metrics["num_pred"] > 0
    assert cache.metrics == disk.metrics
    for name in names:
        assert [d.polygon.tolist() for d in cache.predictions[name]] == [
            d.polygon.tolist() for d in disk.predictions[name]
        ]
