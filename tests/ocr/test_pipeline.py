"""ocr-train / ocr-eval end to end on generated receipts: files, resume, source parity, CLI.

The ``receipts`` and ``trained`` fixtures are in ``conftest.py``; the runs under ``torchrun``
are in ``test_distributed.py``, checkpoint errors in ``test_checkpoint.py``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from click.testing import CliRunner

from lmdb_cache import build_cache
from ocr.checkpoint import load_checkpoint
from ocr.cli import eval_command, train_command
from ocr.data.annotations import convert_icdar_folder
from ocr.pipeline import evaluate_checkpoint, train

from .runs import MAX_SIDE, tiny_config, with_source


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
        with_source(cfg, source, receipts),
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


def test_ocr_eval_cli_writes_predictions_in_the_upright_frame(trained, tmp_path):
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


def test_ocr_train_cli_unknown_override_is_a_usage_error():
    result = CliRunner().invoke(train_command, ["trainer.epochz=3"])
    assert result.exit_code == 2
    assert "'trainer.epochz' is not in configs/dbnet.yaml" in result.output


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
