"""``lmdb-cache diff A B`` through click's CliRunner: exit 0 for the same store, 1 naming
exactly what differs (keys only in one store, records changed and how, settings), 2 for a path
that holds no store; one JSON document with --json; no pixel read, and no record read at all
when the identities agree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from lmdb_cache import CacheWriter, build_cache, copy_cache
from lmdb_cache.cli import cli
from lmdb_cache.read.snapshot import Snapshot

from .conftest import random_arrays as arrays
from .conftest import write_arrays as write
from .crafting import strip_digest


def diff(*args: object) -> Result:
    return CliRunner().invoke(cli, ["diff", *map(str, args)])


def diff_json(*args: object) -> tuple[int, dict]:
    result = diff(*args, "--json")
    return result.exit_code, json.loads(result.stdout)  # exactly one document


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two stores of the same six arrays, written in opposite orders."""
    images = arrays()
    backwards = dict(reversed(list(images.items())))
    return write(tmp_path / "a.lmdb", images), write(tmp_path / "b.lmdb", backwards)


def test_equal_stores_exit_0(pair):
    result = diff(*pair)
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("same: identical settings and records\n")


def test_equal_identities_read_no_record(pair, monkeypatch):
    def no_record_read(*args, **kwargs):
        raise AssertionError("a record was read")

    for name in ("entry", "keys_after", "key_list", "read"):
        monkeypatch.setattr(Snapshot, name, no_record_read)
    code, doc = diff_json(*pair)
    assert (code, doc["same"], doc["walked"]) == (0, True, False)


def test_a_rebuild_and_a_compacted_copy_are_the_same(tiny_images, tiny_cache, tmp_path):
    build_cache(tiny_images, tmp_path / "rebuilt.lmdb", workers=1)
    copy_cache(tiny_cache, tmp_path / "copy.lmdb", compact=True)
    assert diff(tiny_cache, tmp_path / "rebuilt.lmdb").exit_code == 0
    assert diff(tiny_cache, tmp_path / "copy.lmdb").exit_code == 0


def test_one_changed_pixel_names_exactly_that_key(tmp_path):
    images = arrays()
    changed = {key: image.copy() for key, image in images.items()}
    changed["img_3"][0, 0, 0] ^= 1
    code, doc = diff_json(write(tmp_path / "a.lmdb", images), write(tmp_path / "b.lmdb", changed))
    assert code == 1
    assert (doc["same"], doc["only_a"], doc["only_b"], doc["settings"]) == (False, [], [], {})
    assert doc["changed"] == [{"key": "img_3", "fields": ["checksum"]}]
    assert doc["identity"]["a"] != doc["identity"]["b"]


def test_keys_only_in_one_store_are_listed(tmp_path):
    images = arrays(6)
    a = {key: images[key] for key in ("img_0", "img_1", "img_2", "img_4")}
    b = {key: images[key] for key in ("img_1", "img_3", "img_4", "img_5")}
    code, doc = diff_json(write(tmp_path / "a.lmdb", a), write(tmp_path / "b.lmdb", b))
    assert (code, doc["only_a"], doc["only_b"], doc["changed"]) == (
        1,
        ["img_0", "img_2"],
        ["img_3", "img_5"],
        [],
    )


def test_the_fields_that_differ_are_named(tmp_path):
    images = arrays(3)
    resized = dict(images)
    resized["img_1"] = np.zeros((4, 5, 3), np.uint8)  # img_1 was 13 x 9
    code, doc = diff_json(write(tmp_path / "a.lmdb", images), write(tmp_path / "b.lmdb", resized))
    fields = ["width", "height", "checksum", "raw_width", "raw_height"]
    assert (code, doc["changed"]) == (1, [{"key": "img_1", "fields": fields}])


def test_another_extra_is_a_changed_field(tmp_path):
    images = arrays(3)
    a = write(tmp_path / "a.lmdb", images)
    with CacheWriter(tmp_path / "b.lmdb") as writer:
        for key, image in images.items():
            label = "other" if key == "img_2" else key.upper()
            writer.add(key, image=image, extra={"label": label})
    code, doc = diff_json(a, tmp_path / "b.lmdb")
    assert (code, doc["changed"]) == (1, [{"key": "img_2", "fields": ["extra"]}])


def test_settings_that_differ_are_listed(tiny_images, tiny_cache, tmp_path):
    # A cap above every image's size: the same records under other settings.
    build_cache(tiny_images, tmp_path / "capped.lmdb", max_side=1000, workers=1)
    code, doc = diff_json(tiny_cache, tmp_path / "capped.lmdb")
    assert (code, doc["settings"], doc["changed"]) == (
        1,
        {"max_side": {"a": None, "b": 1000}},
        [],
    )


def test_the_text_report_has_a_line_per_difference(tmp_path):
    images = arrays(4)
    b = {key: image.copy() for key, image in images.items() if key != "img_0"}
    b["img_2"][1, 1, 1] ^= 1
    b["more"] = images["img_0"]
    result = diff(write(tmp_path / "a.lmdb", images), write(tmp_path / "b.lmdb", b))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[2:] == [
        "- img_0",
        "+ more",
        "~ img_2 (checksum)",
        "differ: 1 only in A, 1 only in B, 1 changed, 0 setting(s)",
    ]


def test_the_walk_reads_no_pixel(tmp_path, monkeypatch):
    images = arrays()
    changed = dict(images)
    changed["img_5"] = images["img_4"][:, :, ::-1].copy()
    a, b = write(tmp_path / "a.lmdb", images), write(tmp_path / "b.lmdb", changed)

    def no_pixel_read(*args, **kwargs):
        raise AssertionError("a pixel was read")

    monkeypatch.setattr(Snapshot, "read", no_pixel_read)
    code, doc = diff_json(a, b)
    assert (code, doc["walked"], [c["key"] for c in doc["changed"]]) == (1, True, ["img_5"])


def test_a_path_that_holds_no_store_is_a_usage_error(pair, tmp_path):
    (tmp_path / "empty").mkdir()
    result = diff(pair[0], tmp_path / "empty")
    assert result.exit_code == 2
    assert f"'{tmp_path / 'empty'}' holds no LMDB store (no data.mdb)" in result.stderr
    assert "pass the folder build-cache wrote" in result.stderr


def test_a_missing_store_is_a_usage_error(pair, tmp_path):
    result = diff(tmp_path / "nope.lmdb", pair[1])
    assert result.exit_code == 2
    assert f"cache '{tmp_path / 'nope.lmdb'}' does not exist" in result.stderr


def test_a_store_without_the_digest_is_compared_by_its_records(pair, tmp_path):
    shutil.copytree(pair[1], tmp_path / "old.lmdb")
    strip_digest(tmp_path / "old.lmdb")
    assert diff(pair[0], tmp_path / "old.lmdb").exit_code == 0


def test_help_teaches_with_an_example():
    result = CliRunner().invoke(cli, ["diff", "--help"])
    assert result.exit_code == 0
    assert "lmdb-cache diff data/val.lmdb /local/ssd/val.lmdb" in result.stdout
    assert "Exit status: 0 the same, 1 they differ" in result.stdout
