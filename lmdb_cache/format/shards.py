"""Shards of a build: which part of a source folder each of N machines builds.

Shard ``I`` of ``N`` (``I`` from 0) holds the sources whose key (their path relative to the
folder, as stored) hashes to ``I``: BLAKE2b-64 of the key's UTF-8 bytes, read big-endian,
modulo ``N``. The partition depends on the key alone, not on the machine, the order of a
folder listing or the launcher that runs the builds, so N builds on N machines (a Slurm
array, a shell loop, torchrun ranks) together hold every source exactly once, and
``lmdb-cache merge`` joins them into the store one build would have written.

A shard's store records ``{"index": I, "count": N}`` in its manifest (:data:`SHARD_FIELD`).
"""

from __future__ import annotations

import hashlib
from typing import Any

SHARD_FIELD = "shard"


def shard_of(key: str, count: int) -> int:
    """The shard (0 .. ``count`` - 1) that holds ``key``."""
    data = key.encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") % count


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)``.

    Raises:
        ValueError: not two integers with 0 <= I < N.
    """
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(
            f"shard {text!r} is not I/N with 0 <= I < N (shard 0/3, 1/3 and 2/3 split a "
            "folder in three)"
        )
    return i, n


def check_shard(value: Any) -> tuple[int, int] | None:
    """A manifest's :data:`SHARD_FIELD` as ``(index, count)``, None when absent.

    Raises:
        ValueError: a malformed value.
    """
    if value is None:
        return None
    if (
        type(value) is not dict
        or set(value) != {"index", "count"}
        or type(value["index"]) is not int
        or type(value["count"]) is not int
        or not 0 <= value["index"] < value["count"]
    ):
        raise ValueError(f"manifest shard={value!r} is not {{index: I, count: N}}, 0 <= I < N")
    return value["index"], value["count"]


def shard_entry(shard: tuple[int, int]) -> dict[str, int]:
    """The manifest's :data:`SHARD_FIELD` for ``(index, count)``."""
    return {"index": shard[0], "count": shard[1]}


def shard_text(shard: tuple[int, int]) -> str:
    return f"{shard[0]}/{shard[1]}"
