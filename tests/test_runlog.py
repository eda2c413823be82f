"""tools/runlog.py: where two runs' log.jsonl first differ, and whether data or compute did."""

from __future__ import annotations

import json

import pytest

from tools.runlog import STEP_LOG_OVERRIDE, LogError, first_divergence, step_log_overrides

METRICS = {"precision": 0.9, "recall": 0.8, "hmean": 0.8470588235294118, "matched": 8}


def step(epoch, n, loss, samples="a1", data="d1"):
    return {"epoch": epoch, "step": n, "loss": loss, "samples": samples, "data": data}


def epoch_record(epoch, loss, metrics=None, wall=1.0, samples="ea", data="ed"):
    record = {
        "epoch": epoch,
        "train": {"images": 8, "loss": loss, "wall_s": wall, "data_wait_s": wall / 10},
        "samples": samples,
        "data": data,
    }
    if metrics is not None:
        record.update(val={"images": 4, "loss": None, "wall_s": wall}, metrics=metrics)
    return record


RUN = [
    step(1, 1, 3.25, "s1", "d1"),
    step(1, 2, 3.0000000000000004, "s2", "d2"),
    epoch_record(1, 3.125),
    step(2, 3, 2.5, "s3", "d3"),
    step(2, 4, 2.25, "s4", "d4"),
    epoch_record(2, 2.375, METRICS),
]


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def logs(tmp_path, a, b):
    return write(tmp_path / "a.jsonl", a), write(tmp_path / "b.jsonl", b)


def changed(index, **fields):
    """RUN with the record at ``index`` changed."""
    records = json.loads(json.dumps(RUN))
    records[index].update(fields)
    return records


def test_equal_logs_have_no_divergence(tmp_path):
    assert first_divergence(*logs(tmp_path, RUN, RUN)) is None


def test_timings_are_not_compared(tmp_path):
    other = changed(5, train={**RUN[5]["train"], "wall_s": 9.5, "data_wait_s": 4.0})
    assert first_divergence(*logs(tmp_path, RUN, other)) is None


def test_loss_in_the_last_bit_with_the_same_data_is_a_compute_divergence(tmp_path):
    other = changed(1, loss=3.0)  # RUN has 3.0000000000000004: one ulp apart
    found = first_divergence(*logs(tmp_path, RUN, other))
    assert (found.line, found.epoch, found.step) == (2, 1, 2)
    assert found.fields == {"loss": (3.0000000000000004, 3.0)}
    assert found.data_differs is False and found.samples_differs is False
    assert "same inputs, different results: the compute differed" in found.cause


def test_other_pixels_for_the_same_samples_are_a_data_divergence(tmp_path):
    other = changed(3, data="ff", loss=2.75)
    found = first_divergence(*logs(tmp_path, RUN, other))
    assert (found.line, found.step) == (4, 3)
    assert found.fields == {"data": ("d3", "ff"), "loss": (2.5, 2.75)}
    assert found.data_differs is True and found.samples_differs is False
    assert found.cause.startswith("the runs were fed different data: the same samples gave")


def test_other_samples_are_a_data_divergence(tmp_path):
    other = changed(0, samples="s9", data="d9")
    found = first_divergence(*logs(tmp_path, RUN, other))
    assert found.samples_differs is True
    assert found.cause.startswith("the runs were fed different data: other samples")


def test_only_the_first_difference_is_reported(tmp_path):
    other = changed(4, loss=2.0)
    other[5]["train"]["loss"] = 2.0
    assert first_divergence(*logs(tmp_path, RUN, other)).line == 5


def test_a_metric_of_an_epoch_record_differs(tmp_path):
    other = changed(5, metrics={**METRICS, "hmean": 0.8470588235294116})
    found = first_divergence(*logs(tmp_path, RUN, other))
    assert (found.line, found.epoch, found.step) == (6, 2, None)
    assert found.fields == {"metrics.hmean": (0.8470588235294118, 0.8470588235294116)}
    assert found.where == "line 6 (end of epoch 2)"


def test_a_metric_only_one_record_has_differs(tmp_path):
    other = changed(5, metrics={**METRICS, "detected": 9})
    assert first_divergence(*logs(tmp_path, RUN, other)).fields == {
        "metrics.detected": ("(absent)", 9)
    }


def test_the_epoch_loss_of_an_epoch_record_differs(tmp_path):
    other = changed(2, train={**RUN[2]["train"], "loss": 3.5})
    assert first_divergence(*logs(tmp_path, RUN, other)).fields == {"train.loss": (3.125, 3.5)}


def test_a_log_that_ends_early_diverges_where_it_ends(tmp_path):
    found = first_divergence(*logs(tmp_path, RUN, RUN[:4]))
    assert (found.line, found.epoch, found.step) == (5, 2, 4)
    assert found.fields == {"end": ("present", "ended")}


def test_step_records_against_epoch_records_diverge_at_the_first_line(tmp_path):
    epochs_only = [r for r in RUN if "step" not in r]
    found = first_divergence(*logs(tmp_path, RUN, epochs_only))
    assert (found.line, found.fields) == (1, {"record": ("step", "epoch")})


def test_logs_without_digests_say_the_cause_is_unknown(tmp_path):
    # ocr-train before step records: epoch records with no samples/data digests.
    old = [{"epoch": 1, "train": {"loss": 3.5, "wall_s": 1.0}, "metrics": METRICS}]
    other = [{"epoch": 1, "train": {"loss": 3.25, "wall_s": 1.0}, "metrics": METRICS}]
    found = first_divergence(*logs(tmp_path, old, other))
    assert found.data_differs is None and "unknown whether the inputs differed" in found.cause


def test_describe_names_the_runs_and_both_values(tmp_path):
    found = first_divergence(*logs(tmp_path, RUN, changed(1, loss=3.0)))
    assert found.describe("disk", "cache") == [
        "first difference at line 2 (epoch 1, step 2) of log.jsonl:",
        "  loss: 3.0000000000000004 (disk) vs 3.0 (cache)",
        "  " + found.cause,
    ]


def test_to_dict_is_json_ready(tmp_path):
    found = first_divergence(*logs(tmp_path, RUN, changed(1, loss=3.0)))
    doc = json.loads(json.dumps(found.to_dict()))
    assert doc["fields"] == {"loss": [3.0000000000000004, 3.0]} and doc["step"] == 2


def test_a_line_that_is_not_json_names_the_file_and_line(tmp_path):
    a = write(tmp_path / "a.jsonl", RUN)
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps(RUN[0]) + "\n{not json\n")
    with pytest.raises(LogError, match=r"b\.jsonl' line 2 is not JSON"):
        first_divergence(a, b)


def test_a_missing_log_is_a_log_error(tmp_path):
    a = write(tmp_path / "a.jsonl", RUN)
    with pytest.raises(LogError, match="cannot read run log"):
        first_divergence(a, tmp_path / "absent.jsonl")


def test_step_log_override_is_given_only_when_the_config_accepts_it(tmp_path):
    from ocr.config import ConfigError, load_config

    try:
        load_config("configs/demo.yaml", [STEP_LOG_OVERRIDE])
        expected = [STEP_LOG_OVERRIDE]
    except ConfigError:
        expected = []
    assert step_log_overrides("configs/demo.yaml") == expected
