"""ocr-train / ocr-eval end to end on generated receipts: files, resume, source parity, CLI.

The ``receipts`` and ``trained`` fixtures are in ``conftest.py``; the runs under ``torchrun``
are in ``test_distributed.py``, checkpoint errors in ``test_checkpoint.py``.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from lmdb_cache import build_cache
from ocr import pipeline
from ocr.checkpoint import load_checkpoint, save_checkpoint
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


def _epoch_lines(output: str) -> list[tuple[str, ...]]:
    """Each epoch line without its timings: epoch, loss and, when it validated, the metrics."""
    lines = [line.split(" | ") for line in output.splitlines() if line.startswith("epoch ")]
    return [(p[0], p[1], p[-1] if "H-mean" in p[-1] else "") for p in lines]


def test_resume_from_the_checkpoint_alone_ends_like_an_uninterrupted_run(
    receipts, tmp_path, monkeypatch, one_thread
):
    # The run reads the cache through overrides; the resume repeats neither them nor -c.
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(receipts, tmp_path / "unused")))
    cache = receipts[0] / "img.lmdb"
    args = ["-c", str(config), "--quiet"]
    args += [f"datasets.{split}.image_cache={cache}" for split in ("train_dataset", "val_dataset")]
    full = CliRunner().invoke(train_command, [*args, "-o", str(tmp_path / "full")])
    assert full.exit_code == 0, full.output
    end_epoch = pipeline._end_epoch

    def killed_after_epoch_1(run, state, record, epoch):
        end_epoch(run, state, record, epoch)  # last.pt of epoch 1 is written
        if epoch == 0:
            raise _Interrupt

    monkeypatch.setattr(pipeline, "_end_epoch", killed_after_epoch_1)
    part = CliRunner().invoke(train_command, [*args, "-o", str(tmp_path / "part")])
    assert isinstance(part.exception, _Interrupt)
    monkeypatch.undo()
    resumed = CliRunner().invoke(
        train_command, ["--resume", str(tmp_path / "part" / "last.pt"), "--quiet"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert _epoch_lines(resumed.output) == _epoch_lines(full.output)[1:]
    a, b = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("full", "part"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    summaries = [json.loads((tmp_path / r / "summary.json").read_text()) for r in ("full", "part")]
    assert summaries[0]["metrics"] == summaries[1]["metrics"]
    assert summaries[0]["train_source"] == summaries[1]["train_source"] == "cache"
    logs = [(tmp_path / r / "log.jsonl").read_text().splitlines() for r in ("full", "part")]
    full_losses, part_losses = ([json.loads(x)["train"]["loss"] for x in log] for log in logs)
    assert len(full_losses) == 2 and part_losses == full_losses


def _global_random_states() -> tuple:
    _, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    numpy_state = (keys.tolist(), pos, has_gauss, gauss)
    return torch.get_rng_state().tolist(), numpy_state, random.getstate()


def _draw_from_every_generator() -> None:
    # What dropout or a random augmentation in the main process would do.
    torch.rand(3), np.random.rand(3), random.random()


def test_resume_restores_the_random_states_of_the_interrupted_run(receipts, tmp_path, one_thread):
    seen = {}

    def interrupted(line: str) -> None:
        if line.startswith("training on"):
            _draw_from_every_generator()
        if line.startswith("epoch 1/"):  # printed after last.pt is written
            seen["interrupted"] = _global_random_states()
            raise _Interrupt

    def resumed(line: str) -> None:
        if line.startswith("resumed from"):
            seen["resumed"] = _global_random_states()
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(tiny_config(receipts, tmp_path), progress=False, echo=interrupted)
    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # as in another process
    with pytest.raises(_Interrupt):
        cfg = tiny_config(receipts, tmp_path, resume=str(tmp_path / "last.pt"))
        train(cfg, progress=False, echo=resumed)
    assert seen["resumed"] == seen["interrupted"]


def test_resume_logs_each_override_with_its_old_and_new_value(trained, tmp_path):
    cfg, _, out = trained  # finished (epoch 2 of 2): resuming it trains no further epoch
    more = tmp_path / "more"
    result = CliRunner().invoke(
        train_command,
        ["--resume", str(out / "last.pt"), "-o", str(more), "postprocess.box_thresh=0.3"],
    )
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("override ")] == [
        f"override postprocess.box_thresh: {cfg['postprocess']['box_thresh']!r} -> 0.3",
        f"override trainer.output_dir: {str(out)!r} -> {str(more)!r}",
    ]
    saved = yaml.safe_load((more / "config.yaml").read_text())
    assert saved["postprocess"]["box_thresh"] == 0.3 and saved["model"] == cfg["model"]


def test_checkpoint_whose_config_leaves_keys_out_resumes_with_their_defaults(trained, tmp_path):
    cfg, _, out = trained
    state = load_checkpoint(out / "last.pt")
    old = state["config"]  # as an earlier version saved it: keys left for their defaults
    del old["loss"], old["postprocess"]["shrink_ratio"], old["trainer"]["val_every"]
    del old["datasets"]["val_dataset"]["cache_stale"]
    save_checkpoint(tmp_path / "old.pt", state)
    more = tmp_path / "more"
    result = CliRunner().invoke(
        train_command, ["--resume", str(tmp_path / "old.pt"), "-o", str(more), "-q"]
    )
    assert result.exit_code == 0, result.output
    # The defaults filled in are no changes: only the override is logged.
    assert [line for line in result.output.splitlines() if line.startswith("override ")] == [
        f"override trainer.output_dir: {str(out)!r} -> {str(more)!r}"
    ]
    saved = yaml.safe_load((more / "config.yaml").read_text())
    trainer = dict(cfg["trainer"], output_dir=str(more), resume=str(tmp_path / "old.pt"))
    assert saved == dict(cfg, trainer=trainer)


def test_resume_with_a_config_file_is_refused_as_a_usage_error(trained):
    _, _, out = trained
    result = CliRunner().invoke(
        train_command, ["-c", "configs/dbnet.yaml", "--resume", str(out / "last.pt")]
    )
    assert result.exit_code == 2
    assert "drop -c/--config configs/dbnet.yaml and give changes as KEY=VALUE" in result.output


def test_trainer_resume_override_resumes_from_the_checkpoint_config(trained, tmp_path):
    _, _, out = trained
    result = CliRunner().invoke(
        train_command, [f"trainer.resume={out / 'last.pt'}", "-o", str(tmp_path / "x"), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert f"resumed from {out / 'last.pt'} after epoch 2" in result.output


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


def test_ocr_eval_cli_writes_predictions_in_the_annotation_format(trained, tmp_path):
    _, _, out = trained
    path = tmp_path / "pred.json"
    result = CliRunner().invoke(
        eval_command, ["-k", str(out / "last.pt"), "--quiet", "--predictions", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert "H-mean" in result.output
    preds = json.loads(path.read_text())["images"]
    assert len(preds) == 6
    words = [w for entry in preds.values() for w in entry["words"].values()]
    assert all(set(w) == {"points", "score"} for w in words)


def test_ocr_train_cli_unknown_override_is_a_usage_error():
    result = CliRunner().invoke(train_command, ["trainer.epochz=3"])
    assert result.exit_code == 2
    assert "'trainer.epochz' is not in configs/dbnet.yaml" in result.output
    assert "did you mean 'trainer.epochs'?" in result.output


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
