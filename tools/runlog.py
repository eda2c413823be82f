"""Where two training runs' ``log.jsonl`` first differ, and whether their data or their compute did.

A run folder's ``log.jsonl`` holds one JSON object per line:

* a step record every ``trainer.log_every_steps`` global steps:
  ``{"epoch": E, "step": S, "loss": ..., "samples": "<hex>", "data": "<hex>"}``, where
  ``samples`` digests the batch's (key, augmentation seed) pairs and ``data`` the pixels and
  targets the loader produced from them;
* an epoch record: ``{"epoch": E, "train": {"loss": ...}, "val": {...}, "metrics": {...},
  "samples": "<hex>", "data": "<hex>"}`` (the digests over the whole epoch).

Two runs of one config and one environment (``ocr.runinfo``) write the same records, timings
aside. ``first_divergence`` finds the first record where they do not and says what differed:
the data (the runs read different inputs: a changed or replaced folder, a stale cache) or only
the compute (the same inputs gave other floats: threads, library versions, CPU).
``tools/demo.py`` and ``tools/repro_check.py`` use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Makes ``ocr-train`` write a step record at every global step (``step_log_overrides``).
STEP_LOG_OVERRIDE = "trainer.log_every_steps=1"

# The fields compared, per kind of record: the ones a repeated run must reproduce to the bit
# (timings are left out). Dotted names reach into a record's sections; ``metrics`` is compared
# key by key.
_STEP_FIELDS = ("epoch", "step", "samples", "data", "loss")
_EPOCH_FIELDS = (
    "epoch",
    "samples",
    "data",
    "train.images",
    "train.loss",
    "val.images",
    "val.loss",
    "metrics",
)
_ABSENT = "(absent)"


class LogError(ValueError):
    """A ``log.jsonl`` that cannot be read or holds a line that is not a JSON object."""


@dataclass(frozen=True)
class Divergence:
    """The first record where two run logs differ.

    Attributes:
        line: 1-based line of the record in both files (the lines before it are equal).
        epoch: The record's epoch (1-based), None when neither record names one.
        step: The global step of a step record; None for an epoch record.
        fields: Each compared field that differs, in order: ``name -> (value in a, value in
            b)``; ``"(absent)"`` for a value one record lacks. ``record`` when one log holds a
            step record and the other an epoch record; ``end`` when one log ended.
        data_differs: Whether the ``data`` digests differ in that record (the model was fed
            other pixels or targets); None when either record has no ``data`` digest.
        samples_differs: The same for the ``samples`` digests (other keys or augmentation
            seeds were drawn).
    """

    line: int
    epoch: int | None
    step: int | None
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    data_differs: bool | None = None
    samples_differs: bool | None = None

    @property
    def where(self) -> str:
        """``line 7 (epoch 1, step 7)`` or ``line 9 (end of epoch 1)``."""
        if self.step is not None:
            return f"line {self.line} (epoch {self.epoch}, step {self.step})"
        if self.epoch is not None:
            return f"line {self.line} (end of epoch {self.epoch})"
        return f"line {self.line}"

    @property
    def cause(self) -> str:
        """What differed, in words: the data, or only the compute."""
        if "end" in self.fields or "record" in self.fields:
            return (
                "the logs do not have the same records (one run stopped early, or only one "
                "logged steps)"
            )
        if self.samples_differs:
            return (
                "the runs were fed different data: other samples (keys or augmentation seeds) "
                "were drawn"
            )
        if self.data_differs:
            return (
                "the runs were fed different data: the same samples gave other pixels or "
                "targets (the images changed under a run, or the cache does not hold what the "
                "disk does)"
            )
        if self.data_differs is False:
            return (
                "same inputs, different results: the compute differed "
                "(threads, library versions, CPU...)"
            )
        return "unknown whether the inputs differed: the records carry no data digests"

    def describe(self, a: str = "a", b: str = "b") -> list[str]:
        """Lines for a person: where, each differing field with both values, the cause.

        Args:
            a: Name of the first run (``disk``).
            b: Name of the second run (``cache``).
        """
        lines = [f"first difference at {self.where} of log.jsonl:"]
        lines += [
            f"  {name}: {_text(va)} ({a}) vs {_text(vb)} ({b})"
            for name, (va, vb) in self.fields.items()
        ]
        lines.append(f"  {self.cause}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, with ``where`` and ``cause`` as text."""
        return {
            "line": self.line,
            "epoch": self.epoch,
            "step": self.step,
            "fields": {name: list(pair) for name, pair in self.fields.items()},
            "data_differs": self.data_differs,
            "samples_differs": self.samples_differs,
            "where": self.where,
            "cause": self.cause,
        }


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``, blank lines skipped.

    Raises:
        LogError: the file cannot be read, or a line is not a JSON object (the error names
            the file and the line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LogError(f"cannot read run log '{path}': {e.strerror}") from e
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise LogError(f"'{path}' line {number} is not JSON: {e.msg}") from e
        if not isinstance(record, dict):
            raise LogError(f"'{path}' line {number} is not a JSON object")
        records.append(record)
    return records


def first_divergence(log_a: Path, log_b: Path) -> Divergence | None:
    """The first record where two run logs differ, or None when they agree.

    Step records are compared on epoch, step, samples, data and loss; epoch records on epoch,
    samples, data, train/val images and loss, and each metric. Timings are not compared.
    Values are compared exactly (as JSON), so a loss that differs in its last bit differs.

    Args:
        log_a: A run's ``log.jsonl``.
        log_b: The other run's.

    Raises:
        LogError: either file cannot be read or holds a line that is not a JSON object.
    """
    return compare_records(read_log(log_a), read_log(log_b))


def compare_records(
    records_a: Sequence[dict[str, Any]], records_b: Sequence[dict[str, Any]]
) -> Divergence | None:
    """``first_divergence`` on records already read (``read_log``)."""
    for line, (a, b) in enumerate(zip(records_a, records_b, strict=False), 1):
        found = _compare(line, a, b)
        if found is not None:
            return found
    if len(records_a) == len(records_b):
        return None
    line = min(len(records_a), len(records_b)) + 1
    longer = records_a if len(records_a) > len(records_b) else records_b
    ended = ("present", "ended") if longer is records_a else ("ended", "present")
    nxt = longer[line - 1]
    return Divergence(line, _int(nxt.get("epoch")), _int(nxt.get("step")), {"end": ended})


def metrics_differ(summary_a: dict[str, Any], summary_b: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics`` of two ``summary.json`` that differ: ``name -> (a, b)``, empty when
    they agree to the bit."""
    ma, mb = summary_a.get("metrics") or {}, summary_b.get("metrics") or {}
    return {k: (ma.get(k), mb.get(k)) for k in _keys(ma, mb) if not _same(ma.get(k), mb.get(k))}


def step_log_overrides(config: str | os.PathLike[str]) -> list[str]:
    """``[STEP_LOG_OVERRIDE]`` when ``ocr-train`` with ``config`` accepts it, else ``[]``.

    Step records come with ``trainer.log_every_steps``; an ``ocr-train`` that does not know the
    key refuses the override, so a run without it still compares its epoch records.

    Args:
        config: The config file the runs are trained with.
    """
    from ocr.config import ConfigError, load_config

    try:
        load_config(config, [STEP_LOG_OVERRIDE])
    except ConfigError:
        return []
    return [STEP_LOG_OVERRIDE]


def _compare(line: int, a: dict[str, Any], b: dict[str, Any]) -> Divergence | None:
    """The difference between the ``line``-th records of two logs, if any."""
    epoch, step = _int(a.get("epoch")), _int(a.get("step"))
    if _kind(a) != _kind(b):
        return Divergence(line, epoch, step, {"record": (_kind(a), _kind(b))})
    names = _STEP_FIELDS if _kind(a) == "step" else _EPOCH_FIELDS
    fields: dict[str, tuple[Any, Any]] = {}
    for name in names:
        va, vb = _get(a, name), _get(b, name)
        if name == "metrics" and isinstance(va, dict) and isinstance(vb, dict):
            for key in _keys(va, vb):
                ma, mb = va.get(key, _ABSENT), vb.get(key, _ABSENT)
                if not _same(ma, mb):
                    fields[f"metrics.{key}"] = (ma, mb)
        elif not _same(va, vb):
            fields[name] = (va, vb)
    if not fields:
        return None
    return Divergence(
        line,
        epoch,
        step,
        fields,
        data_differs=_digest_differs(a, b, "data"),
        samples_differs=_digest_differs(a, b, "samples"),
    )


def _kind(record: dict[str, Any]) -> str:
    return "step" if "step" in record else "epoch"


def _get(record: dict[str, Any], name: str) -> Any:
    """The value at a dotted ``name``, ``"(absent)"`` where a part is missing."""
    node: Any = record
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _digest_differs(a: dict[str, Any], b: dict[str, Any], name: str) -> bool | None:
    if a.get(name) is None or b.get(name) is None:
        return None
    return bool(a[name] != b[name])


def _same(a: Any, b: Any) -> bool:
    # As JSON: exact for floats (json writes the shortest repr that reads back to the same
    # bits), NaN equal to NaN, and 1 unequal to 1.0 or True.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [*a, *(k for k in b if k not in a)]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return value if isinstance(value, str) else json.dumps(value)
