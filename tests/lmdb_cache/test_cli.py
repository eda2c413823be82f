"""The commands through click's CliRunner: exit codes, one JSON document on stdout, the default
output path, messages that name the failed file, and help with examples."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from PIL import Image

from lmdb_cache.cli import build_command, cli, info_command, validate_command
from lmdb_cache.write import estimate

from .conftest import noisy_image, save_image

COMMANDS = {"build": build_command, "validate": validate_command, "info": info_command}


def invoke(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args])


# --- build ---------------------------------------------------------------------------------


def test_build_exits_0_and_writes_the_cache(tiny_images, build_cli):
    output = tiny_images.parent / "out.lmdb"
    result = build_cli(tiny_images, "-o", output, "-q")
    assert result.exit_code == 0, result.output
    assert (output / "data.mdb").is_file()


def test_build_quiet_prints_nothing(tiny_images, build_cli):
    result = build_cli(tiny_images, "-o", tiny_images.parent / "out.lmdb", "-q")
    assert (result.exit_code, result.output) == (0, "")


def test_build_summary_goes_to_stderr(tiny_images, build_cli):
    result = build_cli(tiny_images, "-o", tiny_images.parent / "out.lmdb")
    assert result.stdout == ""
    assert "6 images" in result.stderr and "6 added" in result.stderr


def test_build_json_is_one_document_on_stdout(tiny_images, build_cli):
    output = tiny_images.parent / "out.lmdb"
    result = build_cli(tiny_images, "-o", output, "--json")
    doc = json.loads(result.stdout)  # raises on anything but exactly one document
    assert result.exit_code == 0
    assert {k: doc[k] for k in ("output", "ok", "images", "added", "failed", "failures")} == {
        "output": str(output),
        "ok": True,
        "images": 6,
        "added": 6,
        "failed": 0,
        "failures": [],
    }


def test_build_json_rerun_reports_unchanged(tiny_images, tiny_cache, build_cli):
    doc = json.loads(build_cli(tiny_images, "-o", tiny_cache, "--json").stdout)
    assert (doc["added"], doc["unchanged"], doc["images"]) == (0, 6, 6)


@pytest.fixture()
def with_a_bad_source(tiny_images):
    (tiny_images / "sub/broken.jpg").write_text("plain text, not a JPEG")
    return tiny_images


def test_build_with_a_failed_source_exits_1(with_a_bad_source, build_cli):
    assert build_cli(with_a_bad_source, "-q").exit_code == 1


def test_build_failed_line_names_the_source_and_reason(with_a_bad_source, build_cli):
    result = build_cli(with_a_bad_source, "-q")
    assert "FAILED sub/broken.jpg: not an image Pillow can identify" in result.stderr.splitlines()


def test_build_json_with_a_failed_source_lists_it(with_a_bad_source, build_cli):
    result = build_cli(with_a_bad_source, "--json")
    doc = json.loads(result.stdout)
    assert (result.exit_code, doc["ok"], doc["failed"], doc["images"]) == (1, False, 1, 6)
    assert doc["failures"] == [
        {"key": "sub/broken.jpg", "reason": "not an image Pillow can identify"}
    ]


def test_build_of_a_missing_source_is_a_usage_error(tmp_path, build_cli):
    result = build_cli(tmp_path / "nope")
    assert result.exit_code == 2
    assert "is not a folder" in result.stderr


def test_build_of_a_file_as_source_is_a_usage_error(tmp_path, build_cli):
    (tmp_path / "file.jpg").write_bytes(b"x")
    assert build_cli(tmp_path / "file.jpg").exit_code == 2


def test_build_with_other_max_side_is_a_usage_error(tiny_images, tiny_cache, build_cli):
    result = build_cli(tiny_images, "-o", tiny_cache, "--max-side", "64", "-q")
    assert result.exit_code == 2
    assert "--rebuild" in result.stderr


def test_build_with_other_max_side_and_rebuild_succeeds(tiny_images, tiny_cache, build_cli):
    result = build_cli(tiny_images, "-o", tiny_cache, "--max-side", "64", "--rebuild", "--json")
    doc = json.loads(result.stdout)
    assert (result.exit_code, doc["added"], doc["images"]) == (0, 6, 6)


@pytest.mark.parametrize("value", ["0", "-5", "big"], ids=["zero", "negative", "not-a-number"])
def test_build_with_an_invalid_max_side_is_a_usage_error(tiny_images, build_cli, value):
    assert build_cli(tiny_images, "--max-side", value).exit_code == 2


@pytest.mark.parametrize("src", ["data/val", "data/val/"], ids=["plain", "trailing-slash"])
def test_build_writes_src_dot_lmdb_by_default(tiny_images, build_cli, monkeypatch, src):
    monkeypatch.chdir(tiny_images.parent.parent)  # tiny_images is <tmp>/data/val
    result = build_cli(src, "-q")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir("data")) == ["val", "val.lmdb"]


# --- validate ------------------------------------------------------------------------------


def test_validate_healthy_exits_0(tiny_images, tiny_cache):
    result = invoke(validate_command, tiny_cache, "--source", tiny_images)
    assert result.exit_code == 0, result.output
    # 120x80 + 60x150 + 100x160 + 96x72 + 200x90 + 64x100 pixels x 3 = 197,736 bytes
    assert result.stdout.splitlines()[-1].endswith("6 images, 197.7 KB checksummed: healthy")


def test_validate_json_is_one_document_on_stdout(tiny_images, tiny_cache):
    result = invoke(validate_command, tiny_cache, "--source", tiny_images, "--json")
    doc = json.loads(result.stdout)
    assert result.exit_code == 0
    assert {k: doc[k] for k in ("path", "ok", "images", "source", "problems", "warnings")} == {
        "path": str(tiny_cache),
        "ok": True,
        "images": 6,
        "source": str(tiny_images),
        "problems": [],
        "warnings": [],
    }
    assert doc["manifest"]["complete"] is True


def test_validate_stale_source_exits_1(tiny_images, tiny_cache):
    save_image(tiny_images / "sub/d.jpg", noisy_image(200, 90, seed=77))
    result = invoke(validate_command, tiny_cache, "--source", tiny_images)
    assert result.exit_code == 1
    assert result.stdout.startswith("PROBLEM stale-changed: sub/d.jpg:")


def test_validate_json_with_problems_exits_1_with_counts(tiny_images, tiny_cache):
    (tiny_images / "b.png").unlink()
    result = invoke(validate_command, tiny_cache, "--source", tiny_images, "--json")
    doc = json.loads(result.stdout)
    assert (result.exit_code, doc["ok"], doc["problem_counts"]) == (1, False, {"stale-missing": 1})
    assert [(p["kind"], p["key"]) for p in doc["problems"]] == [("stale-missing", "b.png")]


def test_validate_not_cached_annotation_exits_1(tiny_cache, tmp_path):
    annotations = tmp_path / "val.json"
    annotations.write_text(json.dumps({"images": {"a.jpg": {}, "missing.jpg": {}}}))
    result = invoke(validate_command, tiny_cache, "--annotations", annotations, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["problem_counts"] == {"not-cached": 1}


def test_validate_malformed_annotations_is_a_usage_error_naming_the_file(tiny_cache, tmp_path):
    annotations = tmp_path / "val.json"
    annotations.write_text("{not json")
    result = invoke(validate_command, tiny_cache, "--annotations", annotations)
    assert result.exit_code == 2
    assert str(annotations) in result.stderr


def test_validate_build_failure_is_a_warning_exit_0(with_a_bad_source, build_cli):
    build_cli(with_a_bad_source, "-q")
    cache = with_a_bad_source.parent / "val.lmdb"
    result = invoke(validate_command, cache, "--source", with_a_bad_source)
    assert result.exit_code == 0
    assert "warning build-failure: sub/broken.jpg" in result.stdout


# --- info ----------------------------------------------------------------------------------


def test_info_json_is_one_document_on_stdout(tiny_cache):
    result = invoke(info_command, tiny_cache, "--json")
    doc = json.loads(result.stdout)
    assert result.exit_code == 0
    fields = ("path", "format", "format_version", "complete", "images", "entries", "failures")
    assert {k: doc[k] for k in fields} == {
        "path": str(tiny_cache),
        "format": "lmdb-image-cache",
        "format_version": 2,
        "complete": True,
        "images": 6,
        "entries": 6,
        "failures": [],
    }
    assert doc["settings"]["max_side"] is None
    assert doc["file_bytes"] == sum(
        (tiny_cache / name).stat().st_size for name in ("data.mdb", "lock.mdb", "build.lock")
    )


def test_info_text_shows_the_counts(tiny_cache):
    result = invoke(info_command, tiny_cache)
    assert result.exit_code == 0
    assert "images:       6" in result.stdout.splitlines()
    assert "complete:     yes" in result.stdout.splitlines()


def test_info_of_a_folder_without_a_store_exits_1(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke(info_command, tmp_path / "empty")
    assert result.exit_code == 1
    assert "no data.mdb" in result.stderr


# --- both read commands, the group and help ----------------------------------------------


@pytest.mark.parametrize("name", ["validate", "info"], ids=str)
def test_missing_cache_is_a_usage_error(tmp_path, name):
    result = invoke(COMMANDS[name], tmp_path / "none.lmdb")
    assert result.exit_code == 2
    assert "does not exist; build it with 'build-cache" in result.stderr


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["build", "{src}", "-q", "-j", "1"], 0),
        (["validate", "{cache}", "-q"], 0),
        (["info", "{cache}"], 0),
        (["validate", "{missing}"], 2),
    ],
    ids=["build", "validate", "info", "validate-missing"],
)
def test_group_runs_the_subcommands(tiny_images, tiny_cache, args, code):
    paths = {"src": tiny_images, "cache": tiny_cache, "missing": tiny_cache.parent / "nope"}
    result = invoke(cli, *[a.format(**paths) for a in args])
    assert result.exit_code == code, result.output


SCRIPTS = {"build": "build-cache", "validate": "validate-cache", "info": "cache-info"}


@pytest.mark.parametrize("name", COMMANDS, ids=str)
def test_help_shows_examples(name):
    result = invoke(COMMANDS[name], "--help")
    examples = result.stdout.partition("Example")[2]
    assert result.exit_code == 0
    assert f"{SCRIPTS[name]} data/val" in examples


def test_group_help_lists_the_subcommands():
    result = invoke(cli, "--help")
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line}
    assert (result.exit_code, listed) == (
        0,
        {"build", "validate", "info", "copy", "ls", "show", "diff", "merge"},
    )


def test_build_of_a_folder_without_images_is_an_error_and_writes_nothing(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("no images here")
    result = invoke(build_command, tmp_path / "src")
    assert result.exit_code == 1
    assert "no images below" in result.stderr and ".jpg" in result.stderr
    assert not (tmp_path / "src.lmdb").exists()


def test_build_help_leads_with_the_capped_build():
    examples = invoke(build_command, "--help").stdout.partition("Examples:")[2].splitlines()
    assert examples[1].split("#")[0].strip() == "build-cache data/val --max-side 640"
    assert examples[3].split("#")[0].strip() == "build-cache data/val"


# --- the size warning before a full-size build ------------------------------------------------


@pytest.fixture()
def large_images(tmp_path, monkeypatch):
    """``<tmp>/large``: two flat 1000 x 800 JPEGs (2.4 MB decoded each, a few KB as files),
    with the warning's byte threshold lowered to 1 MiB so they are "large"."""
    root = tmp_path / "large"
    root.mkdir()
    for i in range(2):
        Image.new("RGB", (1000, 800), (240, 240 - i, 230)).save(root / f"page_{i}.jpg")
    monkeypatch.setattr(estimate, "MIN_DECODED_BYTES", 1 << 20)
    return root


