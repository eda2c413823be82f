"""Checkpoint errors as ocr-eval and ocr-train --resume report them: one line naming the file
and what is wrong, exit 2 for a path that is not a checkpoint, 1 for a damaged one; and a
save that a kill -9 interrupts."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from ocr.checkpoint import load_checkpoint, save_checkpoint
from ocr.cli import eval_command, train_command


def _one_line_error(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: ") and "Traceback" not in output
    return lines[0]


def test_ocr_eval_of_a_missing_checkpoint_exits_2_naming_it(tmp_path):
    result = CliRunner().invoke(eval_command, ["-k", str(tmp_path / "none.pt")])
    assert result.exit_code == 2
    assert f"checkpoint '{tmp_path / 'none.pt'}' does not exist" in _one_line_error(result.output)


def test_ocr_train_resume_of_a_missing_checkpoint_exits_2_naming_it(tmp_path):
    # It used to load the default config first and complain about its annotation file.
    result = CliRunner().invoke(train_command, ["--resume", str(tmp_path / "missing.pt")])
    assert result.exit_code == 2
    line = _one_line_error(result.output)
    assert f"checkpoint '{tmp_path / 'missing.pt'}' does not exist" in line


def _annotations(path):
    path.write_text(json.dumps({"images": {"a.jpg": {"words": {}}}}))


def _state_dict(path):
    torch.save({"conv.weight": torch.zeros(2, 2)}, path)


def _pickled_module(path):
    torch.save(torch.nn.Linear(2, 2), path)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_annotations, "(not a PyTorch file)"),
        (_state_dict, "(a PyTorch file without a 'model' entry"),
        (_pickled_module, "holds Python objects other than tensors"),
    ],
    ids=["annotation-json", "state-dict", "pickled-module"],
)
def test_ocr_eval_of_a_file_that_is_not_a_checkpoint_exits_2_in_one_line(tmp_path, make, reason):
    path = tmp_path / "val.json"
    make(path)
    result = CliRunner().invoke(eval_command, ["-k", str(path)])
    assert result.exit_code == 2
    line = _one_line_error(result.output)
    assert f"'{path}' is not a checkpoint of ocr-train" in line and reason in line
    assert "weights_only" not in line


def test_ocr_eval_of_a_cut_short_checkpoint_exits_1_in_one_line(trained, tmp_path):
    _, _, out = trained
    data = (out / "last.pt").read_bytes()
    path = tmp_path / "last.pt"
    path.write_bytes(data[: len(data) // 2])
    result = CliRunner().invoke(eval_command, ["-k", str(path)])
    assert result.exit_code == 1
    assert f"checkpoint '{path}' is damaged: the file is cut short" in _one_line_error(
        result.output
    )


def test_ocr_eval_refuses_a_checkpoint_of_another_model_in_one_line(trained, tmp_path):
    cfg, _, out = trained
    wider = json.loads(json.dumps(cfg))
    wider["model"]["width"] = 16
    config = tmp_path / "wider.yaml"
    config.write_text(yaml.safe_dump(wider))
    result = CliRunner().invoke(eval_command, ["-k", str(out / "last.pt"), "-c", str(config)])
    assert result.exit_code == 1
    line = _one_line_error(result.output)
    assert "does not fit the configured model (" in line and "the first: size mismatch" in line


def _save_forever(path: Path, ready) -> None:
    weights = torch.rand(12_000_000)  # 48 MB: a save takes long enough to be hit
    for n in range(1_000_000):
        weights[0] = n
        save_checkpoint(path, {"model": {"w": weights}, "n": n})
        ready.set()


def test_kill_9_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "last.pt"
    rng = random.Random(7)
    context = multiprocessing.get_context("fork")  # a fresh interpreter would cost 2 s a round
    hit = 0
    for _ in range(8):
        ready = context.Event()
        proc = context.Process(target=_save_forever, args=(path, ready))
        proc.start()
        assert ready.wait(60)  # one whole save done
        time.sleep(rng.uniform(0.0, 0.3))
        tmp_present = (tmp_path / "last.pt.tmp").exists()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        hit += tmp_present
        state = load_checkpoint(path)
        assert state["model"]["w"][0] == state["n"]
    assert hit, "no kill landed during a save: make the state larger"
