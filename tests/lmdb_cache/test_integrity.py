"""Integrity of everything a reader trusts: metadata, manifest and failure entries carry a
checksum, and damage to LMDB's own pages ends in a report, never a traceback.

Each test damages one precise byte (located with ``pages.DataFile``) and expects the damage
to be named: by the key, the database and the kind of problem.
"""

from __future__ import annotations

import json

import msgpack
import pytest
from click.testing import CliRunner

from lmdb_cache import CorruptRecordError, build_cache, errors, open_cache, validate_cache
from lmdb_cache.cli import validate_command

from .pages import DataFile, flip, write_at


def kinds(report) -> set[str]:
    return {p.kind for p in report.problems}


def _field_value_offset(store, key: bytes, field: str) -> int:
    """File offset of the last byte of ``field``'s msgpack value inside ``key``'s metadata."""
    node = DataFile(store).value(b"meta", key)
    data = DataFile(store).data[node.value_offset : node.value_offset + node.value_size]
    name = msgpack.packb(field)
    at = data.index(name) + len(name)
    # The value's encoding: one byte (a fixint) or a marker and a payload; its last byte is
    # flipped, so the value changes but stays the same msgpack type.
    marker = data[at]
    length = {0xCB: 9, 0xCF: 9, 0xCD: 3, 0xCE: 5, 0xCC: 2, 0xD9: 2 + data[at + 1]}.get(marker, 1)
    return node.value_offset + at + length - 1


@pytest.mark.parametrize("field", ["raw_height", "scale_x", "source_sha256", "source_mtime_ns"])
def test_flipped_metadata_byte_is_a_problem_naming_the_key(many_cache, field):
    flip(many_cache, _field_value_offset(many_cache, b"img_07.png", field))
    report = validate_cache(many_cache)
    assert [(p.kind, p.key) for p in report.problems if p.key] == [("corrupt-meta", "img_07.png")]


@pytest.mark.parametrize("field", ["raw_height", "scale_x", "source_sha256"])
def test_flipped_metadata_byte_fails_the_reader(many_cache, field):
    flip(many_cache, _field_value_offset(many_cache, b"img_07.png", field))
    with (
        open_cache(many_cache) as reader,
        pytest.raises(CorruptRecordError, match="'img_07.png'.*checksum mismatch"),
    ):
        reader.meta("img_07.png")


def test_flipped_manifest_byte_fails_the_reader_with_the_fix(many_cache):
    node = DataFile(many_cache).value(b"manifest", b"manifest")
    flip(many_cache, node.value_offset + node.value_size - 10)
    with pytest.raises(errors.StoreDamagedError, match="damaged manifest.*--rebuild"):
        open_cache(many_cache)


def test_flipped_manifest_byte_is_a_problem(many_cache):
    node = DataFile(many_cache).value(b"manifest", b"manifest")
    flip(many_cache, node.value_offset + node.value_size - 10)
    assert kinds(validate_cache(many_cache)) == {"damaged"}


def _meta_branch(store):
    branches = DataFile(store).database(b"meta")[1]
    assert branches, "the fixture's meta database needs a branch page"
    return branches[0]


def test_branch_pointer_out_of_range_is_a_report_not_a_traceback(many_cache):
    # The high byte of node 1's child page number (bits 16..23): a page far past the file.
    flip(many_cache, _meta_branch(many_cache).node_offsets[1] + 2, 0x40)
    result = CliRunner().invoke(validate_command, [str(many_cache), "--json"])
    assert (result.exit_code, result.exception.__class__) == (1, SystemExit)
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and "lmdb-structure" in doc["problem_counts"]


def test_branch_pointer_out_of_range_names_the_unreadable_keys(many_cache):
    flip(many_cache, _meta_branch(many_cache).node_offsets[1] + 2, 0x40)
    report = validate_cache(many_cache)
    assert "unreadable" in kinds(report) and "lmdb-structure" in kinds(report)


def test_keys_listed_but_unreadable_are_problems(many_cache):
    # Node 1's separator key made greater than every key: a lookup of a key of node 1's child
    # then goes to node 0's child and finds nothing, while a cursor still lists it.
    branch = _meta_branch(many_cache)
    node = branch.node_offsets[1]
    write_at(many_cache, node + 8, b"z")
    report = validate_cache(many_cache)
    unreadable = {p.key for p in report.problems if p.kind == "unreadable"}
    assert len(unreadable) >= 5 and all(k.startswith("img_") for k in unreadable)
    assert not report.ok


def test_verifying_reader_refuses_a_structurally_damaged_store(many_cache):
    flip(many_cache, _meta_branch(many_cache).node_offsets[1] + 2, 0x40)
    with pytest.raises(errors.StoreDamagedError, match="structural check.*--rebuild"):
        open_cache(many_cache, verify=True)


def test_flipped_failure_entry_is_a_problem(tiny_images, tmp_path):
    (tiny_images / "broken.jpg").write_bytes(b"not an image")
    output = tmp_path / "f.lmdb"
    build_cache(tiny_images, output, workers=1)
    node = DataFile(output).value(b"failures", b"broken.jpg")
    flip(output, node.value_offset + 3)
    assert [(p.kind, p.key) for p in validate_cache(output).problems] == [
        ("corrupt-failure", "broken.jpg"),
        ("manifest-mismatch", None),
    ]


def test_problem_messages_carry_the_fix_with_the_real_paths(many_cache, many_images):
    flip(many_cache, _field_value_offset(many_cache, b"img_07.png", "raw_height"))
    (problem,) = validate_cache(many_cache).problems
    assert f"'build-cache {many_images.resolve()} -o {many_cache} --rebuild'" in problem.message