def test_build_full_size_warns_of_the_store_size_first(large_images, build_cli):
    result = build_cli(large_images, "-q")
    # 2 x 1000 x 800 x 3 = 4.8 MB; at 640: 640 x 512 x 3 x 2 = 1,966,080 bytes.
    first = result.stderr.splitlines()[0]
    assert first.startswith("warning: the decoded store will be about 4.8 MB from ")
    assert first.endswith(
        "to train at 640 px (the ocr configs' transform size) build it with --max-side 640: "
        "about 2.0 MB. Continuing at full size."
    )
    assert result.exit_code == 0


def test_build_full_size_still_stores_full_size(large_images, build_cli):
    build_cli(large_images, "-q")
    doc = json.loads(invoke(cli, "ls", f"{large_images}.lmdb", "--json").stdout)
    assert [(r["width"], r["height"]) for r in doc] == [(1000, 800), (1000, 800)]


def test_build_with_max_side_gives_no_size_warning(large_images, build_cli):
    result = build_cli(large_images, "-q", "--max-side", 640)
    assert (result.exit_code, result.stderr) == (0, "")


def test_update_gives_no_size_warning(large_images, build_cli):
    build_cli(large_images, "-q")
    result = build_cli(large_images, "-q")
    assert (result.exit_code, result.stderr) == (0, "")


def test_build_json_carries_the_size_warning(large_images, build_cli):
    result = build_cli(large_images, "--json")
    doc = json.loads(result.stdout)
    assert doc["warnings"][0].startswith("the decoded store will be about 4.8 MB")
    assert "warning" not in result.stderr


def test_small_full_size_build_gives_no_size_warning(tiny_images, build_cli):
    assert "warning" not in build_cli(tiny_images, "-q").stderr
