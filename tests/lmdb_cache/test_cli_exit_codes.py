"""The commands through click's CliRunner: exit codes, one JSON document, default paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lmdb_cache.cli import build_command, cli, info_command, validate_command


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "val"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def run(command, args):
    return CliRunner().invoke(command, [str(a) for a in args])


def test_build_writes_src_dot_lmdb_by_default(images):
    result = run(build_command, [f"{images}/", "-q"])
    assert result.exit_code == 0, result.output
    assert (images.parent / "val.lmdb" / "data.mdb").is_file()


def test_build_json_is_one_document_on_stdout(images):
    result = run(build_command, [images, "--json"])
    doc = json.loads(result.stdout)
    assert (result.exit_code, doc["images"], doc["failed"], doc["ok"]) == (0, 3, 0, True)


def test_build_with_a_bad_source_exits_1_and_names_it(images):
    (images / "broken.jpg").write_text("not an image")
    result = run(build_command, [images, "-q"])
    assert result.exit_code == 1
    assert "FAILED broken.jpg" in result.stderr
    assert (
        json.loads(run(info_command, [images.parent / "val.lmdb", "--json"]).stdout)["images"] == 3
    )


def test_build_of_a_missing_folder_is_a_usage_error(tmp_path):
    assert run(build_command, [tmp_path / "nope"]).exit_code == 2


def test_changing_max_side_without_rebuild_is_a_usage_error(images):
    run(build_command, [images, "-q"])
    result = run(build_command, [images, "-q", "--max-side", "16"])
    assert result.exit_code == 2
    assert "--rebuild" in result.stderr


def test_validate_healthy_exits_0_with_json(images):
    run(build_command, [images, "-q"])
    result = run(validate_command, [images.parent / "val.lmdb", "--source", images, "--json"])
    doc = json.loads(result.stdout)
    assert (result.exit_code, doc["ok"], doc["images"]) == (0, True, 3)


def test_validate_stale_exits_1(images):
    run(build_command, [images, "-q"])
    (images / "0.png").unlink()
    result = run(validate_command, [images.parent / "val.lmdb", "--source", images])
    assert result.exit_code == 1
    assert "stale-missing" in result.stdout


def test_validate_missing_cache_is_a_usage_error(tmp_path):
    result = run(validate_command, [tmp_path / "none.lmdb"])
    assert result.exit_code == 2
    assert "build-cache" in result.stderr


def test_group_exposes_the_three_commands(images):
    result = run(cli, ["build", images, "-q"])
    assert result.exit_code == 0
    assert run(cli, ["info", images.parent / "val.lmdb"]).exit_code == 0
    assert run(cli, ["validate", images.parent / "val.lmdb", "-q"]).exit_code == 0


@pytest.mark.parametrize(
    "command", [build_command, validate_command, info_command], ids=["build", "validate", "info"]
)
def test_help_shows_examples(command):
    result = run(command, ["--help"])
    assert result.exit_code == 0 and "Example" in result.output
