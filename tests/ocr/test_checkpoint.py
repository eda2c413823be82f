"""Checkpoint errors as ocr-eval reports them: a missing file, weights of another model."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from ocr.cli import eval_command


def test_ocr_eval_cli_missing_checkpoint_exits_1_naming_it(tmp_path):
    result = CliRunner().invoke(eval_command, ["-k", str(tmp_path / "none.pt")])
    assert result.exit_code == 1
    assert "none.pt' does not exist" in result.output


def test_ocr_eval_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    cfg, _, out = trained
    wider = json.loads(json.dumps(cfg))
    wider["model"]["width"] = 16
    config = tmp_path / "wider.yaml"
    config.write_text(yaml.safe_dump(wider))
    result = CliRunner().invoke(eval_command, ["-k", str(out / "last.pt"), "-c", str(config)])
    assert result.exit_code == 1
    assert "does not fit the configured model" in result.output
